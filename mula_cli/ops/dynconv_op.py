"""The per-sample depthwise convolution as PyTorch operators, with autograd.

``mula::dynamic_depthwise_conv2d(x, weight)`` and its two gradients run the Triton kernels where they
can (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) and the grouped convolution otherwise.
With the compiled kernels they are registered with ``torch.library.triton_op``: ``torch.compile``
traces into them, so a compiled graph (and a CUDA graph of it) launches the kernels itself, with no
Python per call, and the implementations run on fake tensors give output shapes, dtypes and strides.
Without triton, and under the interpreter (whose kernels cannot run on fake tensors), they are opaque
custom operators with fake kernels of their own. The autograd formulas are written with the same
three operators, so they can be differentiated again.

With ``g = dL/dout`` and ``p = h // 2``, the three maps are
    forward       out[y]  = sum_ij w[i, j] * x[y + (i, j) - p]
    input grad    gx[y]   = sum_ij w[i, j] * g[y - (i, j) + p]   (the forward with w rotated)
    weight grad   gw[i,j] = sum_y g[y] * x[y + (i, j) - p]
and each is linear in both arguments, which gives the derivatives of the gradients below.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from mula_cli.ops._layout import kernel_memory_format

try:
    from mula_cli.ops import dynconv_triton as _kernels
except ImportError:  # no triton (macOS, Windows, or not installed): the grouped convolution only
    _kernels = None


def triton_kernels() -> ModuleType | None:
    """The Triton kernel module, or None where triton cannot be imported."""
    return _kernels


def triton_unsupported_reason(x: Tensor, kernel_size: int, *others: Tensor) -> str | None:
    """Why the Triton kernels cannot take these tensors (None when they can)."""
    if _kernels is None:
        return "triton cannot be imported (pip install 'triton>=3.2', Linux only)"
    return _kernels.unsupported_reason(x, kernel_size, *others)


def _check_shapes(x: Tensor, weight_shape: tuple[int, ...], *same_as_x: Tensor) -> None:
    k = weight_shape[-1] if len(weight_shape) else 0
    if x.dim() != 4 or tuple(weight_shape) != (x.shape[0], x.shape[1], k, k) or k % 2 == 0:
        raise ValueError(
            f"expected x (B, C, H, W) and weight (B, C, h, h) with odd h, got {tuple(x.shape)} and "
            f"{tuple(weight_shape)}"
        )
    for t in same_as_x:
        if t.shape != x.shape:
            raise ValueError(f"gradient shape {tuple(t.shape)} does not match {tuple(x.shape)}")


def _grouped_conv(src: Tensor, weight: Tensor) -> Tensor:
    b, c, h, w = src.shape
    k = weight.shape[-1]
    out = F.conv2d(src.reshape(1, b * c, h, w), weight.reshape(b * c, 1, k, k), padding=k // 2, groups=b * c)
    return out.reshape(b, c, h, w).contiguous(memory_format=kernel_memory_format(src))


def _grouped_weight_grad(grad_out: Tensor, x: Tensor, kernel_size: int) -> Tensor:
    b, c, h, w = x.shape
    k = kernel_size
    gw = torch.nn.grad.conv2d_weight(
        x.reshape(1, b * c, h, w),
        (b * c, 1, k, k),
        grad_out.reshape(1, b * c, h, w),
        padding=k // 2,
        groups=b * c,
    )
    return gw.reshape(b, c, k, k)


TRACEABLE = _kernels is not None and not _kernels.INTERPRET


def _operator(name: str, fake: Callable[..., Tensor]) -> Callable[[Callable[..., Tensor]], torch.library.CustomOpDef]:
    """Register an implementation as ``mula::<name>``: a triton_op with the compiled kernels (it is its
    own fake kernel: only shapes, layouts, devices and dtypes may steer it), else a custom_op."""
    def register(fn: Callable[..., Tensor]) -> torch.library.CustomOpDef:
        if TRACEABLE:
            return torch.library.triton_op(f"mula::{name}", fn, mutates_args=())
        op = torch.library.custom_op(f"mula::{name}", fn, mutates_args=())
        op.register_fake(fake)
        return op

    return register


def _fake_like(x: Tensor, weight: Tensor) -> Tensor:
    _check_shapes(x, weight.shape)
    return torch.empty_like(x, memory_format=kernel_memory_format(x))


def _fake_weight_grad(grad_out: Tensor, x: Tensor, kernel_size: int) -> Tensor:
    _check_shapes(x, (*x.shape[:2], kernel_size, kernel_size), grad_out)
    return x.new_empty(x.shape[0], x.shape[1], kernel_size, kernel_size)


@_operator("dynamic_depthwise_conv2d", _fake_like)
def dynconv_forward(x: Tensor, weight: Tensor) -> Tensor:
    """Per-sample depthwise convolution, 'same' padding, no bias (see the module docstring)."""
    _check_shapes(x, weight.shape)
    if triton_unsupported_reason(x, weight.shape[-1], weight) is None:
        return _kernels.forward(x, weight)
    return _grouped_conv(x, weight)


@_operator("dynamic_depthwise_conv2d_input_grad", _fake_like)
def dynconv_input_grad(grad_out: Tensor, weight: Tensor) -> Tensor:
    """Gradient of the forward with respect to x."""
    _check_shapes(grad_out, weight.shape)
    if triton_unsupported_reason(grad_out, weight.shape[-1], weight) is None:
        return _kernels.input_grad(grad_out, weight)
    return _grouped_conv(grad_out, weight.flip(-2, -1))


@_operator("dynamic_depthwise_conv2d_weight_grad", _fake_weight_grad)
def dynconv_weight_grad(grad_out: Tensor, x: Tensor, kernel_size: int) -> Tensor:
    """Gradient of the forward with respect to the per-sample kernels, (B, C, h, h)."""
    _check_shapes(x, (*x.shape[:2], kernel_size, kernel_size), grad_out)
    if triton_unsupported_reason(x, kernel_size, grad_out) is None:
        return _kernels.weight_grad(grad_out, x, kernel_size)
    return _grouped_weight_grad(grad_out, x, kernel_size)


def _save_both(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1])


def _forward_backward(ctx, grad: Tensor):
    x, weight = ctx.saved_tensors
    grad_x = dynconv_input_grad(grad, weight) if ctx.needs_input_grad[0] else None
    grad_w = dynconv_weight_grad(grad, x, weight.shape[-1]) if ctx.needs_input_grad[1] else None
    return grad_x, grad_w


def _input_grad_backward(ctx, grad: Tensor):
    # gx = F(g, rot w): linear in g with adjoint F(., w); in w, sum_y grad[y] * g[y - (i, j) + p].
    grad_out, weight = ctx.saved_tensors
    d_grad_out = dynconv_forward(grad, weight) if ctx.needs_input_grad[0] else None
    d_weight = dynconv_weight_grad(grad_out, grad, weight.shape[-1]) if ctx.needs_input_grad[1] else None
    return d_grad_out, d_weight


def _weight_grad_backward(ctx, grad: Tensor):
    # gw = sum_y g[y] x[y + (i, j) - p]: in g the forward of x with the kernels `grad`; in x the input
    # gradient of g with them.
    grad_out, x = ctx.saved_tensors
    d_grad_out = dynconv_forward(x, grad) if ctx.needs_input_grad[0] else None
    d_x = dynconv_input_grad(grad_out, grad) if ctx.needs_input_grad[1] else None
    return d_grad_out, d_x, None


dynconv_forward.register_autograd(_forward_backward, setup_context=_save_both)
dynconv_input_grad.register_autograd(_input_grad_backward, setup_context=_save_both)
dynconv_weight_grad.register_autograd(_weight_grad_backward, setup_context=_save_both)
