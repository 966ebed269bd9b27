"""The run machinery that the search and evaluation training share: workdir and resume,
checkpoints, metrics, devices, compiled programs, the training loop."""
