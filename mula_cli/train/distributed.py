"""Devices and PyTorch's distributed engine, as ``torchrun`` sets it up.

``torchrun --nproc-per-node N -m mula_cli train ...`` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address in their environment; each joins the process group (NCCL for
CUDA tensors with gloo beside it for CPU ones, gloo alone on CPU) and drives one device. Whatever a
collective reduces lives on the run's device all the same (metric sums included). A plain ``mula train`` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from mula_cli.utils.devices import pick_device
from mula_cli.utils.errors import MulaError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def process_group_backend(device: torch.device) -> str:
    """The process group's backends: NCCL reduces only CUDA tensors, so gloo goes beside it for any CPU
    tensor a collective is handed; gloo alone on the CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def setup_world(device_option: str) -> World:
    """Join the process group when started by torchrun; otherwise a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if size > 1 and device_option.strip().lower().startswith("cuda:"):
        raise MulaError(f"--device {device_option} names one GPU, but under torchrun every process drives the GPU "
                        "of its LOCAL_RANK; use --device cuda or auto")
    device = pick_device(device_option, local_rank)
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=process_group_backend(device), rank=rank, world_size=size,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def shutdown_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(flag: bool, sums: torch.Tensor, world: World) -> tuple[bool, list[float]]:
    """Whether ``flag`` is true on any rank, and ``sums`` added over all ranks: one collective.

    Every rank must call it. A non-finite value on any rank makes the added sums non-finite on every
    rank, so a decision taken on them (stop on a diverging loss) is taken by all ranks together.
    """
    if not world.distributed:
        return flag, sums.tolist()
    packed = torch.cat([sums.new_tensor([1.0 if flag else 0.0]), sums])
    dist.all_reduce(packed)
    values = packed.tolist()
    return values[0] > 0, values[1:]


def broadcast_object(value: T, world: World) -> T:
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics).

    DDP broadcasts buffers at the start of each training forward, so after the last step every
    rank holds statistics updated by its own batch; validation must run the model that rank 0 saves.
    """
    if world.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
