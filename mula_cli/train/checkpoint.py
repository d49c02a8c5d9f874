"""Training checkpoints: a weights file plus everything needed to continue (bit for bit on the CPU).

``last.pt`` and the ``best*.pt`` files are ordinary mula weights files (``mula evaluate``,
``predict`` and ``export`` read them directly) with one more entry, ``training``: optimiser and
grad-scaler state, the position in the run (completed epochs, global step, batches already done
in an interrupted epoch), the best metrics so far and the random-number generator states. Only
plain values and tensors, so ``torch.load(weights_only=True)`` reads them. Writes are atomic.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mula_cli.model.weights import read_weights_file, save_weights
from mula_cli.train.config import TrainConfig, field_names
from mula_cli.utils.errors import MulaError


@dataclass
class TrainState:
    """Where a run is: ``epoch`` epochs are complete; ``epoch_step`` batches of the next one are done."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    best: dict[str, float] = field(default_factory=dict)
    running: list[float] = field(default_factory=list)  # loss sums of the interrupted epoch so far
    epoch_seconds: float = 0.0  # time spent in the interrupted epoch so far
    world_size: int | None = None  # processes of the run (None: a checkpoint from before it was recorded)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _plain(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def set_rng_state(state: dict[str, Any]) -> None:
    def as_tuple(value: Any) -> Any:
        return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

    random.setstate(as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, state: TrainState, extra: dict[str, Any]) -> Path:
    """Write a resumable checkpoint atomically."""
    training = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
        "rng": rng_state(),
    }
    return save_weights(path, model, extra=extra, training=training)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint written by :func:`save_checkpoint` (MulaError if it is not one)."""
    payload = read_weights_file(path)
    training = payload.get("training")
    if not isinstance(training, dict) or not {"optimizer", "scaler", "state", "rng"} <= set(training):
        raise MulaError(f"{path} holds weights but no training state; start a new run with --weights {path}")
    return payload


def restore_training(payload: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler) -> TrainState:
    """Load model, optimiser, scaler and RNG states from a checkpoint payload; return its position."""
    target = getattr(model, "module", model)
    target.load_state_dict(payload["state_dict"])
    training = payload["training"]
    optimizer.load_state_dict(training["optimizer"])
    scaler.load_state_dict(training["scaler"])
    set_rng_state(training["rng"])
    s = training["state"]
    return TrainState(epoch=int(s["epoch"]), step=int(s["step"]), epoch_step=int(s["epoch_step"]),
                      best={k: float(v) for k, v in s["best"].items()},
                      running=[float(v) for v in s.get("running", [])],
                      epoch_seconds=float(s.get("epoch_seconds", 0.0)),
                      world_size=int(s["world_size"]) if s.get("world_size") is not None else None)


def resumed_config(checkpoint: dict[str, Any], path: Path, *, epochs: int | None, workers: int | None,
                   device: str | None) -> TrainConfig:
    """The saved run's configuration; only the number of epochs (larger), workers and device may change."""
    saved_options = checkpoint["extra"].get("train_config")
    if not isinstance(saved_options, dict):
        raise MulaError(f"{path} holds no training configuration; start a new run from it with --weights {path}")
    unknown = sorted(set(saved_options) - set(field_names()))
    if unknown:
        raise MulaError(f"{path} was written by a mula with training options this version does not know "
                        f"({', '.join(unknown)}); resume it with that version, or start a new run from its "
                        f"weights with --weights {path}")
    try:
        saved = TrainConfig(**saved_options)
    except TypeError as exc:
        raise MulaError(f"{path} has a training configuration this mula cannot read ({exc}); start a new run "
                        f"from its weights with --weights {path}") from None
    if epochs is not None and epochs < saved.epochs:
        raise MulaError(f"--epochs {epochs} is fewer than the {saved.epochs} the run in {path} was started with")
    changes = {"epochs": epochs, "workers": workers, "device": device}
    return TrainConfig(**{**saved.to_dict(), **{k: v for k, v in changes.items() if v is not None}})
