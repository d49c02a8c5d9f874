"""The training loop, top to bottom: set up, then epochs of steps, validation and checkpoints.

A training step makes no host synchronisation (except with ``--amp fp16``, whose grad scaler reads
its overflow flag on the host every step): losses accumulate on the device and are read every
``log_every`` steps in one collective that also tells every rank whether any rank was interrupted
(Ctrl-C, SIGTERM) and adds the losses over ranks, so a non-finite loss on any rank stops all of them.
Shapes are static (full batches only), so the step can be compiled (``--compile``).
"""

from __future__ import annotations

import math
import os
import random
import re
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from mula_cli.data.cache import CacheFile, resolve_cache
from mula_cli.data.dataset import MulaDataset, SampleConfig, collate
from mula_cli.data.loader import WorkerLoader
from mula_cli.model.mula import MuLA
from mula_cli.model.presets import build_model, dataset_overrides
from mula_cli.model.weights import load_weights, save_weights
from mula_cli.plots.figures import Plotter, plots_wanted
from mula_cli.plots.training import ResultsPlot
from mula_cli.train.balance import balance_columns, measure_balance, tasks_of
from mula_cli.train.checkpoint import TrainState, load_checkpoint, restore_training, save_checkpoint
from mula_cli.train.config import TrainConfig
from mula_cli.train.distributed import World, agree, broadcast_object, setup_world, shutdown_world
from mula_cli.train.rundir import MetricsLog, environment, new_run_dir, resumed_run_dir
from mula_cli.train.step import BatchInputs, SkipSampler
from mula_cli.train.step import train_step as _step  # a module-level name, so tests can wrap the step
from mula_cli.train.validate import Validator
from mula_cli.transforms.affine import AUGMENTATIONS
from mula_cli.utils.console import err, out
from mula_cli.utils.devices import amp_dtype as resolve_amp
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import remove_stale_partials, write_json
from mula_cli.utils.interrupts import STOP_SIGNALS, Interrupted, this_process_only
from mula_cli.utils.manifests import DatasetManifest
from mula_cli.utils.progress import make_progress

if TYPE_CHECKING:  # tensorboard is an optional extra
    from torch.utils.tensorboard import SummaryWriter


BALANCE_EVERY = 50  # steps between loss-balance measurements (at least; once per epoch on real datasets)


class TrainingStopped(MulaError):
    """The run stopped on purpose (interrupt: exit 128 + the signal, as a shell reports it, so scripts can
    tell an interruption from a crash) or could not go on (non-finite loss: exit 1)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _StopFlag:
    """First Ctrl-C or SIGTERM (how SLURM and Kubernetes pre-empt a job): finish the current step, save
    and exit. A second one: stop at once, unless it is an echo of the first: a scheduler signals every
    process of the job, and torchrun's agent, being one of them, then forwards the signal to each rank."""

    SIGNALS = STOP_SIGNALS
    ECHO_S = 2.0  # a repeat this soon after the first signal is the same stop

    def __init__(self) -> None:
        self.raised = False
        self.first_at = 0.0
        self.signal = signal.SIGINT  # the first one received (an interrupt agreed from another rank: SIGINT)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        try:
            handle = this_process_only(self._handle)  # a forked DataLoader worker inherits it
            self._previous = {sig: signal.signal(sig, handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread (e.g. embedded use): keep the default behaviour
            self._previous = {}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.raised:
            if time.monotonic() - self.first_at < self.ECHO_S:
                return
            raise Interrupted(signum)
        self.raised, self.first_at = True, time.monotonic()
        self.signal = signal.Signals(signum)
        name = self.signal.name
        err.print(f"\n[yellow]interrupted ({name}): finishing this step and saving last.pt (a second {name} "
                  "stops at once)[/]")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_training_model(cfg: TrainConfig, manifest: DatasetManifest, partition: bool | None = None) -> MuLA:
    """The model ``cfg`` trains, sized for ``manifest`` and initialised (on the current default device).

    ``partition`` overrides the dataset's choice of the multi-person branch (a resumed run keeps the
    layout its checkpoint was written with).
    """
    overrides = dataset_overrides(manifest)
    if partition is not None:
        overrides["partition"] = partition
    return build_model(cfg.model, **overrides, stages=cfg.stages, variant=cfg.variant,
                       width=cfg.width, input_size=cfg.input_size, paper_mapping=cfg.paper_mapping or None,
                       authors_init=cfg.authors_init)


def train(cfg: TrainConfig, *, resume: Path | None = None, weights: Path | None = None,
          quiet: bool = False, checkpoint: dict[str, Any] | None = None, plots: bool | None = None) -> Path:
    """Run a training run, or continue the one whose ``last.pt`` is ``resume``; returns its run directory.

    When resuming, ``cfg`` must be :func:`mula_cli.train.checkpoint.resumed_config` of that checkpoint,
    and ``checkpoint`` may be its payload as the caller loaded it (:func:`load_checkpoint` of
    ``resume``), so that a large checkpoint is not read twice. ``plots`` redraws ``results.png`` after
    the epochs (a plotting error is a warning, never the run's end; None: unless ``MULA_PLOTS=0``).
    """
    world = setup_world(cfg.device)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        return _train(cfg, world, resume=resume, weights=weights, quiet=quiet, checkpoint=checkpoint, plots=plots)
    except RuntimeError as exc:
        if cfg.deterministic and "deterministic" in str(exc):  # an operation without a deterministic kernel
            what = re.split(r",? but you set", " ".join(str(exc).split()), maxsplit=1)[0]
            raise MulaError(f"--deterministic: {what[:200]} in this PyTorch; train without --deterministic") from None
        raise
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])  # as it was, for library callers
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        shutdown_world()


