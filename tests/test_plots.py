"""Plots and the report page: results.png, the evaluation plots, report.html (checked in headless
Chromium), `mula plot`, and that a plot that fails, or matplotlib missing, never fails a run."""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mula_cli.data.prepare import prepare_dataset
from mula_cli.evaluation.metrics import ParsingMetrics, PoseMetrics
from mula_cli.evaluation.multi_person_metrics import MultiPersonPoseAP
from mula_cli.inference.batch import OriginalPrediction
from mula_cli.plots import evaluation as eval_plots
from mula_cli.plots import figures, training
from mula_cli.plots.gallery import Gallery, GalleryItem, _panel
from mula_cli.plots.report import REPORT, write_evaluation_outputs
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli, synthetic_cache
from trees import build_lip_tree

LIP = load_manifest("lip")
DATA_URI = re.compile(r'<img src="data:(image/(?:png|jpeg));base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(autouse=True)
def plots_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other tests run without plots (MULA_PLOTS=0 in conftest); these draw them."""
    monkeypatch.delenv("MULA_PLOTS", raising=False)
    monkeypatch.setattr(figures, "_hinted", False)


def _png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def _embedded(html_path: Path) -> list[tuple[str, Image.Image]]:
    """Every picture of a page, decoded: the page has no other kind (no links to files)."""
    text = html_path.read_text(encoding="utf-8")
    assert text.count("<img") == len(DATA_URI.findall(text)), "a picture that is not inline"
    pictures = []
    for mime, data in DATA_URI.findall(text):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        assert image.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]
        pictures.append((mime, image))
    return pictures


def _rows(epochs: int, seed: int, stages: int = 2) -> list[dict[str, object]]:
    """metrics.csv rows as the engine writes them (validation every other epoch)."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(1, epochs + 1):
        row: dict[str, object] = {"epoch": e, "lr": 5e-3, "loss": 1 / e, "images_per_s": 40 + rng.random()}
        for t in range(1, stages + 1):
            row.update({f"s{t}_pose": 1 / e, f"s{t}_parsing": 2 / e})
            for task in ("pose", "parsing"):
                for stream in ("pose", "parsing"):
                    row[f"s{t}_{task}_grad_{stream}"] = rng.uniform(0.1, 2)
        validated = e % 2 == 0
        row.update({"val_miou": 10 + e if validated else "", "val_pckh": 20 + e if validated else ""})
        rows.append(row)
    return rows


def _write_run(folder: Path, rows: list[dict[str, object]]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_mula_plot_draws_one_run_and_compares_several(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = _write_run(tmp_path / "runs" / "exp", _rows(6, 0))
    b = _write_run(tmp_path / "runs" / "exp2", _rows(3, 1, stages=3))
    one = run_cli("plot", a)
    assert one.exit_code == 0, one.output
    width, height = _png(a / "results.png")
    assert width > 600 and height > 300
    both = run_cli("plot", a, b / "metrics.csv", "--out", tmp_path / "compare.png")
    assert both.exit_code == 0, both.output
    _png(tmp_path / "compare.png")
    default = run_cli("plot", a, b)
    assert default.exit_code == 0 and (tmp_path / "runs" / "plot" / "exp" / "results.png").is_file()
    for args, words in (((tmp_path / "nowhere",), "does not exist"), ((tmp_path,), "has no metrics.csv"),
                        ((a, "--out", tmp_path / "x.jpg"), "must name a .png")):
        bad = run_cli("plot", *args)
        lines = bad.output.strip().splitlines()
        assert bad.exit_code == 2 and words in bad.output and len(lines) == 1, bad.output


def test_a_run_of_short_epochs_redraws_within_its_time_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(training, "draw_results", lambda runs, path: calls.append(len(runs[0][1])) or path)
    plot = training.ResultsPlot(tmp_path, figures.Plotter())
    plot._cost = 10.0  # a slow drawing: the next redraw waits 200 s unless forced
    plot.update(_rows(1, 0))
    plot.update(_rows(2, 0), force=True)
    assert calls == [1, 2]
    plot._cost = 10.0
    plot.update(_rows(3, 0))
    assert calls == [1, 2]
    assert training.ResultsPlot(tmp_path, figures.Plotter(enabled=False)).update(_rows(1, 0)) is None
    assert figures.plots_wanted()
    monkeypatch.setenv("MULA_PLOTS", "off")  # as --no-plots, for mula reproduce's rows and library callers
    assert not figures.plots_wanted()


def _doc(multi_person: bool = False) -> dict:
    """A metrics.json as `mula evaluate` writes it (LIP classes and joints; multi-person: PASCAL's)."""
    manifest = load_manifest("pascal_person_part") if multi_person else LIP
    rng = np.random.default_rng(0)
    iou = list(rng.uniform(0, 90, manifest.num_classes))
    iou[3] = math.nan  # a class absent from ground truth and prediction
    doc = {"weights": "best.pt", "data": manifest.name, "split": "val", "images": 12, "seconds": 1.0,
           "protocol": {"name": "default"},
           "parsing": {"pixel_acc": 80.0, "mean_acc": 50.0, "miou": float(np.nanmean(iou)), "fwiou": 70.0,
                       "class_iou": iou, "class_acc": iou, "class_names": list(manifest.classes)}}
    joints = list(manifest.joints)
    if multi_person:
        doc["pose"] = {"map": 40.0, "joint_ap": list(rng.uniform(0, 80, len(joints))), "threshold": 0.5,
                       "groups": {"Head": 50.0}, "joint_names": joints}
    else:
        doc["pose"] = {"pckh": 60.0, "joint_pckh": list(rng.uniform(0, 100, len(joints))), "images": 12,
                       "excluded_images": 0, "groups": {"Head": 70.0, "Avg": 60.0}, "joint_names": joints,
                       "curve": {f"{0.05 * i:.2f}": 12.0 * i for i in range(11)}}
    return doc


def _item(name: str, score: float, manifest) -> GalleryItem:
    labels = np.zeros((48, 32), np.uint8)
    labels[10:40, 8:24] = 5
    joints = np.random.default_rng(1).uniform(4, 28, (manifest.num_joints, 2))
    scored = np.concatenate([joints, np.ones((manifest.num_joints, 1))], axis=1)
    people = [scored] if manifest.multi_person else None
    item = GalleryItem(name, score, score, score, labels, joints, np.ones(manifest.num_joints), people)
    photo = Image.fromarray(np.full((96, 64, 3), 128, np.uint8))
    truth = np.zeros((96, 64), np.uint8)
    item.panel = _panel(item, photo, truth, joints[None] * 2, manifest)
    return item


@pytest.mark.parametrize("multi_person", [False, True], ids=["single-person", "multi-person"])
def test_evaluation_plots_and_the_report_embed_every_picture(tmp_path: Path, multi_person: bool) -> None:
    doc = _doc(multi_person)
    manifest = load_manifest(doc["data"])
    k = manifest.num_classes
    confusion = np.random.default_rng(2).integers(0, 100, (k, k))
    curves = {"Head": {f"{0.05 * i:.2f}": 10.0 * i for i in range(11)}}
    gallery = ([_item("good", 90.0, manifest)], [_item("bad", 5.0, manifest)])
    written = write_evaluation_outputs(tmp_path, doc, figures.Plotter(), confusion=confusion, group_curves=curves,
                                       gallery=gallery)
    pose_plot = "ap_per_joint.png" if multi_person else "pckh_curve.png"
    expected = ["per_class_iou.png", "confusion_matrix.png", pose_plot, REPORT]
    assert [p.name for p in written] == expected
    for name in expected[:3]:
        _png(tmp_path / name)
    assert not (tmp_path / ("pckh_curve.png" if multi_person else "ap_per_joint.png")).exists()
    pictures = _embedded(tmp_path / REPORT)
    assert [m for m, _ in pictures] == ["image/png"] * 3 + ["image/jpeg"] * 2
    assert pictures[-1][1].width == 3 * 32 + 8  # photo | prediction | ground truth
    text = (tmp_path / REPORT).read_text()
    assert manifest.classes[1] in text and manifest.joints[0] in text and "good" in text


def test_a_failing_plot_is_one_warning_and_the_rest_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no room for the colour bar")

    monkeypatch.setattr(eval_plots, "draw_confusion", broken)
    k = LIP.num_classes
    written = write_evaluation_outputs(tmp_path, _doc(), figures.Plotter(), confusion=np.eye(k))
    assert [p.name for p in written] == ["per_class_iou.png", "pckh_curve.png", REPORT]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "confusion_matrix.png" in lines[0] and "RuntimeError" in lines[0]


def test_the_gallery_keeps_the_best_and_worst_pictures_by_their_own_scores() -> None:
    parsing, pose = ParsingMetrics(3), PoseMetrics(LIP)
    gallery = Gallery(size=2, thumb=16)
    rng = np.random.default_rng(0)
    gt = torch.zeros((8, 8), dtype=torch.int64)
    gt[2:6, 2:6] = 1
    own_miou = {}
    for n in range(7):  # picture n has n wrong rows of pixels
        pred = gt.clone()
        pred[:n] = 2
        joints = rng.uniform(0, 8, (LIP.num_joints, 2))
        added = parsing.update(pred, gt)
        own = pose.update(joints, joints)
        assert own == 1.0  # every joint right
        gallery.add(f"img{n}", OriginalPrediction(pred, joints, np.ones(LIP.num_joints)), added, own)
        if n % 3 == 2:  # read a batch later, as evaluation does
            gallery.settle()
        alone = ParsingMetrics(3)
        alone.update(pred, gt)
        own_miou[f"img{n}"] = alone.compute()["miou"]
    gallery.settle()
    best, worst = gallery.items()
    assert [i.id for i in best] == ["img0", "img1"] and [i.id for i in worst] == ["img6", "img5"]
    for item in best + worst:
        assert item.parsing == pytest.approx(own_miou[item.id]) and item.pose == 100.0
        assert item.score == pytest.approx((item.parsing + 100.0) / 2) and item.labels.shape == (16, 16)
    assert parsing.confusion.sum() == 7 * 64  # the accumulators saw every picture
    groups = pose.compute()["groups"]
    assert all(curve["0.50"] == groups[name] for name, curve in pose.group_curves().items())
    near = PoseMetrics(LIP)  # every joint 0.27 head sizes off: missed up to 0.25, hit from 0.30
    gt = rng.uniform(50, 150, (LIP.num_joints, 2))
    gt[LIP.pckh.neck] = gt[LIP.pckh.head_top] + [0.0, 40.0]
    assert near.update(gt + [0.27 * 40, 0.0], gt) == 1.0  # within half the head size
    assert all(c["0.25"] == 0.0 and c["0.30"] == 100.0 for c in near.group_curves().values())
    pascal = load_manifest("pascal_person_part")
    crowd = MultiPersonPoseAP(pascal)
    people = rng.uniform(10, 90, (2, pascal.num_joints, 2))
    found = np.concatenate([people, np.ones((2, pascal.num_joints, 1))], axis=2)
    assert crowd.update(found, people) == 1.0 and crowd.update(found[:1], people) == 0.5
    assert crowd.update(np.zeros((0, pascal.num_joints, 3)), people) == 0.0


@pytest.fixture(scope="module")
def lip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plots_eval")
    build_lip_tree(root / "LIP", counts={"train": 1, "val": 5}, seed=4)
    prepare_dataset(LIP, root / "LIP", root / "lip.h5")
    return root / "lip.h5"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
def test_evaluate_writes_the_plots_and_a_report_that_chromium_renders(lip_cache: Path, tiny_weights: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    settled = []
    settle = Gallery.settle
    monkeypatch.setattr(Gallery, "settle", lambda self: settled.append(len(self._pending)) or settle(self))
    result = run_cli("evaluate", tiny_weights, "--data", lip_cache, "--workers", "0", "--batch-size", "2",
                     "--save-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert settled == [0, 2, 2, 1]  # each batch's scores read after the next batch's predictions: none pile up
    for name in ("per_class_iou.png", "confusion_matrix.png", "pckh_curve.png"):
        _png(tmp_path / name)
        assert name in result.output
    pictures = _embedded(tmp_path / REPORT)
    assert len(pictures) == 3 + 5  # the plots, and the 5 pictures split into best 3 and worst 2
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: .ci/run installs it with apt-get")
        pytest.skip("chromium is not installed (apt-get install chromium); .ci/run installs it")
    page = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           (tmp_path / REPORT).as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert page.returncode == 0, page.stderr[-2000:]
    body = re.search(r"<body[^>]*>", page.stdout)
    assert body is not None, page.stdout[:500]
    assert 'data-images="ok"' in body[0] and 'data-errors="0"' in body[0], body[0]
    assert f'data-image-count="{len(pictures)}"' in body[0], body[0]


@pytest.mark.slow
def test_evaluate_without_matplotlib_or_with_no_plots_goes_on(lip_cache: Path, tiny_weights: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("evaluate", tiny_weights, "--data", lip_cache, "--workers", "0", "--limit", "2")
    off = run_cli(*args, "--no-plots", "--save-dir", tmp_path / "off")
    assert off.exit_code == 0 and sorted(p.name for p in (tmp_path / "off").iterdir()) == [
        "metrics.json", "parsing", "pred_keypoints_lip.csv"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    bare = run_cli(*args, "--save-dir", tmp_path / "bare")
    assert bare.exit_code == 0, bare.output
    hints = [line for line in bare.output.splitlines() if "mula[plots]" in line]
    assert len(hints) == 1 and "matplotlib is not installed" in hints[0]
    assert not list((tmp_path / "bare").glob("*.png"))
    assert len(_embedded(tmp_path / "bare" / REPORT)) == 2  # tables and the gallery: no plot needs matplotlib
    plot = run_cli("plot", tmp_path / "nowhere")
    assert plot.exit_code == 2
    plot = run_cli("plot", _write_run(tmp_path / "run", _rows(2, 0)))
    assert plot.exit_code == 2 and "mula[plots]" in plot.output


@pytest.mark.slow
def test_train_redraws_results_png_and_a_failed_plot_does_not_stop_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = synthetic_cache(tmp_path / "data", train=8, val=2)
    draws = []

    def first_fails(runs, path):
        draws.append(len(runs[0][1]))
        if len(draws) == 1:
            raise ValueError("a broken font cache")
        return real(runs, path)

    real = training.draw_results
    monkeypatch.setattr(training, "draw_results", first_fails)
    result = run_cli("train", "--data", cache, "--model", "hg-tiny", "--width", "16", "--batch-size", "4",
                     "--workers", "0", "--epochs", "2", "--val-every", "1", "--project", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "results.png" in line and "ValueError" in line]
    assert len(warnings) == 1, result.output
    assert draws == [1, 2]  # after each epoch, the second drawing every epoch so far
    _png(tmp_path / "runs" / "exp" / "results.png")
