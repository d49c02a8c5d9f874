"""Deployable models: ``mula export`` writes files that run without mula's training code (TorchScript,
ONNX, OpenVINO IRs, int8 ones quantized with NNCF), verified against the model they came from (they
are run back through :mod:`mula_cli.inference.runtime`).

- ``export``: the formats' common steps and checks; ``openvino``: conversion, int8 calibration.

May import: inference, model, ops, codecs, transforms, io, utils.
"""