def _train(cfg: TrainConfig, world: World, *, resume: Path | None, weights: Path | None, quiet: bool,
           checkpoint: dict[str, Any] | None, plots: bool | None) -> Path:
    device = world.device
    if resume is None:
        checkpoint = None
    elif checkpoint is None:
        checkpoint = load_checkpoint(resume)
    _seed_everything(cfg.seed)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:  # strict: an operation without a deterministic kernel is an error, not a warning
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)

    # ---- data -----------------------------------------------------------------------------
    cache_path = resolve_cache(cfg.data)
    with CacheFile(cache_path) as cache:
        manifest = cache.manifest
        has_val = "val" in cache.splits
    if cfg.batch_size % world.size:
        raise MulaError(f"--batch-size {cfg.batch_size} must be a multiple of the {world.size} processes")
    batch = cfg.batch_size // world.size

    # ---- model ----------------------------------------------------------------------------
    # a run resumes with the layout it was saved with (runs saved before the partition branch have none)
    saved = checkpoint["config"].get("partition", False) if checkpoint is not None else None
    model = build_training_model(cfg, manifest, partition=saved)
    if weights is not None and checkpoint is None:
        _load_initial_weights(model, weights)
    mcfg = model.config
    model.to(device)
    model.to(memory_format=torch.channels_last)  # oneDNN and cuDNN both run NHWC natively (x1.1 on a 2-core CPU step)
    if cfg.sync_bn and world.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif world.distributed and batch < 8 and world.is_main:  # BatchNorm statistics of a handful of images
        err.print(f"[yellow]each of the {world.size} processes normalises over {batch} images; consider "
                  "--sync-bn[/]")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.base_lr(mcfg.encoder), alpha=0.99, eps=1e-8)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = restore_training(checkpoint, model, optimizer, scaler) if checkpoint is not None else TrainState()
    if state.epoch_step and state.world_size not in (None, world.size):
        raise MulaError(f"{resume} stopped in the middle of epoch {state.epoch + 1} with {state.world_size} "
                        f"process(es); resume it with {state.world_size} (this run has {world.size}), or a "
                        "different sharding would repeat or skip samples of that epoch")
    state.world_size = world.size
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world.distributed else model
    step_model = torch.compile(net) if cfg.compile else net

    device_augment = cfg.device_augment if cfg.device_augment is not None else device.type == "cuda"
    train_set = MulaDataset(cache_path, "train", SampleConfig(input_size=mcfg.input_size, stride=mcfg.stride,
                                                              augment=AUGMENTATIONS[cfg.augment], seed=cfg.seed,
                                                              defer_warp=device_augment))
    inputs = BatchInputs(device, mcfg.input_size, train_set.config)
    sampler = DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // batch
    if steps_per_epoch == 0:
        raise MulaError(f"the train split of {cache_path} has {len(train_set)} samples, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size")
    validator = Validator(cache_path, manifest, cfg, world, amp_dtype) if has_val else None

    # ---- run directory (rank 0 writes everything) ------------------------------------------
    run_dir = None
    if world.is_main:  # a resumed run continues in the folder its checkpoint names, wherever the file is now
        run_dir = resumed_run_dir(checkpoint["extra"], resume) if checkpoint is not None else None
        if run_dir is None:
            run_dir = new_run_dir(Path(cfg.project), cfg.name)
            if checkpoint is not None:
                err.print(f"[yellow]the run directory {checkpoint['extra'].get('run_dir')} of {resume} is gone; "
                          f"continuing in a new one, {run_dir}[/]")
        remove_stale_partials(run_dir, recursive=True)  # left by a run killed while it saved
    run_dir = broadcast_object(run_dir, world)
    tasks = tasks_of(model)
    pose_metric = "val_map" if manifest.multi_person else "val_pckh"
    columns = (["epoch", "lr", "loss", "pose_loss", "parsing_loss"] + (["offset_loss"] if mcfg.partition else [])
               + [f"s{t + 1}_{task}" for t in range(mcfg.stages) for task in tasks]
               + ["images_per_s", "seconds", "val_pixel_acc", "val_mean_acc", "val_miou", "val_fwiou", pose_metric,
                  "val_score"] + balance_columns(model))
    log = MetricsLog(run_dir / "metrics.csv", columns)
    extra = {"manifest": manifest.to_json(), "dataset": manifest.name, "train_config": cfg.to_dict(),
             "run_dir": str(run_dir.resolve())}
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
    results = ResultsPlot(run_dir, Plotter(plots_wanted() if plots is None else plots)) if world.is_main else None

    # ---- epochs ---------------------------------------------------------------------------
    parts_order = [f"s{t + 1}/{task}" for t in range(mcfg.stages) for task in tasks]
    compiled_ran = False  # --compile: once a compiled step has run, a failure is the run's own
    with _StopFlag() as stop:
        while state.epoch < cfg.epochs:
            epoch = state.epoch
            lr = cfg.lr_at(epoch, mcfg.encoder)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            loader = WorkerLoader(train_set, batch_size=batch, sampler=SkipSampler(sampler, state.epoch_step * batch),
                                num_workers=cfg.workers, collate_fn=collate, drop_last=True,
                                pin_memory=device.type == "cuda", persistent_workers=False)
            net.train()
            running = torch.tensor(state.running if state.running else [0.0] * (1 + len(parts_order)),
                                   dtype=torch.float64, device=device)
            t0 = time.perf_counter() - state.epoch_seconds
            done_before = state.epoch_step
            # the loss balance costs a forward and 2T backward passes: once per epoch, at most every 50 steps
            balance: dict[str, torch.Tensor] = {}
            measure = epoch % max(1, math.ceil(BALANCE_EVERY / steps_per_epoch)) == 0
            with make_progress(quiet or not world.is_main) as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                                    completed=state.epoch_step, unit="batches")
                for batch_data in loader:
                    batch_inputs = inputs(batch_data)
                    if measure and not balance:  # what each task's loss sends into the shared parts
                        balance = measure_balance(model, *batch_inputs, beta=cfg.beta, offset_weight=cfg.offset_weight,
                                                  lovasz_weight=cfg.lovasz, ignore_index=manifest.ignore_label,
                                                  amp_dtype=amp_dtype)
                    try:
                        loss, parts = _step(step_model, optimizer, scaler, batch_inputs, amp_dtype, cfg,
                                            manifest.ignore_label)
                    except Exception as exc:
                        if step_model is net or compiled_ran:  # only the compiler's first run has a way out
                            raise
                        _compile_failed(exc, world)
                        step_model = net
                        loss, parts = _step(step_model, optimizer, scaler, batch_inputs, amp_dtype, cfg,
                                            manifest.ignore_label)
                    compiled_ran = True
                    running += torch.stack([loss.detach().double()] + [parts[k].detach().double() for k in parts_order])
                    state.step += 1
                    state.epoch_step += 1
                    bar.advance(task)
                    at_log = state.epoch_step % cfg.log_every == 0 or state.epoch_step == steps_per_epoch
                    stopping = stop.raised and not world.distributed  # alone, a stop is seen at every step
                    if at_log:  # the loop's only host sync, and a collective: every rank decides alike
                        stopping, sums = agree(stop.raised, running, world)
                        loss_now = sums[0] / (state.epoch_step * world.size)  # the mean over all ranks
                        if not math.isfinite(loss_now):
                            raise TrainingStopped(_diverged_message(run_dir, epoch, state, loss_now))
                        rate = (state.epoch_step - done_before) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                        bar.update(task, description=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_now:.4g} "
                                                     f"{rate:,.0f} img/s")
                    if stopping:  # every rank restores these sums: keep their mean over ranks
                        state.running = [v / world.size for v in (sums if at_log else running.tolist())]
                        state.epoch_seconds = time.perf_counter() - t0
                        if world.is_main:
                            path = save_checkpoint(run_dir / "weights" / "last.pt", model, optimizer, scaler,
                                                   state, extra)
                            out.print(f"saved {path} (epoch {epoch + 1}, batch {state.epoch_step}); continue "
                                      f"with: mula train --resume {path}")
                        raise TrainingStopped("training interrupted; the run can be resumed",
                                              exit_code=128 + int(stop.signal))
            seconds = time.perf_counter() - t0
            _, sums = agree(False, running, world)  # metrics.csv shows the mean over all ranks
            steps = max(state.epoch_step, 1) * world.size
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": sums[0] / steps,
                                   "images_per_s": (state.epoch_step - done_before) * cfg.batch_size / max(seconds, 1e-9),
                                   "seconds": seconds}
            for k, v in zip(parts_order, sums[1:]):
                row[k.replace("/", "_")] = v / steps
            row.update(zip(balance, torch.stack(list(balance.values())).tolist()) if balance else ())
            row["pose_loss"] = sum(row[f"s{t + 1}_pose"] for t in range(mcfg.stages))
            row["parsing_loss"] = sum(row[f"s{t + 1}_parsing"] for t in range(mcfg.stages))
            if mcfg.partition:
                row["offset_loss"] = sum(row[f"s{t + 1}_offsets"] for t in range(mcfg.stages))
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
                results.update(log.rows, force=is_last or "val_miou" in row)  # results.png
    if world.is_main:
        out.print(f"finished {cfg.epochs} epochs; results in [bold]{run_dir}[/] "
                  f"(best.pt: {_best_text(state)})")
        if writer is not None:
            writer.close()
    return run_dir


