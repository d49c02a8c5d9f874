"""Training: configuration, run directory, checkpoints and the training loop."""
