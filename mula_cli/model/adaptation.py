"""How the two tasks interact inside a stage: MuLA's adaptation and the ablations' fusions.

Every interaction module has the same call ``forward(own, other) -> refined`` where ``own`` is this
task's feature F_task and ``other`` the other task's feature, so a stage can plug in any variant.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mula_cli.model.blocks import conv1x1
from mula_cli.ops import dynamic_depthwise_conv2d
from mula_cli.ops.resample import needs_deterministic_backward


class ParameterAdapter(nn.Module):
    """Predicts per-sample depthwise kernels (B, C, h, h) from the other task's feature (Fig. 3b).

    Conv3x3 stride 2 pad 0, MaxPool 2, Conv3x3 pad 1, MaxPool 2, Conv3x3 pad 1 (biases, no BN or
    ReLU), then an adaptive average pool to ``h x h``. At the paper's 256 input the conv stack
    already yields h x h (64 -> 31 -> 15 -> 7 for the Hourglass, 32 -> 15 -> 7 -> 3 for VGG), so the
    pool is an identity there and the result equals the authors'; at other input sizes it makes
    ``h`` explicit instead of letting it drift. Averaging (rather than max) keeps the kernel's
    magnitude comparable across input sizes.

    Export: ONNX has no adaptive pool for sizes it cannot see or that do not divide, so while
    tracing the pool is written as two averaging matrices built from the traced sizes (the same
    regions as ``adaptive_avg_pool2d``), and skipped where it would be an identity. The same form runs
    in training with deterministic algorithms on: CUDA has no deterministic backward of the pool.
    """

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=0, bias=True)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=True)
        self.conv3 = nn.Conv2d(width, width, kernel_size=3, padding=1, bias=True)
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def unpooled(self, feature: Tensor) -> Tensor:
        """The authors' adapter output, before the pool to h x h."""
        x = F.max_pool2d(self.conv1(feature), kernel_size=2, stride=2)
        x = F.max_pool2d(self.conv2(x), kernel_size=2, stride=2)
        return self.conv3(x)

    def forward(self, feature: Tensor) -> Tensor:
        x = self.unpooled(feature)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or needs_deterministic_backward(x):
            return adaptive_average_by_matrices(x, self.kernel_size)
        return F.adaptive_avg_pool2d(x, self.kernel_size)


def _averaging_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_out, size_in) rows averaging the input ranges adaptive_avg_pool2d uses."""
    rows = []
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
        rows.append([1.0 / (end - start) if start <= k < end else 0.0 for k in range(size_in)])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def adaptive_average_by_matrices(x: Tensor, size: int) -> Tensor:
    """``adaptive_avg_pool2d(x, size)`` as ``A_h @ x @ A_w^T`` with constant matrices (exportable, and
    deterministic on CUDA, forward and backward).

    The spatial sizes are read as Python ints, so a trace bakes them in: export at a fixed input size.
    """
    if not torch.jit.is_tracing():  # (torch.compile cannot trace the warning filters: a graph break)
        return _average_by_matrices(x, size)
    with warnings.catch_warnings():
        # A trace treats these sizes and matrices as constants: intended, so no TracerWarning.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return _average_by_matrices(x, size)


def _average_by_matrices(x: Tensor, size: int) -> Tensor:
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if (height, width) == (size, size):
        return x  # the paper's input size: the authors' adapter already ends at h x h
    rows, columns = _averaging_matrix(height, size, x), _averaging_matrix(width, size, x)
    return rows @ x @ columns.transpose(0, 1)


class _FactorisedResidual(nn.Module):
    """``own + ReLU(BN(V(depthwise_h(U(own)))))``, Eq. 5-7; subclasses choose the depthwise kernels."""

    def __init__(self, width: int, *, batch_norm: bool) -> None:
        super().__init__()
        self.u = conv1x1(width, width, bias=True)
        self.v = conv1x1(width, width, bias=True)
        # The VGG variant has no BN here unless its encoder uses BN (the authors skip it).
        self.bn = nn.BatchNorm2d(width) if batch_norm else nn.Identity()

    def refine(self, own: Tensor, filtered: Tensor) -> Tensor:
        """Adds ``ReLU(BN(V(filtered)))`` to the feature, ``filtered`` being depthwise(U(own))."""
        return own + self.bn(self.v(filtered)).relu()


class AdaptiveResidual(_FactorisedResidual):
    """MuLA's adaptive residual: the depthwise kernels are predicted from the other task's feature."""

    def __init__(self, width: int, kernel_size: int, *, batch_norm: bool) -> None:
        super().__init__(width, batch_norm=batch_norm)
        self.adapter = ParameterAdapter(width, kernel_size)

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        return self.refine(own, dynamic_depthwise_conv2d(self.u(own), self.adapter(other)))


class StaticResidual(_FactorisedResidual):
    """The ``self`` ablation: same residual, an ordinary learned h x h depthwise kernel, no interaction."""

    def __init__(self, width: int, kernel_size: int, *, batch_norm: bool) -> None:
        super().__init__(width, batch_norm=batch_norm)
        self.kernel = nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, groups=width, bias=False)

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        return self.refine(own, self.kernel(self.u(own)))


class NoInteraction(nn.Module):
    """A stage (or variant) without interaction: the feature goes to the head unchanged."""

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        return own


class AddFusion(nn.Module):
    """The ``add`` ablation: F_task + F_other."""

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        return own + other


class MultiplyFusion(nn.Module):
    """The ``multi`` ablation: F_task * F_other (element-wise)."""

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        return own * other


class ConcatFusion(nn.Module):
    """The ``concat`` ablation: Conv1x1 (2C -> C, with bias) of [F_task, F_other]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = conv1x1(2 * width, width, bias=True)

    def forward(self, own: Tensor, other: Tensor) -> Tensor:
        return self.conv(torch.cat([own, other], dim=1))
