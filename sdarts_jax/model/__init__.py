"""The model: candidate operations and their CPU kernels, the search spaces as data, the
supernet, the loss."""
