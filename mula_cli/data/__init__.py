"""Data: dataset layouts, the HDF5 cache, the training dataset and its transforms."""
