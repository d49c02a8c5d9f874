"""The authors' Hourglass encoder: the stride-4 stem, the hourglass module and the stage encoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mula_cli.model.blocks import PlainBottleneck, PostRes, PreRes, conv1x1
from mula_cli.ops.resample import upsample_bilinear_aligned


class HourglassStem(nn.Module):
    """Image to the first stage's input X_1 at stride 4.

    Conv7x7 stride 2 (with bias) BN ReLU, PostRes(C/4 -> C/2), MaxPool 2, a plain bottleneck added
    to its input, PreRes(C/2 -> C). With C = 256 this is the authors' 64/128/256 stem.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        quarter, half = width // 4, width // 2
        self.conv = nn.Conv2d(3, quarter, kernel_size=7, stride=2, padding=3, bias=True)
        self.bn = nn.BatchNorm2d(quarter)
        self.post_res = PostRes(quarter, half)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottleneck = PlainBottleneck(half)
        self.pre_res = PreRes(half, width)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x)).relu()
        x = self.pool(self.post_res(x))
        return self.pre_res(self.bottleneck(x))


class Hourglass(nn.Module):
    """The authors' hourglass: one PreRes per level on the way down, at the bottom and on the way up.

    Unlike Newell et al.'s module the skip path carries no residual of its own: level ``i`` adds
    its down-path output to the upsampled coarser result and refines the sum with one PreRes.
    Output ``ReLU(BN(y))``. Upsampling is bilinear x2 with ``align_corners=True`` (the semantics
    of PyTorch 0.2, which the released weights were trained with); with deterministic algorithms on,
    as matrix products (:func:`mula_cli.ops.resample.upsample_bilinear_aligned`: CUDA has no
    deterministic backward of ``F.interpolate``).
    """

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(PreRes(width, width) for _ in range(depth))
        self.bottom = PreRes(width, width)
        self.up = nn.ModuleList(PreRes(width, width) for _ in range(depth))
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.bottom(x)
        # up[0] works at the coarsest skip level, up[-1] at full resolution.
        for block, skip in zip(self.up, skips[::-1]):
            x = block(skip + upsample_bilinear_aligned(x, scale_factor=2))
        return self.bn(x).relu()


class HourglassStageEncoder(nn.Module):
    """One stage's feature extractor: F_t = ReLU(BN(Conv1x1(Hourglass(X_t)))), the 1x1 conv with bias."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.hourglass = Hourglass(width, depth)
        self.conv = conv1x1(width, width, bias=True)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.hourglass(x))).relu()
