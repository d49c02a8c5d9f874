"""The training loop, top to bottom: set up, then epochs of steps, validation and checkpoints.

A training step makes no host synchronisation: losses accumulate on the device and are read
(``.tolist()``) every ``log_every`` steps, which is also when a non-finite loss is noticed and
when all ranks agree on stopping after Ctrl-C. Shapes are static (full batches only), so the
step can be compiled (``--compile``).
"""

from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from mula_cli.console import err, out
from mula_cli.data.cache import CacheFile, resolve_cache
from mula_cli.data.dataset import MulaDataset, SampleConfig, collate
from mula_cli.data.device_warp import warp_sources
from mula_cli.errors import MulaError
from mula_cli.model.loss import mula_loss
from mula_cli.model.presets import build_model
from mula_cli.model.weights import load_weights, save_weights
from mula_cli.progress import make_progress
from mula_cli.train.checkpoint import TrainState, load_checkpoint, restore_training, save_checkpoint
from mula_cli.train.config import TrainConfig
from mula_cli.train.distributed import World, any_rank, broadcast_object, setup_world, shutdown_world
from mula_cli.train.rundir import MetricsLog, environment, new_run_dir, write_json
from mula_cli.train.validate import Validator


class TrainingStopped(MulaError):
    """The run stopped on purpose (interrupt) or could not go on (non-finite loss)."""

    exit_code = 1


class _StopFlag:
    """First Ctrl-C: finish the current step, save and exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. embedded use): keep the default behaviour
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True
        err.print("\n[yellow]interrupted: finishing this step and saving last.pt (Ctrl-C again to abort)[/]")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resumed_config(checkpoint: dict[str, Any], path: Path, *, epochs: int | None, workers: int | None,
                   device: str | None) -> TrainConfig:
    """The saved run's configuration; only the number of epochs (larger), workers and device may change."""
    saved = TrainConfig(**checkpoint["extra"]["train_config"])
    if epochs is not None and epochs < saved.epochs:
        raise MulaError(f"--epochs {epochs} is fewer than the {saved.epochs} the run in {path} was started with")
    changes = {"epochs": epochs, "workers": workers, "device": device}
    return TrainConfig(**{**saved.to_dict(), **{k: v for k, v in changes.items() if v is not None}})


def train(cfg: TrainConfig, *, resume: Path | None = None, weights: Path | None = None,
          quiet: bool = False) -> Path:
    """Run a training run, or continue the one whose ``last.pt`` is ``resume``; returns its run directory.

    When resuming, ``cfg`` must be :func:`resumed_config` of that checkpoint.
    """
    world = setup_world(cfg.device)
    try:
        return _train(cfg, world, resume=resume, weights=weights, quiet=quiet)
    finally:
        shutdown_world()


