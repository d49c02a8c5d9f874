"""The VGG16-FCN encoder of the authors' VGG variant: stride 8, trained from scratch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mula_cli.model.blocks import ConvBnRelu

# VGG16's convolutions in units of width / 8 (64 at the authors' width 512); 0 marks a max-pool.
# Only three pools, so the output stride is 8; the last block keeps six 3x3 convs at full width.
VGG16_LAYOUT = (1, 1, 0, 2, 2, 0, 4, 4, 4, 0, 8, 8, 8, 8, 8, 8)


class Vgg16Encoder(nn.Module):
    """3x3 convs (bias, optional BN, ReLU) with three 2x2 max-pools; width C at the end (512 official)."""

    def __init__(self, width: int, *, batch_norm: bool = False) -> None:
        super().__init__()
        unit = width // 8
        convs: list[nn.Module] = []
        pool_after: list[int] = []
        cin = 3
        for step in VGG16_LAYOUT:
            if step == 0:
                pool_after.append(len(convs) - 1)
                continue
            convs.append(ConvBnRelu(cin, unit * step, 3, batch_norm=batch_norm))
            cin = unit * step
        self.convs = nn.ModuleList(convs)
        self.pool_after = tuple(pool_after)

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.convs):
            x = layer(x)
            if index in self.pool_after:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
        return x
