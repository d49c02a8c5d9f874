"""Geometry of pictures: the affine warps of training and testing, and the authors' test-time windows.

- ``affine``: training augmentation, letterboxing, test scales, warping pictures and label maps;
- ``authors_views``: the authors' placement of a test picture (``--protocol authors``, step 1) and OpenCV.

Both the data layer (building samples) and inference (placing a user's picture) use these.

May import: utils.
"""
