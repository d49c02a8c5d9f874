"""``mula demo``: from nothing to a trained model, its numbers and its pictures, on a laptop CPU.

It generates a small synthetic dataset, scores an untrained small MuLA, trains it briefly, scores
it again, predicts on held-out synthetic pictures and on a freshly generated photo of a person,
and says where every output is. About nine minutes on two CPU cores; much less on a GPU.
``--multi-person`` does the same with synthetic crowds and the partition branch (pose mAP,
people told apart), within fifteen minutes on two CPU cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from mula_cli.utils.console import out
from mula_cli.utils.errors import MulaError

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
    multi_person: bool = False  # synthetic crowds, the partition branch, pose mAP
    val_every: Optional[int] = None  # validate every N epochs (None: at the end only)


FULL = DemoPlan()
QUICK = DemoPlan(train=24, val=8, test=2, epochs=1, batch_size=8)  # what the tests run
# Synthetic crowds (1-4 people of varied sizes): validated every 2 epochs, so metrics.csv holds the
# curve of held-out mAP against training time (README, "Multi-person demo").
MULTI_PERSON = DemoPlan(multi_person=True, width=32, epochs=12, lovasz=0.0, val_every=2)
QUICK_MULTI_PERSON = replace(QUICK, multi_person=True, lovasz=0.0, val_every=1)


def plan_config(plan: DemoPlan, cache: Path, project: Path, device: str, seed: int, *, name: str = "train",
                **model: object) -> TrainConfig:
    """The training configuration of ``plan`` (``model`` overrides variant/stages for comparisons)."""
    from mula_cli.train.config import TrainConfig

    return TrainConfig(data=str(cache), augment=plan.augment, model=plan.model, width=plan.width,
                       input_size=plan.input_size, epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr,
                       beta=plan.beta, lovasz=plan.lovasz, schedule="paper", seed=seed, device=device,
                       workers=min(2, _cores()), val_every=plan.val_every or plan.epochs, project=str(project), name=name,
                       vis_images=4, log_every=25, **model)


def demo(
    folder: Optional[Path] = typer.Option(None, "--out", "-o", help="Where everything goes. Default: runs/demo/expN."),
    quick: bool = typer.Option(False, "--quick", help="A tiny budget (seconds) that only shows the plumbing works."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help=f"Training epochs (default {FULL.epochs}; 1 with --quick)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto uses a GPU when there is one)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
    multi_person: bool = typer.Option(False, "--multi-person", help="Synthetic crowds and a multi-person MuLA (partition branch, pose mAP, one colour per person); about 15 minutes on 2 CPU cores."),
    plots: bool = typer.Option(True, "--plots/--no-plots", envvar="MULA_PLOTS", help="Draw the training run's results.png and the evaluation's plots and report.html (plots need the `plots` extra)."),
) -> None:
    """Generate synthetic people, train a small MuLA, evaluate it before and after, predict on new pictures."""
    from mula_cli.utils.devices import check_device_option

    check_device_option(device)  # before minutes of data generation
    if multi_person:
        plan = QUICK_MULTI_PERSON if quick else MULTI_PERSON
    else:
        plan = QUICK if quick else FULL
    if epochs is not None:
        plan = replace(plan, epochs=epochs)
    run_demo(folder, plan, device, seed, plots=plots)


def run_demo(folder: Optional[Path], plan: DemoPlan, device: str, seed: int, plots: bool = True) -> Path:
    from mula_cli.commands.prepare import prepare_synthetic_dataset
    from mula_cli.train.engine import train
    from mula_cli.utils.files import next_dir, write_json

    start = time.perf_counter()
    root = Path(folder) if folder is not None else next_dir(Path("runs/demo"))
    if root.exists() and any(p for p in root.iterdir() if p.name != ".gitkeep") and folder is not None:
        raise MulaError(f"{root} is not empty; give a new folder with --out")
    root.mkdir(parents=True, exist_ok=True)
    out.rule("1/5 synthetic data")
    cache = root / "data" / "synthetic.h5"
    prepare_synthetic_dataset(root / "data" / "tree", train=plan.train, val=plan.val, test=plan.test, seed=seed,
                              multi_person=plan.multi_person, out_path=cache, quiet=True)

    out.rule(f"2/5 untrained {plan.model}")
    cfg = plan_config(plan, cache, root, device, seed)
    before = _score_untrained(cfg, cache)

    out.rule(f"3/5 training {plan.epochs} epochs")
    run = train(cfg, plots=plots)
    weights = run / "weights" / "best.pt"

    out.rule("4/5 evaluation")
    after = _score(weights, cache, device, report_dir=root / "evaluate" if plots else None)
    _compare(before, after)

    if plan.val_every:
        _print_curve(run / "metrics.csv")

    out.rule("5/5 predictions on new pictures")
    predictions = _predict(root, weights, seed, device, plan.multi_person)
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
    for name, files in _plot_files(run, root / "evaluate"):
        table.add_row(name, files)
    what = "people, one colour each" if plan.multi_person else "pose"
    table.add_row("predictions", f"{predictions} (*.png parsing, *.json {what}, *_overlay.jpg)")
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
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.train.engine import build_training_model
    from mula_cli.utils.devices import pick_device

    with CacheFile(cache) as c:
        manifest = c.manifest
    torch.manual_seed(cfg.seed)
    model = build_training_model(cfg, manifest).to(pick_device(cfg.device))
    loader = eval_loader(cache, "val", model.config.input_size, model.config.stride, batch_size=16, workers=0)
    result = evaluate_model(model, loader, manifest).summary()
    name, key = _pose_score(result)
    out.print(f"untrained: mIoU {result['miou']:.1f}, {name} {result[key]:.1f}")
    return result


def _pose_score(metrics: dict[str, float]) -> tuple[str, str]:
    """The headline pose score's name and key: PCKh for one person, mAP for crowds."""
    return ("mAP", "map") if "map" in metrics else ("PCKh@0.5", "pckh")


