"""Per-sample depthwise convolution: the operation at the heart of MuLA's adaptation.

Every sample ``b`` of the batch is convolved with its own depthwise kernel ``weight[b]``
(one ``h x h`` filter per channel), 'same' padding, no bias.

Which implementation runs is decided at every call of :func:`dynamic_depthwise_conv2d`: TorchScript
scripting takes the grouped convolution, tracing and ONNX export (and :func:`export_form`, the eager
reference an export is checked against) the batch-independent shift-and-add form; otherwise
``MULA_DYNCONV`` (read once, when first needed; :func:`set_dispatch_mode` changes it) picks:

- ``auto`` (default): the Triton operator (``mula_cli.ops.dynconv_op``) for CUDA tensors it supports;
  on the CPU the per-sample form for channels_last tensors (the prediction fast path's layout), else
  the grouped convolution. The first call for each (kernel size, layout, dtype, device) checks
  the Triton path on that call's inputs (the kernels compile, run, and their forward and both
  gradients agree with the grouped convolution); on any failure that case falls back to the grouped
  convolution, with one warning naming the cause. A working model never becomes a traceback.
- ``triton``: the operator, unchecked, or a MulaError saying why it cannot run (with
  ``TRITON_INTERPRET=1`` it runs on CPU tensors); a kernel failure is raised as it is.
- ``grouped``: the grouped convolution.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mula_cli.ops import dynconv_op
from mula_cli.ops._layout import kernel_memory_format
from mula_cli.ops.dynconv_export import dynamic_depthwise_conv2d_shifted
from mula_cli.utils.errors import MulaError

DISPATCH_VARIABLE = "MULA_DYNCONV"
DISPATCH_MODES = ("auto", "triton", "grouped")
# Relative error (norm) of the Triton path against an fp64 grouped convolution that the check accepts:
# about ten times what the kernels' tests allow (fp32 accumulation), far below what any indexing slip gives.
CHECK_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


class TritonFallbackWarning(RuntimeWarning):
    """``MULA_DYNCONV=auto`` found the Triton path broken for a case and uses the grouped convolution."""


class _Dispatch:
    """The mode, read once, and the verdict of the check for each case (None: the Triton path is good)."""

    def __init__(self) -> None:
        self.mode = os.environ.get(DISPATCH_VARIABLE, "")
        self.verdicts: dict[tuple[int, str, torch.dtype, torch.device], str | None] = {}
        self.export_form = False  # inside export_form(): the exported graph's form, eagerly


_state = _Dispatch()


def set_dispatch_mode(mode: str | None = None) -> None:
    """Use ``mode`` (auto, triton or grouped) from now on, or with None read ``MULA_DYNCONV`` again;
    either way the Triton path is checked afresh."""
    _state.mode = os.environ.get(DISPATCH_VARIABLE, "") if mode is None else mode
    _state.verdicts.clear()


@contextlib.contextmanager
def export_form() -> Iterator[None]:
    """Run the convolution eagerly in the form an export writes (shift-and-add, see dynconv_export): the
    reference an exported file is checked against, the same operations in the same precision."""
    before = _state.export_form
    _state.export_form = True
    try:
        yield
    finally:
        _state.export_form = before


def checked_cases() -> dict[tuple[int, str, torch.dtype, torch.device], str | None]:
    """The verdicts of ``auto``'s Triton check so far: (kernel size, layout, dtype, device) -> None when the
    kernels are used for that case, else why it fell back (what ``mula benchmark`` reports)."""
    return dict(_state.verdicts)


def dispatch_mode() -> str:
    """The dispatch mode: auto (default), triton or grouped."""
    mode = _state.mode.strip().lower() or "auto"
    if mode not in DISPATCH_MODES:
        raise MulaError(
            f"{DISPATCH_VARIABLE}={_state.mode!r} is not one of {', '.join(DISPATCH_MODES)}; "
            "set one of those or unset it"
        )
    return mode


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
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or _state.export_form:
        return dynamic_depthwise_conv2d_shifted(x, weight)  # batch-independent graph for export
    _check(x, weight)
    return _dispatch(x, weight)


def _channels_last(x: Tensor) -> bool:
    return x.shape[0] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def auto_takes(x: Tensor) -> bool:
    """Whether ``auto`` tries the Triton path for ``x`` at all: CUDA tensors (never the interpreter)."""
    return x.is_cuda


def _dispatch(x: Tensor, weight: Tensor) -> Tensor:
    mode = dispatch_mode()
    if mode == "auto" and not x.is_cuda and _channels_last(x):
        return dynamic_depthwise_conv2d_per_sample(x, weight)
    if mode == "grouped" or (mode == "auto" and not auto_takes(x)):
        return dynamic_depthwise_conv2d_grouped(x, weight)
    reason = dynconv_op.triton_unsupported_reason(x, weight.shape[-1], weight)
    if reason is None and mode == "auto":
        key = _case(x, weight)
        if key not in _state.verdicts:  # under torch.compile: a graph break on this first call only
            _state.verdicts[key] = _check_triton(x, weight, key)
        reason = _state.verdicts[key]
    if reason is None:
        return dynconv_op.dynconv_forward(x, weight)
    if mode == "auto":
        return dynamic_depthwise_conv2d_grouped(x, weight)
    raise MulaError(
        f"{DISPATCH_VARIABLE}=triton but the Triton kernels cannot run: {reason}; "
        f"unset {DISPATCH_VARIABLE} or set it to auto or grouped"
    )


def _case(x: Tensor, weight: Tensor) -> tuple[int, str, torch.dtype, torch.device]:
    layout = "channels_last" if kernel_memory_format(x) == torch.channels_last else "contiguous"
    return int(weight.shape[-1]), layout, x.dtype, x.device


def _is_resource_refusal(exc: BaseException) -> bool:
    """Whether a failure in the check says nothing about the kernels: out of memory (the check holds fp64
    copies), or ``torch.use_deterministic_algorithms`` refusing an operation of the reference."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "use_deterministic_algorithms" in str(exc)


