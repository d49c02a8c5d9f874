"""One training step, and the batches it takes: what ``mula train`` does between loading a batch and
reading the loss (the engine's loop around it is in mula_cli.train.engine)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from mula_cli.data.dataset import SampleConfig
from mula_cli.data.device_warp import warp_images
from mula_cli.model.loss import mula_loss
from mula_cli.train.config import TrainConfig
from mula_cli.utils.devices import autocast

TrainInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


class BatchInputs:
    """A loader batch as device tensors (images, heatmaps, labels, offsets, offset mask; the last two None
    without the partition branch), resampling on the device when the dataset deferred it (see
    mula_cli.data.device_warp)."""

    def __init__(self, device: torch.device, size: int, config: SampleConfig) -> None:
        self.device, self.size, self.augment = device, size, config.augment
        self.memory = torch.channels_last  # as the model (mula_cli.train.engine)

    def __call__(self, batch: dict[str, Any]) -> TrainInputs:
        def put(name: str) -> torch.Tensor:
            return batch[name].to(self.device, non_blocking=True)

        if "crop" in batch:  # crops of several sizes come as a list
            images = warp_images([t.to(self.device, non_blocking=True) for t in batch["crop"]], put("input_to_crop"),
                                 self.size, self.augment.image_pad)
        else:
            images = put("image")
        offsets = (put("offsets"), put("offset_mask")) if "offsets" in batch else (None, None)
        return images.contiguous(memory_format=self.memory), put("heatmaps"), put("parsing"), *offsets


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               inputs: TrainInputs, amp_dtype: torch.dtype | None, cfg: TrainConfig,
               ignore_index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step; returns the loss tensors without reading them."""
    images, heatmaps, labels, offsets, offset_mask = inputs
    with autocast(images.device, amp_dtype):
        output = net(images)
    loss, parts = mula_loss(output, heatmaps, labels, beta=cfg.beta, ignore_index=ignore_index, offsets=offsets,
                            offset_mask=offset_mask, offset_weight=cfg.offset_weight, lovasz_weight=cfg.lovasz)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


class SkipSampler(torch.utils.data.Sampler):
    """The wrapped sampler's indices after the first ``skip`` (resuming in the middle of an epoch)."""

    def __init__(self, sampler: DistributedSampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)