def _score(weights: Path, cache: Path, device: str, report_dir: Optional[Path] = None) -> dict[str, float]:
    """The trained model's headline metrics; with ``report_dir``, also its metrics.json, plots and
    report.html there, as ``mula evaluate`` writes them."""
    from mula_cli.commands.evaluate import metrics_document, protocol_record
    from mula_cli.data.cache import CacheFile
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.inference.batch import InferenceOptions
    from mula_cli.model.weights import load_weights
    from mula_cli.plots.figures import Plotter
    from mula_cli.plots.gallery import Gallery
    from mula_cli.plots.report import write_evaluation_outputs
    from mula_cli.utils.devices import pick_device
    from mula_cli.utils.files import write_json

    model, config, _ = load_weights(weights, map_location=pick_device(device))
    with CacheFile(cache) as c:
        manifest = c.manifest
    loader = eval_loader(cache, "val", config.input_size, config.stride, batch_size=16, workers=0)
    gallery = Gallery() if report_dir is not None else None
    result = evaluate_model(model, loader, manifest, gallery=gallery)
    if report_dir is not None and gallery is not None:
        plotter = Plotter()
        pictures = plotter("the report's pictures", gallery.render, cache, "val", manifest)
        doc = metrics_document(result, manifest, weights=weights, data=cache, split="val",
                               protocol=protocol_record(InferenceOptions(), config.input_size))
        write_json(report_dir / "metrics.json", doc)
        write_evaluation_outputs(report_dir, doc, plotter, confusion=result.confusion,
                                 group_curves=result.group_curves, gallery=pictures)
    return result.summary()


def _plot_files(run: Path, evaluation: Path) -> list[tuple[str, str]]:
    """The outputs table's rows for the plots and the report that were written (none with --no-plots)."""
    rows = []
    if (run / "results.png").is_file():
        rows.append(("training plots", str(run / "results.png")))
    if (evaluation / "report.html").is_file():
        rows.append(("evaluation report", str(evaluation / "report.html")))
    pngs = sorted(p.name for p in evaluation.glob("*.png")) if evaluation.is_dir() else []
    if pngs:
        rows.append(("evaluation plots", f"{evaluation} ({', '.join(pngs)})"))
    return rows


def _compare(before: dict[str, float], after: dict[str, float]) -> None:
    pose_name, pose_key = _pose_score(after)
    table = Table(title="validation, official test protocol (percent)", title_justify="left")
    for col in ("", "PixelAcc", "MeanAcc", "mIoU", pose_name):
        table.add_column(col, justify="right")
    for name, m in (("untrained", before), ("trained", after)):
        table.add_row(name, *(f"{m[k]:.1f}" for k in ("pixel_acc", "mean_acc", "miou", pose_key)))
    out.print(table)


def _print_curve(metrics_csv: Path) -> None:
    """Held-out scores against training time, from the run's metrics.csv (the epochs that validated)."""
    import csv

    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pose = "val_map" if rows and "val_map" in rows[0] else "val_pckh"
    table = Table(title="held-out scores during training", title_justify="left")
    for col in ("epoch", "training min", "mIoU", "mAP" if pose == "val_map" else "PCKh@0.5"):
        table.add_column(col, justify="right")
    elapsed = 0.0
    for row in rows:
        elapsed += float(row["seconds"] or 0)
        if row.get(pose):
            table.add_row(row["epoch"], f"{elapsed / 60:.1f}", f"{float(row['val_miou']):.1f}",
                          f"{float(row[pose]):.1f}")
    out.print(table)


def _predict(root: Path, weights: Path, seed: int, device: str, multi_person: bool = False) -> Path:
    """Predict on the held-out test pictures and on a new generated photo of a person (of a crowd)."""
    from PIL import Image

    from mula_cli.commands.predict import PoseFormat, Source
    from mula_cli.commands.predict import predict as predict_command
    from mula_cli.data.synthetic.writer import lip_scene, pascal_scene

    photos = root / "photos"
    photos.mkdir(exist_ok=True)
    if multi_person:  # crowds no split contains, at the training pictures' size
        tests = []
        for i in range(3):
            _, scene = pascal_scene(seed + 1000, "test", i)
            tests.append(photos / f"crowd_{i}.jpg")
            scene.image.save(tests[-1], quality=92)
    else:
        tests = sorted((root / "data" / "tree" / "Testing_images" / "testing_images").glob("*.jpg"))
    _, scene = lip_scene(seed + 1000, "test", 0)  # a person no split contains
    photo = scene.image.resize((scene.image.width * 2, scene.image.height * 2), Image.Resampling.BICUBIC)
    photo.save(photos / "person.jpg", quality=92)  # twice the training pictures' size, as a phone photo is
    target = root / "predict"
    try:
        predict_command([str(photos / "person.jpg"), *map(str, tests)], weights=weights, out_path=None,
                        pose_path=None, pose_format=PoseFormat.mula, vis_path=None, out_dir=target, overlays=True,
                        flip=False, device=device, batch_size=8, source=Source.auto, stride=1, smooth=False,
                        show=False, fast=True, precision="auto", bf16=False, min_score=None, group_distance=None,
                        min_joints=None, quiet=True)
    except typer.Exit as exc:
        if exc.exit_code:
            raise
    return target
