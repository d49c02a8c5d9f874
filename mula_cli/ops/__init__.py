"""Custom operations used by the models. Every model calls the dynamic convolution through here.

May import: utils.
"""

from mula_cli.ops.dynconv import (
    dynamic_depthwise_conv2d,
    dynamic_depthwise_conv2d_grouped,
    dynamic_depthwise_conv2d_per_sample,
)

__all__ = ["dynamic_depthwise_conv2d", "dynamic_depthwise_conv2d_grouped", "dynamic_depthwise_conv2d_per_sample"]
