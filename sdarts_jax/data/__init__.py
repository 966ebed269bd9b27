"""Images: sources, batches, augmentation, and the CIFAR-10 download."""
