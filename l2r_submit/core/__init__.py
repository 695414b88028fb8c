"""Layer 1: the tensor contract, file I/O, datasets and path safety, warping, device and threads."""
