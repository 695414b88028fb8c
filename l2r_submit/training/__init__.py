"""Layer 3: the trainer, training data, augmentation, losses and logs."""
