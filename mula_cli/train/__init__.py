"""Training: configuration, run directory, checkpoints and the training loop.

May import: evaluation, plots, deploy, inference, data, model, ops, codecs, transforms, io, reproduce, utils.
"""
