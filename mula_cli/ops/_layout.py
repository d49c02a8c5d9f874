"""Memory layouts the dynamic-convolution operators read and write (shared by the operators and kernels)."""

from __future__ import annotations

import torch
from torch import Tensor


def kernel_memory_format(t: Tensor) -> torch.memory_format:
    """The layout the operators read ``t`` in and return their result in.

    channels_last when ``t`` is channels_last (and not also plain contiguous), else contiguous.
    """
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def in_layout(t: Tensor, fmt: torch.memory_format) -> Tensor:
    """``t`` in layout ``fmt`` (copied only when it is not already)."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)
