"""Data: dataset layouts, preparing the HDF5 cache, the training dataset, the worker loader, GPU augmentation
and the synthetic generator (the geometry itself is :mod:`mula_cli.transforms`).

May import: codecs, transforms, utils.
"""
