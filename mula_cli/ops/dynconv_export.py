"""A batch-independent formulation of the per-sample depthwise convolution, for export.

The grouped-convolution reference folds the batch into the group count, a constant once traced:
a TorchScript trace or an ONNX graph made that way only runs at the batch size it was made with.
Shift-and-add needs no batch-dependent constant: out = sum over taps (i, j) of
``weight[:, :, i, j] * x_padded[:, :, i:i+H, j:j+W]``. It uses more memory traffic than a
convolution kernel (one pass per tap), which is fine for deployment at batch sizes of a few images.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def dynamic_depthwise_conv2d_shifted(x: Tensor, weight: Tensor) -> Tensor:
    """Per-sample depthwise convolution ('same' padding) as a sum of shifted, weighted copies.

    Args:
        x: (B, C, H, W) features.
        weight: (B, C, h, h) per-sample kernels, h odd.
    """
    k = weight.shape[-1]
    pad = k // 2
    h, w = x.shape[-2], x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad))
    out = x * 0.0
    for i in range(k):
        for j in range(k):
            tap = weight[:, :, i:i + 1, j:j + 1]  # (B, C, 1, 1) broadcasts over the map
            out = out + tap * padded[:, :, i:i + h, j:j + w]
    return out
