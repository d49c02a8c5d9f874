"""``mula reproduce``'s rows: each an ordinary training run in ``<project>/<table>/<preset>``, then scored.

A row is trained through :func:`mula_cli.train.engine.train` exactly as ``mula train`` would train
it (so ``torchrun`` and every engine feature apply), resumed from its ``weights/last.pt`` when an
earlier invocation stopped, and skipped once finished. Its score is kept in ``reproduce.json``
beside the run (:data:`mula_cli.reproduce.report.RECORD`) and recomputed only when the weights
or the test protocol change. The module lives in the training package because it drives the engine;
the paper's numbers and the report are :mod:`mula_cli.reproduce`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mula_cli.inference.batch import InferenceOptions
from mula_cli.reproduce.report import RECORD, read_record
from mula_cli.train.config import TrainConfig
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import finite_json, write_json

CHECKPOINTS = ("last", "best")
# TrainConfig fields that do not change what a row learns: another invocation may set them differently.
_FREE_FIELDS = ("workers", "device", "project", "name", "log_every", "vis_images", "val_every", "epochs")


@dataclass(frozen=True)
class Recipe:
    """How long and how big every row of a table is trained (the rest is the paper's recipe)."""

    name: str
    epochs: int
    batch_size: int
    width: int | None = None  # None: each preset's own width
    input_size: int | None = None  # None: 256, the paper's
    val_every: int = 5


# The paper's recipe: 250 epochs, batch 24, RMSprop, the `paper` schedule (VGG16-FCN at its own rate).
PAPER_RECIPE = Recipe("paper", epochs=250, batch_size=24)
# A check that every row trains and scores on a laptop CPU (synthetic data): narrow, small, short.
LAPTOP_RECIPE = Recipe("laptop", epochs=5, batch_size=8, width=32, input_size=128)
RECIPES = {r.name: r for r in (PAPER_RECIPE, LAPTOP_RECIPE)}


@dataclass(frozen=True)
class Plan:
    """Everything that decides how a table's rows are trained and scored."""

    cache: Path
    split: str
    recipe: Recipe
    seed: int = 0
    device: str = "auto"
    workers: int = 8
    options: InferenceOptions = field(default_factory=InferenceOptions)
    checkpoint: str = "last"
    quiet: bool = False


def train_config(plan: Plan, preset: str, table_dir: Path) -> TrainConfig:
    """The ``mula train`` configuration of one row."""
    r = plan.recipe
    return TrainConfig(data=str(plan.cache), model=preset, epochs=r.epochs, batch_size=r.batch_size, width=r.width,
                       input_size=r.input_size, schedule="paper", seed=plan.seed, device=plan.device,
                       workers=plan.workers, val_every=min(r.val_every, r.epochs), project=str(table_dir), name=preset)


def _check_same_recipe(saved: dict[str, Any], wanted: TrainConfig, run: Path) -> None:
    if int(saved.get("epochs", 0)) > wanted.epochs:
        raise MulaError(f"{run} was trained for {saved['epochs']} epochs but this table asks for {wanted.epochs}; "
                        "reproduce into another --project, or move that run away")
    for key, value in wanted.to_dict().items():
        if key not in _FREE_FIELDS and saved.get(key) != value:
            raise MulaError(f"{run} was trained with {key} = {saved.get(key)!r} but this table asks for {value!r}; "
                            "reproduce into another --project, or move that run away")


def _holds_weights(run: Path) -> bool:
    try:
        return any(run.rglob("*.pt"))
    except FileNotFoundError:  # rank 0 is removing it: it found no weights there
        return False


def _clear_unstarted(run: Path, *, main: bool = True) -> None:
    """Remove a row folder left by a run that stopped before its first checkpoint (nothing to resume).

    Under torchrun every rank checks the folder (so that one holding weights stops every rank alike),
    but only the main rank removes it: the others go on into :func:`~mula_cli.train.engine.train`,
    whose process-group rendezvous (set up there, after this) waits for the main rank, so nothing is
    created in the folder before every rank is past this point. The folder may vanish meanwhile.
    """
    if _holds_weights(run):
        raise MulaError(f"{run} holds weights but no weights/last.pt to resume from; move it away and rerun")
    if not main:
        return
    shutil.rmtree(run, ignore_errors=True)
    if run.exists():
        raise MulaError(f"could not remove {run}, the folder of an unstarted run; move it away and rerun")


def train_row(plan: Plan, preset: str, table_dir: Path) -> str:
    """Train, resume or skip one row; returns ``trained``, ``resumed`` or ``done``."""
    from mula_cli.train.checkpoint import load_checkpoint, resumed_config
    from mula_cli.train.engine import train

    cfg = train_config(plan, preset, table_dir)
    run = table_dir / preset
    last = run / "weights" / "last.pt"
    if last.is_file():
        checkpoint = load_checkpoint(last)
        _check_same_recipe(checkpoint["extra"]["train_config"], cfg, run)
        state = checkpoint["training"]["state"]
        if int(state["epoch"]) >= cfg.epochs:
            return "done"
        resumed = resumed_config(checkpoint, last, epochs=cfg.epochs, workers=cfg.workers, device=cfg.device)
        train(resumed, resume=last, checkpoint=checkpoint, quiet=plan.quiet)
        return "resumed"
    if run.exists():
        _clear_unstarted(run, main=int(os.environ.get("RANK", "0")) == 0)
    table_dir.mkdir(parents=True, exist_ok=True)
    train(cfg, quiet=plan.quiet)
    return "trained"


def _evaluation_key(plan: Plan, weights: Path, partition: bool) -> dict[str, Any]:
    stat = weights.stat()
    protocol = asdict(plan.options)
    if not partition:  # grouping thresholds only matter to multi-person models (older records lack them)
        protocol.pop("grouping")
    return {"split": plan.split, "checkpoint": plan.checkpoint, "protocol": protocol,
            "weights": {"path": str(weights), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}}


def score_row(plan: Plan, preset: str, table_dir: Path) -> dict[str, Any]:
    """Score a trained row on the plan's split with the plan's test protocol (cached in ``reproduce.json``)."""
    from mula_cli.data.cache import CacheFile
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.model.weights import load_weights
    from mula_cli.utils.devices import pick_device

    run = table_dir / preset
    weights = run / "weights" / f"{plan.checkpoint}.pt"
    if not weights.is_file():
        raise MulaError(f"{weights} does not exist; the row {preset} has not finished training")
    model, config, _ = load_weights(weights, map_location=pick_device(plan.device))
    key = _evaluation_key(plan, weights, config.partition)
    record = read_record(run)
    if record is not None and record.get("evaluation") == finite_json(key):
        return record
    with CacheFile(plan.cache) as cache:
        manifest = cache.manifest
    loader = eval_loader(plan.cache, plan.split, config.input_size, config.stride, batch_size=16,
                         workers=min(plan.workers, 4), options=plan.options)
    result = evaluate_model(model, loader, manifest, options=plan.options)
    metrics = {**result.summary(), "fwiou": float(result.parsing["fwiou"])}
    if result.pose is not None:  # PCKh groups, or AP groups for a multi-person model
        metrics["map_groups" if "map" in result.pose else "pckh_groups"] = dict(result.pose["groups"])
    record = finite_json({"preset": preset, "run": str(run), "evaluation": key, "metrics": metrics,
                          "images": result.images, "seconds": round(result.seconds, 2)})
    write_json(run / RECORD, record)
    return record