def _compile_failed(exc: Exception, world: World) -> None:
    """Say in one line that the compiled step failed on its first run and training goes on without it.

    The compiler's generated code can fail where the model runs fine (seen: PyTorch 2.13's Inductor C++
    backend on this model's bf16 backward, an unbound buffer in the generated code), after minutes of
    compiling; a run that was asked to go faster should not end in a traceback for it. The failed step
    changed no weights (the optimizer runs after the compiled forward and backward; BatchNorm's running
    statistics alone saw the batch once more) and is taken again eagerly.
    """
    if world.is_main:
        first = " ".join(str(exc).split())[:160]
        err.print(f"[yellow]--compile: the compiled training step failed on its first run ({type(exc).__name__}: "
                  f"{first}); training on without compiling (a compiler problem: please report it with "
                  "`mula info`)[/]", highlight=False)


def _load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    source, _, _ = load_weights(path)
    mine, theirs = model.state_dict(), source.state_dict()
    mismatched = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
    if mismatched:
        # only the partition branch's layers differ: the offset heads and the convs that feed offsets forward
        branch = any("offset_head" in k for k in mismatched) and \
            all("offset_head" in k or ".predictions." in k for k in mismatched)
        hint = ("they have no multi-person partition branch, which this dataset trains; start from weights of a "
                "multi-person run or without --weights") if branch else "pick the same --model, --stages and --width"
        raise MulaError(f"weights {path} do not fit the chosen model ({len(mismatched)} tensors differ, e.g. "
                        f"{mismatched[0]}); {hint}")
    model.load_state_dict(theirs)


