"""Size and cost of a model without allocating it: parameter count and FLOPs on the meta device.

FLOPs come from PyTorch's ``FlopCounterMode`` (a multiply-add counts 2). Shape inference on the
meta device runs in Python and costs about a millisecond per operation, so the count runs the
model's own forward with each distinct part (stem, stage encoder, interaction, head, next-stage
mapping) run once per input shape and its count and outputs reused after that: a model's FLOPs are
the sum of its parts, and all Hourglass presets share their stage encoders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mula_cli.model.config import MulaConfig
from mula_cli.model.mula import MuLA, count_parameters

FlopCache = dict[tuple[str, Any], tuple[int, Any]]  # (module structure, input shapes) -> (FLOPs, outputs)


@dataclass(frozen=True)
class ModelSummary:
    """What ``mula models`` shows for one preset."""

    name: str
    encoder: str
    stages: int
    variant: str
    parameters: int
    gflops: float
    input_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "encoder": self.encoder,
            "stages": self.stages,
            "variant": self.variant,
            "parameters": self.parameters,
            "gflops": round(self.gflops, 3),
            "input_size": self.input_size,
        }


def _shapes(value: Any) -> Any:
    """What a memoised call's result depends on: the shapes of its tensors (nested in lists too)."""
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return tuple(_shapes(v) for v in value)
    return value


def _parts(model: MuLA) -> list[nn.Module]:
    """The submodules whose counts are memoised: the stems and each stage's encoders, interactions,
    heads and next-stage mappings (the model's and the stages' own forwards only route between them)."""
    parts = [module for name, module in model.named_children() if name.endswith("stem")]
    for stage in model.stages:
        parts.extend(stage.children())
    return parts


@contextmanager
def _memoised(parts: list[nn.Module], counter: FlopCounterMode, cache: FlopCache) -> Iterator[list[int]]:
    """Within it, a call of one of ``parts`` seen before (same structure, same input shapes) returns
    the outputs it returned then without running, and its FLOPs are added to the list yielded; a new
    one runs under ``counter`` and its share of the count is remembered."""
    reused: list[int] = []

    def memoised(module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def call(*inputs: Any) -> Any:
            key = (repr(module), _shapes(inputs))
            if key in cache:
                flops, outputs = cache[key]
                reused.append(flops)
                return outputs
            before = counter.get_total_flops()
            outputs = forward(*inputs)
            cache[key] = (counter.get_total_flops() - before, outputs)
            return outputs

        return call

    for part in parts:
        part.forward = memoised(part, part.forward)  # an instance attribute: nn.Module calls it
    try:
        yield reused
    finally:
        for part in parts:
            del part.forward


def model_flops(model: MuLA, input_size: int, cache: FlopCache | None = None) -> int:
    """FLOPs of one forward pass of a meta-device ``model`` on a 1 x 3 x size x size image.

    The model's own forward runs, with each distinct part (see :func:`_parts`) counted once per input
    shape and its count reused from ``cache`` after that (equal to :func:`uncached_model_flops`).
    """
    cache = {} if cache is None else cache
    with torch.no_grad(), FlopCounterMode(display=False) as counter, \
            _memoised(_parts(model), counter, cache) as reused:
        model(torch.zeros(1, 3, input_size, input_size, device="meta"))
    return counter.get_total_flops() + sum(reused)


def uncached_model_flops(model: MuLA, input_size: int) -> int:
    """The same count from one plain forward pass (slow on meta; tests compare it with the above)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size, device="meta"))
    return counter.get_total_flops()


def summarise(cfg: MulaConfig, *, input_size: int = 256, cache: FlopCache | None = None) -> ModelSummary:
    """Parameter count and GFLOPs at ``input_size`` of the model ``cfg`` describes (built on meta)."""
    with torch.device("meta"):
        model = MuLA(cfg).eval()
    return ModelSummary(
        name=cfg.preset,
        encoder=cfg.encoder,
        stages=cfg.stages,
        variant=cfg.variant,
        parameters=count_parameters(model),
        gflops=model_flops(model, input_size, cache) / 1e9,
        input_size=input_size,
    )