def _train(cfg: TrainConfig, world: World, *, resume: Path | None, weights: Path | None, quiet: bool) -> Path:
    device = world.device
    checkpoint = load_checkpoint(resume) if resume is not None else None
    _seed_everything(cfg.seed)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- data -----------------------------------------------------------------------------
    cache_path = resolve_cache(cfg.data)
    with CacheFile(cache_path) as cache:
        manifest = cache.manifest
        has_val = "val" in cache.splits
    if cfg.batch_size % world.size:
        raise MulaError(f"--batch-size {cfg.batch_size} must be a multiple of the {world.size} processes")
    batch = cfg.batch_size // world.size

    # ---- model ----------------------------------------------------------------------------
    model = build_model(cfg.model, num_classes=manifest.num_classes, num_joints=manifest.num_joints,
                        class_names=manifest.classes, joint_names=manifest.joints, stages=cfg.stages,
                        variant=cfg.variant, width=cfg.width, input_size=cfg.input_size,
                        paper_mapping=cfg.paper_mapping or None)
    if weights is not None and checkpoint is None:
        _load_initial_weights(model, weights)
    mcfg = model.config
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.base_lr(mcfg.encoder), alpha=0.99, eps=1e-8)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = restore_training(checkpoint, model, optimizer, scaler) if checkpoint is not None else TrainState()
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world.distributed else model
    step_model = torch.compile(net) if cfg.compile else net

    device_augment = cfg.device_augment if cfg.device_augment is not None else device.type == "cuda"
    train_set = MulaDataset(cache_path, "train", SampleConfig(input_size=mcfg.input_size, stride=mcfg.stride,
                                                              seed=cfg.seed, defer_warp=device_augment))
    inputs = _BatchInputs(device, mcfg.input_size, manifest, train_set.config)
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // batch
    if steps_per_epoch == 0:
        raise MulaError(f"the train split of {cache_path} has {len(train_set)} samples, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size")
    validator = Validator(cache_path, manifest, cfg, world, amp_dtype) if has_val else None

    # ---- run directory (rank 0 writes everything) ------------------------------------------
    run_dir = resume.parent.parent if resume is not None else None
    if world.is_main and run_dir is None:
        run_dir = new_run_dir(Path(cfg.project), cfg.name)
    run_dir = broadcast_object(run_dir, world)
    columns = (["epoch", "lr", "loss", "pose_loss", "parsing_loss"]
               + [f"s{t + 1}_{task}" for t in range(mcfg.stages) for task in ("pose", "parsing")]
               + ["images_per_s", "seconds", "val_pixel_acc", "val_mean_acc", "val_miou", "val_fwiou", "val_pckh",
                  "val_score"])
    log = MetricsLog(run_dir / "metrics.csv", columns)
    extra = {"manifest": manifest.to_json(), "dataset": manifest.name, "train_config": cfg.to_dict(),
             "run_dir": str(run_dir)}
    if world.is_main:
        log.load_until(state.epoch)
        write_json(run_dir / "config.json", {"train": cfg.to_dict(), "model": mcfg.to_dict(), "seed": cfg.seed,
                                             "data": str(cache_path), "world_size": world.size,
                                             "environment": environment()})
        verb = f"resuming at epoch {state.epoch + 1}" + (f", batch {state.epoch_step + 1}" if state.epoch_step else "") \
            if checkpoint is not None else "training"
        out.print(f"{verb} [bold]{mcfg.preset}[/] ({mcfg.variant}, {mcfg.stages} stages) on {manifest.name} "
                  f"({len(train_set):,} train images) for {cfg.epochs} epochs, batch {cfg.batch_size} on "
                  f"{world.size} x {device.type}{' ' + str(amp_dtype).replace('torch.', '') if amp_dtype else ''}")
        out.print(f"run directory: [bold]{run_dir}[/]")
    writer = _tensorboard(run_dir) if world.is_main else None

    # ---- epochs ---------------------------------------------------------------------------
    parts_order = [f"s{t + 1}/{task}" for t in range(mcfg.stages) for task in ("pose", "parsing")]
    with _StopFlag() as stop:
        while state.epoch < cfg.epochs:
            epoch = state.epoch
            lr = cfg.lr_at(epoch, mcfg.encoder)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=batch, sampler=_Skip(sampler, state.epoch_step * batch),
                                num_workers=cfg.workers, collate_fn=collate, drop_last=True,
                                pin_memory=device.type == "cuda", persistent_workers=False)
            net.train()
            running = torch.tensor(state.running if state.running else [0.0] * (1 + len(parts_order)),
                                   dtype=torch.float64, device=device)
            t0 = time.perf_counter() - state.epoch_seconds
            done_before = state.epoch_step
            with make_progress(quiet or not world.is_main) as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                                    completed=state.epoch_step, unit="batches")
                for batch_data in loader:
                    loss, parts = _step(step_model, optimizer, scaler, inputs(batch_data), amp_dtype, cfg.beta)
                    running += torch.stack([loss.detach().double()] + [parts[k].detach().double() for k in parts_order])
                    state.step += 1
                    state.epoch_step += 1
                    bar.advance(task)
                    at_log = state.epoch_step % cfg.log_every == 0 or state.epoch_step == steps_per_epoch
                    # Ranks agree on stopping at logging steps (a collective); alone, check every step.
                    stopping = any_rank(stop.raised, world) if (at_log or not world.distributed) else False
                    if at_log:
                        values = (running / state.epoch_step).tolist()  # the loop's only host sync
                        if not math.isfinite(values[0]):
                            raise TrainingStopped(_diverged_message(run_dir, epoch, state, values[0]))
                        rate = (state.epoch_step - done_before) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                        bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs} loss {values[0]:.4g} "
                                                     f"{rate:,.0f} img/s")
                    if stopping:
                        state.running, state.epoch_seconds = running.tolist(), time.perf_counter() - t0
                        if world.is_main:
                            path = save_checkpoint(run_dir / "weights" / "last.pt", model, optimizer, scaler,
                                                   state, extra)
                            out.print(f"saved {path} (epoch {epoch + 1}, batch {state.epoch_step}); continue "
                                      f"with: mula train --resume {path}")
                        raise TrainingStopped("training interrupted; the run can be resumed")
            seconds = time.perf_counter() - t0
            sums = running.tolist()
            steps = max(state.epoch_step, 1)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": sums[0] / steps,
                                   "images_per_s": (state.epoch_step - done_before) * cfg.batch_size / max(seconds, 1e-9),
                                   "seconds": seconds}
            for k, v in zip(parts_order, sums[1:]):
                row[k.replace("/", "_")] = v / steps
            row["pose_loss"] = sum(row[f"s{t + 1}_pose"] for t in range(mcfg.stages))
            row["parsing_loss"] = sum(row[f"s{t + 1}_parsing"] for t in range(mcfg.stages))
            state.epoch, state.epoch_step, state.running, state.epoch_seconds = epoch + 1, 0, [], 0.0

            is_last = state.epoch == cfg.epochs
            if validator is not None and (state.epoch % cfg.val_every == 0 or is_last):
                result = validator.run(model, epoch + 1, run_dir if world.is_main else None, quiet)
                row.update({f"val_{k}": v for k, v in result.items()})
                _update_best(state, result, model, run_dir, extra, world)
            if world.is_main:
                log.append(row)
                save_checkpoint(run_dir / "weights" / "last.pt", model, optimizer, scaler, state, extra)
                _log_epoch(row, quiet, writer)
    if world.is_main:
        out.print(f"finished {cfg.epochs} epochs; results in [bold]{run_dir}[/] "
                  f"(best.pt: {_best_text(state)})")
        if writer is not None:
            writer.close()
    return run_dir


