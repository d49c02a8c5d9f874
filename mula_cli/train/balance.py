"""Loss balance: how hard each task's loss pulls on the parts of the model that both tasks train.

MuLA's two streams share no weights, yet each stream's features also feed the other task's
parameter adapter, so a stream's stem, stage encoders and next-stage mappings receive gradients
from both losses (the ``mtl`` ablation shares one stream outright). When one task's gradient
dwarfs the other's there, the stream learns for that task alone: weighting parsing 100x the
authors' beta starved the pose branch exactly this way. Once per epoch, on one training batch,
the engine measures for every stage and task the norm of the gradient that the task's weighted
loss term sends into each stream's shared parameters, and logs it next to the losses
(``s1_pose_grad_parsing`` = what stage 1's pose loss sends into the parsing stream).

The measurement leaves training untouched: it runs its own forward pass on the plain module (not
the compiled or DDP-wrapped one), takes gradients with ``torch.autograd.grad`` (``.grad`` stays
as it is) and restores the BatchNorm statistics that forward pass moved. Each rank measures its
own batch (SyncBatchNorm needs every rank in the forward pass); rank 0's values are logged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mula_cli.model.loss import mula_loss
from mula_cli.model.mula import PARSING, POSE, MuLA
from mula_cli.utils.devices import autocast

OFFSETS = "offsets"  # the partition branch's loss term (multi-person)


def shared_parameters(model: MuLA) -> dict[str, list[nn.Parameter]]:
    """Each stream's parameters that both tasks' losses reach: stem, stage encoders, mappings."""
    if model.shared:
        modules = [model.shared_stem] + [m for s in model.stages for m in (s.shared_features, getattr(s, "mapping", None))]
        return {"shared": _parameters(modules)}
    streams = {}
    for task in (POSE, PARSING):
        modules = [getattr(model, f"{task}_stem")]
        for stage in model.stages:
            modules += [getattr(stage, f"{task}_features"), getattr(stage, f"{task}_mapping", None)]
        streams[task] = _parameters(modules)
    return streams


def _parameters(modules: list[nn.Module | None]) -> list[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def balance_columns(model: MuLA) -> list[str]:
    """The metrics.csv columns :func:`measure_balance` fills, in a fixed order."""
    streams = shared_parameters(model)
    return [f"s{t + 1}_{task}_grad_{stream}" for t in range(model.config.stages) for task in tasks_of(model)
            for stream in streams]


def tasks_of(model: MuLA) -> tuple[str, ...]:
    """The loss terms of ``model``'s stages: pose, parsing, and offsets with the partition branch."""
    return (POSE, PARSING, OFFSETS) if model.config.partition else (POSE, PARSING)


def measure_balance(model: MuLA, images: Tensor, heatmaps: Tensor, labels: Tensor, offsets: Tensor | None = None,
                    offset_mask: Tensor | None = None, *, beta: float, ignore_index: int,
                    amp_dtype: torch.dtype | None = None, offset_weight: float = 1.0,
                    lovasz_weight: float = 0.0) -> dict[str, Tensor]:
    """Gradient norm of every stage's weighted pose and parsing (and offset) terms into each stream's
    shared parameters.

    Args:
        model: the plain (unwrapped, uncompiled) model, in training mode.
        images, heatmaps, labels, offsets, offset_mask: one training batch, as the training step receives it.
        beta: the parsing weight of the training loss.
        offset_weight: the offset weight of the training loss (partition branch).
        lovasz_weight: the Lovasz-softmax weight within the parsing term.
        ignore_index: the label of pixels without a class.
        amp_dtype: the training step's autocast dtype (None = full precision).

    Returns:
        Device tensors keyed as :func:`balance_columns` (no host sync; read them when logging).
    """
    streams = shared_parameters(model)
    flat = [p for params in streams.values() for p in params]
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        with autocast(images.device, amp_dtype):
            output = model(images)
        _, parts = mula_loss(output, heatmaps, labels, beta=beta, ignore_index=ignore_index, offsets=offsets,
                             offset_mask=offset_mask, offset_weight=offset_weight, lovasz_weight=lovasz_weight)
        result: dict[str, Tensor] = {}
        weights = {POSE: 1.0, PARSING: beta, OFFSETS: offset_weight}
        for key, value in parts.items():
            stage, task = key.split("/")
            weighted = value * weights[task]
            grads = torch.autograd.grad(weighted, flat, retain_graph=True, allow_unused=True)
            start = 0
            for stream, params in streams.items():
                chunk = [g.float().pow(2).sum() for g in grads[start:start + len(params)] if g is not None]
                result[f"{stage}_{task}_grad_{stream}"] = torch.stack(chunk).sum().sqrt() if chunk \
                    else images.new_zeros((), dtype=torch.float32)
                start += len(params)
        return result
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)
