"""Bilinear resampling with ``align_corners=True``, deterministic on CUDA when it has to be.

MuLA upsamples with ``F.interpolate(..., mode="bilinear", align_corners=True)`` (inside every hourglass
and for the parsing logits before the cross-entropy). Its CUDA backward accumulates with atomics, so
with ``torch.use_deterministic_algorithms(True)`` it raises. Bilinear resampling is separable and
linear: ``out = A_h @ x @ A_w^T`` with constant (out, in) interpolation matrices, whose backward is two
more matrix products (deterministic in cuBLAS once ``CUBLAS_WORKSPACE_CONFIG`` is set, as
``mula train --deterministic`` does). That form runs only when deterministic algorithms are on and a
gradient will flow through the input; everywhere else ``F.interpolate`` runs, exactly as before.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def needs_deterministic_backward(x: Tensor) -> bool:
    """Whether deterministic algorithms are on and autograd will differentiate through ``x``."""
    return torch.are_deterministic_algorithms_enabled() and torch.is_grad_enabled() and x.requires_grad


def interpolation_matrix(size_in: int, size_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(size_out, size_in) weights of 1-D linear interpolation with ``align_corners=True``.

    Row ``o`` samples the input at ``o * (size_in - 1) / (size_out - 1)`` (at 0 when ``size_out`` is 1),
    as PyTorch's kernels do; each row has at most two non-zero weights, summing to 1. Cached per sizes,
    device and dtype (read-only constants, so sharing them is safe); under ``torch.compile`` built in
    the graph instead (Dynamo bypasses a cache, with a warning).
    """
    if torch.compiler.is_compiling():
        return _linear_weights(size_in, size_out).to(device=device, dtype=dtype)
    return _cached_matrix(size_in, size_out, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_matrix(size_in: int, size_out: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Built outside inference mode: an inference tensor could not be saved for a later backward.
    with torch.inference_mode(False), torch.no_grad():
        return _linear_weights(size_in, size_out).to(device=device, dtype=dtype)


def _linear_weights(size_in: int, size_out: int) -> Tensor:
    """The matrix of :func:`interpolation_matrix` in float64 on the CPU."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    source = torch.arange(size_out, dtype=torch.float64) * scale
    low = source.floor().clamp(max=size_in - 1)
    high = (low + 1).clamp(max=size_in - 1)
    frac = (source - low)[:, None]
    columns = torch.arange(size_in, dtype=torch.float64)
    return (1 - frac) * (columns == low[:, None]) + frac * (columns == high[:, None])


def separable_product(x: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """``rows @ x @ columns^T`` over the last two dimensions of (B, C, H, W) ``x``, in ``x``'s layout.

    A channels_last ``x`` is a contiguous (B, H, W, C) array: multiplying it as such needs no copy and
    gives a channels_last result, which the next convolution reads as it is.
    """
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if not channels_last:
        return rows @ x @ columns.transpose(0, 1)
    b, c, h, w = x.shape
    out_h, out_w = rows.shape[0], columns.shape[0]
    y = rows @ x.permute(0, 2, 3, 1).reshape(b, h, w * c)  # (B, out_h, W*C): along H
    y = columns @ y.reshape(b * out_h, w, c)  # (B*out_h, out_w, C): along W
    return y.reshape(b, out_h, out_w, c).permute(0, 3, 1, 2)


def upsample_bilinear_aligned(x: Tensor, size: tuple[int, int] | None = None,
                              scale_factor: int | None = None) -> Tensor:
    """Resample (B, C, H, W) ``x`` bilinearly with ``align_corners=True`` to ``size`` (H', W') or by an
    integer ``scale_factor`` (exactly one of the two).

    ``F.interpolate`` with the same arguments, unless :func:`needs_deterministic_backward`: then the
    same map as two products with constant interpolation matrices in ``x``'s dtype and device (equal
    to float rounding; under autocast the products run in its dtype, as the convolutions do).
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("give either size or scale_factor")
    if not needs_deterministic_backward(x):
        factor = None if scale_factor is None else float(scale_factor)
        return F.interpolate(x, size=size, scale_factor=factor, mode="bilinear", align_corners=True)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    out_h, out_w = size if size is not None else (height * scale_factor, width * scale_factor)
    rows = interpolation_matrix(height, int(out_h), x.device, x.dtype)
    columns = interpolation_matrix(width, int(out_w), x.device, x.dtype)
    return separable_product(x, rows, columns)
