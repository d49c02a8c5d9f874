"""Per-sample depthwise convolution: the operation at the heart of MuLA's adaptation.

Every sample ``b`` of the batch is convolved with its own depthwise kernel ``weight[b]``
(one ``h x h`` filter per channel), 'same' padding, no bias.

Which implementation runs is decided at every call of :func:`dynamic_depthwise_conv2d`: TorchScript
scripting takes the grouped convolution, tracing and ONNX export the batch-independent shift-and-add
form; otherwise ``MULA_DYNCONV`` (read at call time) picks: ``auto`` (default) the Triton custom
operator (``mula_cli.ops.dynconv_op``) for CUDA tensors it supports, the per-sample form for
channels_last CPU tensors (the prediction fast path's layout), else the grouped convolution;
``triton`` the operator or a MulaError saying why it cannot run (with ``TRITON_INTERPRET=1`` it runs on
CPU tensors); ``grouped`` the grouped convolution.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from mula_cli.errors import MulaError
from mula_cli.ops.dynconv_export import dynamic_depthwise_conv2d_shifted

try:  # torch.library.custom_op needs torch >= 2.4; older versions always use the grouped convolution
    from mula_cli.ops import dynconv_op
except (ImportError, AttributeError):
    dynconv_op = None

DISPATCH_VARIABLE = "MULA_DYNCONV"
DISPATCH_MODES = ("auto", "triton", "grouped")


def _check(x: Tensor, weight: Tensor) -> None:
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"expected x (B, C, H, W) and weight (B, C, h, h), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.shape[:2] != x.shape[:2] or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"weight must be (B, C, h, h) with odd h matching x {tuple(x.shape)}, got {tuple(weight.shape)}")


def dynamic_depthwise_conv2d_grouped(x: Tensor, weight: Tensor) -> Tensor:
    """Reference implementation: fold the batch into channels and run one grouped convolution.

    This is what the authors' code does. Traced (TorchScript, ONNX) it is tied to the batch size
    it was traced with, because the batch becomes part of the group count; export therefore uses
    :func:`mula_cli.ops.dynconv_export.dynamic_depthwise_conv2d_shifted`.
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    out = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * c, 1, k, k), padding=k // 2, groups=b * c)
    return out.reshape(b, c, h, w)


def dynamic_depthwise_conv2d_per_sample(x: Tensor, weight: Tensor) -> Tensor:
    """One ordinary depthwise convolution per sample, written into one output in ``x``'s layout.

    The fastest CPU form for channels_last features: folding the batch into the channels (the
    grouped form) cannot be a view of a channels_last tensor, so it copies the input and returns a
    contiguous result that the next convolution reorders again; per sample, oneDNN's depthwise
    kernel reads and writes channels_last directly (2.5-3x faster at batch 2 and 16 on one core).
    """
    k = weight.shape[-1]
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        out[b : b + 1] = F.conv2d(x[b : b + 1], weight[b].unsqueeze(1), padding=k // 2, groups=x.shape[1])
    return out


def dynamic_depthwise_conv2d(x: Tensor, weight: Tensor) -> Tensor:
    """Convolve each sample with its own depthwise kernel.

    Args:
        x: input features (B, C, H, W).
        weight: per-sample depthwise kernels (B, C, h, h), h odd; 'same' padding h // 2.

    Returns:
        (B, C, H, W) tensor.
    """
    if torch.jit.is_scripting():  # first: TorchScript then compiles nothing below (not scriptable)
        return dynamic_depthwise_conv2d_grouped(x, weight)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return dynamic_depthwise_conv2d_shifted(x, weight)  # batch-independent graph for export
    _check(x, weight)
    return _dispatch(x, weight)


def _channels_last(x: Tensor) -> bool:
    return x.shape[0] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def dispatch_mode() -> str:
    """``MULA_DYNCONV`` read now: auto (default), triton or grouped."""
    mode = os.environ.get(DISPATCH_VARIABLE, "").strip().lower() or "auto"
    if mode not in DISPATCH_MODES:
        raise MulaError(
            f"{DISPATCH_VARIABLE}={os.environ[DISPATCH_VARIABLE]!r} is not one of "
            f"{', '.join(DISPATCH_MODES)}; set one of those or unset it"
        )
    return mode


def _dispatch(x: Tensor, weight: Tensor) -> Tensor:
    # auto: the Triton operator for CUDA tensors it takes, on the CPU the per-sample form for
    # channels_last and the grouped convolution otherwise (CPU tensors never import triton);
    # triton: the operator or an error saying why it cannot run.
    mode = dispatch_mode()
    if mode == "auto" and not x.is_cuda and _channels_last(x):
        return dynamic_depthwise_conv2d_per_sample(x, weight)
    if mode == "grouped" or (mode == "auto" and not x.is_cuda):
        return dynamic_depthwise_conv2d_grouped(x, weight)
    if dynconv_op is None:
        reason = "torch >= 2.4 is needed for the custom operator"
    else:
        reason = dynconv_op.triton_unsupported_reason(x, weight.shape[-1], weight)
    if reason is None:
        return dynconv_op.dynconv_forward(x, weight)
    if mode == "auto":
        return dynamic_depthwise_conv2d_grouped(x, weight)
    raise MulaError(
        f"{DISPATCH_VARIABLE}=triton but the Triton kernels cannot run: {reason}; "
        f"unset {DISPATCH_VARIABLE} or set it to auto or grouped"
    )