def _update_best(state: TrainState, result: dict[str, float], model: torch.nn.Module, run_dir: Path,
                 extra: dict[str, Any], world: World) -> None:
    """best.pt by the mean of normalised mIoU and PCKh (multi-person: pose mAP); best_parsing.pt by mIoU;
    best_pose.pt by PCKh or mAP."""
    for key, file in (("score", "best.pt"), ("miou", "best_parsing.pt"), ("pckh", "best_pose.pt"), ("map", "best_pose.pt")):
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


def _tensorboard(run_dir: Path) -> SummaryWriter | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(run_dir))


def _log_epoch(row: dict[str, Any], quiet: bool, writer: SummaryWriter | None) -> None:
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                writer.add_scalar(key.replace("val_", "val/").replace("s1_", "stage1/"), value, row["epoch"])
    if quiet:
        return
    text = f"epoch {row['epoch']}: loss {row['loss']:.4g} (pose {row['pose_loss']:.4g}, parsing " \
           f"{row['parsing_loss']:.4g}), lr {row['lr']:.3g}, {row['images_per_s']:,.1f} img/s"
    if "val_miou" in row:
        text += f"; val mIoU {row['val_miou']:.2f}" + (f", PCKh {row['val_pckh']:.2f}" if "val_pckh" in row else "") \
            + (f", pose mAP {row['val_map']:.2f}" if "val_map" in row else "")
    out.print(text)
