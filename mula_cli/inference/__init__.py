"""Running a model on pictures: batch inference and decoding, the fast path, the Predictor API, video
prediction, smoothing, exported models and the authors' test-time procedure.

- ``batch``: letterboxed batches, flip and multi-scale, mapping back to the original picture;
- ``fastpath``: the same network arranged for inference speed; ``predictor``: the Python API;
- ``runtime``: running a TorchScript or ONNX file from ``mula export`` like a MuLA model;
- ``video_predict`` / ``smoothing``: videos, streams and cameras, and the One Euro filter;
- ``authors_predict``: the authors' prediction steps (``--protocol authors``, steps 2 and 3).

May import: model, ops, codecs, transforms, io, utils.
"""
