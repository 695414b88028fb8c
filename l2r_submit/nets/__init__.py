"""Layer 2: the networks, their blocks, inputs and checkpoints."""
