"""Size and cost of a model without allocating it: parameter count and FLOPs on the meta device.

FLOPs come from PyTorch's ``FlopCounterMode`` (a multiply-add counts 2). Shape inference on the
meta device runs in Python and costs about a millisecond per operation, so the count runs each
distinct submodule (stem, stage encoder, interaction, head) once per input shape and reuses the
result: a model's FLOPs are the sum of its parts, and all Hourglass presets share their stage
encoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mula_cli.model.config import MulaConfig
from mula_cli.model.mula import MuLA, MulaStage, count_parameters

FlopCache = dict[tuple[str, tuple[tuple[int, ...], ...]], tuple[int, Any]]


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


def _counted(module: nn.Module, inputs: tuple[Tensor, ...], cache: FlopCache) -> tuple[int, Any]:
    """(FLOPs, outputs) of ``module(*inputs)`` on the meta device, memoised by structure and shapes."""
    key = (repr(module), tuple(tuple(x.shape) for x in inputs))
    if key not in cache:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            outputs = module(*inputs)
        cache[key] = (counter.get_total_flops(), outputs)
    return cache[key]


def _stage_flops(
    stage: MulaStage, x_pose: Tensor, x_parsing: Tensor, cache: FlopCache
) -> tuple[int, Tensor, Tensor]:
    """FLOPs of one stage, counted part by part (mirrors MulaStage.forward) so the parts are shared."""
    if stage.shared:
        total, f_pose = _counted(stage.shared_features, (x_pose,), cache)
        f_parsing = f_pose
    else:
        pose_flops, f_pose = _counted(stage.pose_features, (x_pose,), cache)
        parsing_flops, f_parsing = _counted(stage.parsing_features, (x_parsing,), cache)
        total = pose_flops + parsing_flops
    flops, r_pose = _counted(stage.pose_interaction, (f_pose, f_parsing), cache)
    total += flops
    flops, r_parsing = _counted(stage.parsing_interaction, (f_parsing, f_pose), cache)
    total += flops
    flops, pose = _counted(stage.pose_head, (r_pose,), cache)
    total += flops
    flops, parsing = _counted(stage.parsing_head, (r_parsing,), cache)
    total += flops
    offsets: list[Tensor] = []
    if stage.offset_head is not None:
        flops, offset = _counted(stage.offset_head, (r_pose,), cache)
        total += flops
        offsets.append(offset)
    if stage.last:
        return total, x_pose, x_parsing
    # The mappings are a few 1x1 convs: count them directly.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if stage.shared:
            x_pose = x_parsing = stage.mapping(x_pose, f_pose, [pose, parsing, *offsets])
        else:
            x_pose = stage.pose_mapping(x_pose, f_pose, [pose, *offsets])
            x_parsing = stage.parsing_mapping(x_parsing, f_parsing, [parsing])
    return total + counter.get_total_flops(), x_pose, x_parsing


def model_flops(model: MuLA, input_size: int, cache: FlopCache | None = None) -> int:
    """FLOPs of one forward pass of a meta-device ``model`` on a 1 x 3 x size x size image."""
    cache = {} if cache is None else cache
    x = model.normalise(torch.zeros(1, 3, input_size, input_size, device="meta"))
    if model.shared:
        total, x_pose = _counted(model.shared_stem, (x,), cache)
        x_parsing = x_pose
    else:
        pose_flops, x_pose = _counted(model.pose_stem, (x,), cache)
        parsing_flops, x_parsing = _counted(model.parsing_stem, (x,), cache)
        total = pose_flops + parsing_flops
    for stage in model.stages:
        flops, x_pose, x_parsing = _stage_flops(stage, x_pose, x_parsing, cache)
        total += flops
    return total


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
