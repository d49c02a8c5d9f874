"""Residual building blocks of the authors' Hourglass encoder and the MSRA initialisation.

Every block keeps the authors' order of BN, ReLU and convolution exactly (architecture.md,
"Building blocks"); convolutions inside residuals have no bias. Skip projections are built only
where the widths differ: the authors' modules also build them where they never run.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv1x1(cin: int, cout: int, *, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=bias)


def conv3x3(cin: int, cout: int, *, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)


class PreActSkip(nn.Module):
    """Skip projection of a pre-activation residual: BN, ReLU, Conv1x1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = conv1x1(cin, cout, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.bn(x).relu())


class PreRes(nn.Module):
    """Pre-activation bottleneck residual: (BN ReLU Conv1x1, BN ReLU Conv3x3, BN ReLU Conv1x1) + skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv1x1(cin, mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, cout, bias=False)
        self.skip = PreActSkip(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(self.bn1(x).relu())
        y = self.conv2(self.bn2(y).relu())
        y = self.conv3(self.bn3(y).relu())
        return y + self.skip(x)


class PostActSkip(nn.Module):
    """Skip projection of a post-activation residual: Conv1x1, BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv1x1(cin, cout, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class PostRes(nn.Module):
    """Post-activation bottleneck residual: ReLU((Conv1x1 BN ReLU Conv3x3 BN ReLU Conv1x1 BN) + skip)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = conv1x1(cin, mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, cout, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.skip = PostActSkip(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y)).relu()
        y = self.bn3(self.conv3(y))
        return (y + self.skip(x)).relu()


class PlainBottleneck(nn.Module):
    """The stem's bottleneck, added to its input: Conv1x1 BN ReLU Conv3x3 BN ReLU Conv1x1 (no final BN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1 = conv1x1(channels, mid, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y)).relu()
        return self.conv3(y) + x


class ConvBnRelu(nn.Module):
    """Conv (with bias, as the authors' encoders have) followed by an optional BN and a ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, *, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=True)
        self.bn = nn.BatchNorm2d(cout) if batch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)).relu()


def msra_init(module: nn.Module) -> None:
    """The authors' MSRAInit: Kaiming-normal conv weights (fan_in), zero biases, BN gamma 1 beta 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