class _BatchInputs:
    """A loader batch as device tensors (images, heatmaps, labels), resampling on the device when the
    dataset deferred it (see mula_cli.data.device_warp)."""

    def __init__(self, device: torch.device, size: int, manifest, config: SampleConfig) -> None:
        self.device, self.size, self.augment = device, size, config.augment
        self.lut = torch.from_numpy(manifest.class_flip_lut().astype(np.int64)).to(device)
        self.ignore = manifest.ignore_label
        self.memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def put(name: str) -> torch.Tensor:
            return batch[name].to(self.device, non_blocking=True)

        if "source" in batch:
            images, labels = warp_sources(put("source"), put("source_parsing"), put("theta"), put("flipped"),
                                          put("has_parsing"), self.lut, self.size, self.augment.image_pad,
                                          self.augment.label_pad, self.ignore)
        else:
            images, labels = put("image"), put("parsing")
        return images.contiguous(memory_format=self.memory), put("heatmaps"), labels


def _step(net, optimizer, scaler, inputs, amp_dtype, beta) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step; returns the loss tensors without reading them."""
    images, heatmaps, labels = inputs
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        output = net(images)
    loss, parts = mula_loss(output, heatmaps, labels, beta=beta)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


class _Skip(torch.utils.data.Sampler):
    """The wrapped sampler's indices after the first ``skip`` (resuming in the middle of an epoch)."""

    def __init__(self, sampler: DistributedSampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    source, _, _ = load_weights(path)
    mine, theirs = model.state_dict(), source.state_dict()
    mismatched = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if mismatched:
        raise MulaError(f"weights {path} do not fit the chosen model ({len(mismatched)} tensors differ, e.g. "
                        f"{mismatched[0]}); pick the same --model, --stages and --width")
    model.load_state_dict(theirs)


def _update_best(state: TrainState, result: dict[str, float], model, run_dir: Path, extra: dict, world: World) -> None:
    """best.pt by the mean of normalised mIoU and PCKh; best_parsing.pt by mIoU; best_pose.pt by PCKh."""
    for key, file in (("score", "best.pt"), ("miou", "best_parsing.pt"), ("pckh", "best_pose.pt")):
        value = result.get(key)
        if value is None or not math.isfinite(value) or value <= state.best.get(key, -math.inf):
            continue
        state.best[key] = value
        if world.is_main:
            save_weights(run_dir / "weights" / file, model, extra={**extra, "metrics": result, "epoch": state.epoch})


def _best_text(state: TrainState) -> str:
    if not state.best:
        return "no validation run"
    return ", ".join(f"{k} {v:.4g}" for k, v in state.best.items())


def _diverged_message(run_dir: Path, epoch: int, state: TrainState, value: float) -> str:
    last = run_dir / "weights" / "last.pt"
    keep = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
    return (f"the loss became {value} at epoch {epoch + 1}, step {state.step}; stopping. {keep} "
            f"(resume with a lower --lr, or try --amp off)")


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(run_dir))


def _log_epoch(row: dict[str, Any], quiet: bool, writer) -> None:
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key.replace("val_", "val/").replace("s1_", "stage1/"), value, row["epoch"])
    if quiet:
        return
    text = f"epoch {row['epoch']}: loss {row['loss']:.4g} (pose {row['pose_loss']:.4g}, parsing " \
           f"{row['parsing_loss']:.4g}), lr {row['lr']:.3g}, {row['images_per_s']:,.1f} img/s"
    if "val_miou" in row:
        text += f"; val mIoU {row['val_miou']:.2f}" + (f", PCKh {row['val_pckh']:.2f}" if "val_pckh" in row else "")
    out.print(text)
