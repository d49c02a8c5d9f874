"""``mula demo``: from nothing to a trained model, its numbers and its pictures, on a laptop CPU.

It generates a small synthetic dataset, scores an untrained small MuLA, trains it briefly, scores
it again, predicts on held-out synthetic pictures and on a freshly generated photo of a person,
and says where every output is. About nine minutes on two CPU cores; much less on a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from mula_cli.console import out
from mula_cli.errors import MulaError

if TYPE_CHECKING:
    from mula_cli.train.config import TrainConfig


@dataclass(frozen=True)
class DemoPlan:
    """The demo's budget: dataset size, model and recipe.

    Chosen by measurement on 2 cores (README, "Learning check and demo"). At this budget learning
    is limited by the number of steps, not by the data: the paper's full augmentation (rotation,
    scaling, shifted crops) costs more than it gives, so the demo only mirrors the person as the
    test protocol shows it (12 epochs at batch 8: held-out PCKh 58 against 47, mIoU 23 against
    17), and batch 4 gives twice the steps for 6% fewer images per second (PCKh 63). A wider
    model, a deeper hourglass, batch 16, RMSprop at 1e-2, Adam and beta 0.03 or 0.1 were no
    better per minute. What lifted parsing is a Lovasz-softmax term beside the paper's
    cross-entropy (``lovasz``, off in ``mula train`` by default): it weighs every class's IoU
    alike, so the classes few pictures or pixels hold (hat, scarf, sunglasses, arms, shoes) get
    learned within the budget (mIoU 23.0 to 30.6 at seed 0, +4.4 and +5.0 at seeds 1 and 2;
    README, "Learning check and demo").
    """

    train: int = 2000
    val: int = 100
    test: int = 6
    model: str = "hg-tiny"
    width: Optional[int] = None
    input_size: Optional[int] = None
    augment: str = "flip"
    epochs: int = 12
    batch_size: int = 4
    lr: float = 5e-3
    beta: float = 0.01
    lovasz: float = 1.0


FULL = DemoPlan()
QUICK = DemoPlan(train=24, val=8, test=2, epochs=1, batch_size=8)  # what the tests run


def plan_config(plan: DemoPlan, cache: Path, project: Path, device: str, seed: int, *, name: str = "train",
                **model: object) -> TrainConfig:
    """The training configuration of ``plan`` (``model`` overrides variant/stages for comparisons)."""
    from mula_cli.train.config import TrainConfig

    return TrainConfig(data=str(cache), augment=plan.augment, model=plan.model, width=plan.width,
                       input_size=plan.input_size, epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr,
                       beta=plan.beta, lovasz=plan.lovasz, schedule="paper", seed=seed, device=device,
                       workers=min(2, _cores()), val_every=plan.epochs, project=str(project), name=name,
                       vis_images=4, log_every=25, **model)


def demo(
    folder: Optional[Path] = typer.Option(None, "--out", "-o", help="Where everything goes. Default: runs/demo/expN."),
    quick: bool = typer.Option(False, "--quick", help="A tiny budget (seconds) that only shows the plumbing works."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help=f"Training epochs (default {FULL.epochs}; 1 with --quick)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto uses a GPU when there is one)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
) -> None:
    """Generate synthetic people, train a small MuLA, evaluate it before and after, predict on new pictures."""
    from dataclasses import replace

    from mula_cli.devices import check_device_option

    check_device_option(device)  # before minutes of data generation
    plan = QUICK if quick else FULL
    if epochs is not None:
        plan = replace(plan, epochs=epochs)
    run_demo(folder, plan, device, seed)


def run_demo(folder: Optional[Path], plan: DemoPlan, device: str, seed: int) -> Path:
    from mula_cli.commands.prepare import prepare_synthetic_dataset
    from mula_cli.files import next_dir, write_json
    from mula_cli.train.engine import train

    start = time.perf_counter()
    root = Path(folder) if folder is not None else next_dir(Path("runs/demo"))
    if root.exists() and any(p for p in root.iterdir() if p.name != ".gitkeep") and folder is not None:
        raise MulaError(f"{root} is not empty; give a new folder with --out")
    root.mkdir(parents=True, exist_ok=True)
    out.rule("1/5 synthetic data")
    cache = root / "data" / "synthetic.h5"
    prepare_synthetic_dataset(root / "data" / "tree", train=plan.train, val=plan.val, test=plan.test, seed=seed,
                              out_path=cache, quiet=True)

    out.rule(f"2/5 untrained {plan.model}")
    cfg = plan_config(plan, cache, root, device, seed)
    before = _score_untrained(cfg, cache)

    out.rule(f"3/5 training {plan.epochs} epochs")
    run = train(cfg)
    weights = run / "weights" / "best.pt"

    out.rule("4/5 evaluation")
    after = _score(weights, cache, device)
    _compare(before, after)

    out.rule("5/5 predictions on new pictures")
    predictions = _predict(root, weights, seed, device)
    minutes = (time.perf_counter() - start) / 60
    out.rule("done")
    table = Table(show_header=False, title=f"demo outputs ({minutes:.1f} min)", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("synthetic dataset", str(root / "data" / "tree"))
    table.add_row("HDF5 cache", str(cache))
    table.add_row("training run", f"{run} (metrics.csv, vis/, weights/)")
    table.add_row("trained weights", str(weights))
    table.add_row("metrics before/after", str(root / "metrics.json"))
    table.add_row("predictions", f"{predictions} (*.png parsing, *.json pose, *_overlay.jpg)")
    out.print(table)
    out.print(f"next: mula predict your_photo.jpg --weights {weights} --vis overlay.jpg")
    write_json(root / "metrics.json", {"before": before, "after": after})
    return root


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def _score_untrained(cfg, cache: Path) -> dict[str, float]:
    """The metrics of the model as training will start it (same seed, same initialisation)."""
    import torch

    from mula_cli.data.cache import CacheFile
    from mula_cli.devices import pick_device
    from mula_cli.evaluation import eval_loader, evaluate_model
    from mula_cli.train.engine import build_training_model

    with CacheFile(cache) as c:
        manifest = c.manifest
    torch.manual_seed(cfg.seed)
    model = build_training_model(cfg, manifest).to(pick_device(cfg.device))
    loader = eval_loader(cache, "val", model.config.input_size, model.config.stride, batch_size=16, workers=0)
    result = evaluate_model(model, loader, manifest).summary()
    out.print(f"untrained: mIoU {result['miou']:.1f}, PCKh@0.5 {result['pckh']:.1f}")
    return result


def _score(weights: Path, cache: Path, device: str) -> dict[str, float]:
    from mula_cli.data.cache import CacheFile
    from mula_cli.devices import pick_device
    from mula_cli.evaluation import eval_loader, evaluate_model
    from mula_cli.model.weights import load_weights

    model, config, _ = load_weights(weights, map_location=pick_device(device))
    with CacheFile(cache) as c:
        manifest = c.manifest
    loader = eval_loader(cache, "val", config.input_size, config.stride, batch_size=16, workers=0)
    return evaluate_model(model, loader, manifest).summary()


def _compare(before: dict[str, float], after: dict[str, float]) -> None:
    table = Table(title="validation, official test protocol (percent)", title_justify="left")
    for col in ("", "PixelAcc", "MeanAcc", "mIoU", "PCKh@0.5"):
        table.add_column(col, justify="right")
    for name, m in (("untrained", before), ("trained", after)):
        table.add_row(name, *(f"{m[k]:.1f}" for k in ("pixel_acc", "mean_acc", "miou", "pckh")))
    out.print(table)


def _predict(root: Path, weights: Path, seed: int, device: str) -> Path:
    """Predict on the held-out test pictures and on a new generated photo of a person."""
    from PIL import Image

    from mula_cli.commands.predict import Source
    from mula_cli.commands.predict import predict as predict_command
    from mula_cli.data.synthetic.writer import lip_scene

    photos = root / "photos"
    photos.mkdir(exist_ok=True)
    _, scene = lip_scene(seed + 1000, "test", 0)  # a person no split contains
    photo = scene.image.resize((scene.image.width * 2, scene.image.height * 2), Image.Resampling.BICUBIC)
    photo.save(photos / "person.jpg", quality=92)  # twice the training pictures' size, as a phone photo is
    tests = sorted((root / "data" / "tree" / "Testing_images" / "testing_images").glob("*.jpg"))
    target = root / "predict"
    try:
        predict_command([str(photos / "person.jpg"), *map(str, tests)], weights=weights, out_path=None,
                        pose_path=None, vis_path=None, out_dir=target, overlays=True, flip=False, device=device,
                        batch_size=8, source=Source.auto, stride=1, smooth=False, show=False, fast=True, bf16=False,
                        min_score=None, group_distance=None, min_joints=None,
                        quiet=True)
    except typer.Exit as exc:
        if exc.exit_code:
            raise
    return target
