"""`mula evaluate` on a cache and on a LIP folder, its output files, and `mula demo`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mula_cli.data.prepare import prepare_dataset
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli
from trees import build_lip_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    build_lip_tree(root / "LIP", counts={"train": 2, "val": 5}, seed=4)
    cache = root / "lip.h5"
    prepare_dataset(load_manifest("lip"), root / "LIP", cache)
    return root, cache


@pytest.fixture
def setup(tree: tuple[Path, Path], tiny_weights: Path) -> tuple[Path, Path, Path]:
    return (*tree, tiny_weights)


def test_evaluate_writes_metrics_and_lip_submission_files(setup, tmp_path: Path) -> None:
    root, cache, weights = setup
    result = run_cli("evaluate", weights, "--data", cache, "--save-dir", tmp_path / "pred", "--workers", "0")
    assert result.exit_code == 0, result.output
    for text in ("PixelAcc", "mIoU", "Head", "U.Body", "Avg", "Left-arm", "head-top"):
        assert text in result.output
    doc = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    assert doc["images"] == 5 and doc["protocol"]["pose_flip"] is True
    assert len(doc["parsing"]["class_iou"]) == 20 and set(doc["pose"]["groups"]) >= {"Head", "U.Body", "Avg"}
    rows = list(csv.reader((tmp_path / "pred" / "pred_keypoints_lip.csv").open()))
    assert len(rows) == 5 and all(len(r) == 33 and r[0].endswith(".jpg") for r in rows)
    assert all(v.lstrip("-").isdigit() for r in rows for v in r[1:])
    for row in rows:
        sid = row[0][:-4]
        png = Image.open(tmp_path / "pred" / "parsing" / f"{sid}.png")
        original = Image.open(root / "LIP" / "TrainVal_images" / "val_images" / f"{sid}.jpg")
        assert png.size == original.size and np.asarray(png).max() < 20


def test_evaluate_on_a_lip_folder_matches_the_cache(setup, tmp_path: Path) -> None:
    root, cache, weights = setup
    a = run_cli("evaluate", weights, "--data", cache, "--json", "--workers", "0", "--save-dir", tmp_path / "a")
    b = run_cli("evaluate", weights, "--data", root / "LIP", "--json", "--workers", "0", "--save-dir", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["parsing"] == mb["parsing"] and ma["pose"] == mb["pose"]


def test_evaluate_options_and_errors(setup, tmp_path: Path) -> None:
    _, cache, weights = setup
    ms = run_cli("evaluate", weights, "--data", cache, "--flip", "--scales", "0.75,1,1.25", "--limit", "2",
                 "--workers", "0", "--save-dir", tmp_path / "ms")
    assert ms.exit_code == 0, ms.output
    doc = json.loads((tmp_path / "ms" / "metrics.json").read_text())
    assert doc["images"] == 2 and doc["protocol"]["scales"] == [0.75, 1.0, 1.25] and doc["protocol"]["parsing_flip"]
    bad = run_cli("evaluate", weights, "--data", cache, "--scales", "big")
    assert bad.exit_code == 2 and "--scales" in bad.output
    split = run_cli("evaluate", weights, "--data", cache, "--split", "test")
    assert split.exit_code == 2 and "no 'test' split" in split.output


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("demo", "--quick")
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "demo" / "exp"
    doc = json.loads((root / "metrics.json").read_text())
    assert set(doc) == {"before", "after"} and "miou" in doc["after"]
    assert (root / "train" / "weights" / "best.pt").is_file()
    assert (root / "predict" / "person.png").is_file() and (root / "predict" / "person_overlay.jpg").is_file()
    assert "untrained" in result.output and "trained" in result.output


@pytest.mark.slow
def test_demo_multi_person_quick_runs_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """The crowd demo: mAP before and after, the curve from metrics.csv, people in the predictions."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("demo", "--quick", "--multi-person")
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "demo" / "exp"
    doc = json.loads((root / "metrics.json").read_text())
    assert "map" in doc["before"] and "map" in doc["after"] and "pckh" not in doc["after"]
    assert "held-out scores during training" in result.output and "mAP" in result.output
    people = json.loads((root / "predict" / "crowd_0.json").read_text())
    assert "people" in people and (root / "predict" / "crowd_0_overlay.jpg").is_file()
    assert (root / "predict" / "person_overlay.jpg").is_file()