@torch.compiler.disable
def _check_triton(x: Tensor, weight: Tensor, key: tuple[int, str, torch.dtype, torch.device]) -> str | None:
    """Run the Triton forward and both gradients on these inputs and compare them with an fp64 grouped
    convolution; None when they agree, else why not (after one warning).

    Only a kernel failure (a compiler, launcher or driver error, or a wrong result) gives a verdict.
    Out of memory and deterministic-mode refusals are raised as they are and decide nothing, so the
    next call checks again rather than pinning the grouped convolution for the whole process. The
    check takes the first two samples: the batch stride is exercised, memory stays bounded.
    """
    try:
        with torch.no_grad():
            x, weight = x.detach()[:2], weight.detach()[:2]
            k = weight.shape[-1]
            gen = torch.Generator(device=x.device).manual_seed(0)
            grad = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            grad = grad.contiguous(memory_format=kernel_memory_format(x))
            got = (dynconv_op.dynconv_forward(x, weight), dynconv_op.dynconv_input_grad(grad, weight),
                   dynconv_op.dynconv_weight_grad(grad, x, k))
            xd, wd, gd = x.double(), weight.double(), grad.double()
            want = (dynamic_depthwise_conv2d_grouped(xd, wd), dynamic_depthwise_conv2d_grouped(gd, wd.flip(-2, -1)),
                    dynconv_op._grouped_weight_grad(gd, xd, k))
            for name, g, w in zip(("forward", "input gradient", "weight gradient"), got, want):
                error = float((g.double() - w).norm() / w.norm().clamp_min(1e-30))
                if not error <= CHECK_TOLERANCE.get(x.dtype, 1e-4):  # NaN fails too
                    raise ValueError(f"its {name} differs from the grouped convolution's (relative error {error:.2e})")
    except Exception as exc:  # compiler, launcher and driver errors mean: do not use it
        if _is_resource_refusal(exc):
            raise
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        k, layout, dtype, device = key
        warnings.warn(
            f"{DISPATCH_VARIABLE}=auto: the Triton kernels failed for {k}x{k} {layout} {dtype} on {device} "
            f"({cause}); using the grouped convolution for it",
            TritonFallbackWarning,
            stacklevel=4,
        )
        return cause
    return None
