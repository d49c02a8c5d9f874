"""`mula predict` and the Predictor on the kinds of pictures people really have."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mula_cli.utils.manifests import load_manifest

from conftest import run_cli


@pytest.fixture
def weights(tiny_weights: Path) -> Path:
    return tiny_weights


def _photos(folder: Path) -> dict[str, tuple[int, int]]:
    """Write awkward pictures; returns name -> the (width, height) a viewer shows."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    sizes = {}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40 x 30, shown 30 x 40
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "rotated.jpg", exif=exif)
    sizes["rotated"] = (30, 40)
    Image.fromarray(rng.integers(0, 255, (50, 35), dtype=np.uint8), mode="L").save(folder / "gray.jpg")
    sizes["gray"] = (35, 50)
    rgba = rng.integers(0, 255, (33, 44, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    sizes["alpha"] = (44, 33)
    Image.fromarray(rng.integers(0, 65535, (24, 18), dtype=np.uint16)).save(folder / "deep.png")
    sizes["deep"] = (18, 24)
    Image.fromarray(rng.integers(0, 255, (20, 12, 3), dtype=np.uint8)).save(folder / "tiny.png")
    sizes["tiny"] = (12, 20)
    big = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
    big.save(folder / "huge.jpg", quality=80)
    sizes["huge"] = (6000, 4000)
    nested = folder / "a" / "b"
    nested.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (26, 22, 3), dtype=np.uint8)).convert("P").save(nested / "palette.png")
    sizes["a/b/palette"] = (22, 26)
    (folder / "notes.jpg").write_text("this is a text file with a picture's name")
    return sizes


def test_predict_folder_of_awkward_pictures(weights: Path, tmp_path: Path) -> None:
    sizes = _photos(tmp_path / "photos")
    result = run_cli("predict", tmp_path / "photos", "--weights", weights, "--out-dir", tmp_path / "out", "-q")
    assert result.exit_code == 1, result.output  # one file was not a picture
    assert "notes.jpg" in result.output
    lip = load_manifest("lip")
    for name, (w, h) in sizes.items():
        png = Image.open(tmp_path / "out" / f"{name}.png")
        assert png.size == (w, h) and png.mode == "P", name
        assert np.asarray(png).max() < 20
        doc = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert (doc["width"], doc["height"]) == (w, h)
        assert [j["name"] for j in doc["joints"]] == list(lip.joints)
        for j in doc["joints"]:
            assert 0 <= j["x"] <= w - 1 and 0 <= j["y"] <= h - 1
        assert (tmp_path / "out" / f"{name}_overlay.jpg").is_file()
    assert not (tmp_path / "out" / "notes.png").exists()


def test_single_image_outputs_and_glob(weights: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "p")
    result = run_cli("predict", tmp_path / "p" / "rotated.jpg", "--weights", weights, "--out", tmp_path / "r.png",
                     "--pose", tmp_path / "r.json", "--vis", tmp_path / "r_vis.png", "-q")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "r.png").size == (30, 40)
    assert Image.open(tmp_path / "r_vis.png").size == (30, 40)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["model"]["preset"] == "hg-tiny" and len(doc["skeleton"]) == len(load_manifest("lip").skeleton)
    several = run_cli("predict", str(tmp_path / "p" / "*.png"), "--weights", weights, "--out", tmp_path / "x.png")
    assert several.exit_code == 2 and "--out-dir" in several.output
    glob_run = run_cli("predict", str(tmp_path / "p" / "*.png"), "--weights", weights, "--out-dir", tmp_path / "g", "-q")
    assert glob_run.exit_code == 0 and sorted(p.name for p in (tmp_path / "g").glob("*.json")) == [
        "alpha.json", "deep.json", "tiny.json"]


def test_predictor_api_on_arrays_and_pil(weights: Path) -> None:
    from mula_cli import Predictor

    predictor = Predictor(weights, device="cpu")
    rng = np.random.default_rng(1)
    results = predictor.predict([rng.integers(0, 255, (37, 23, 3), dtype=np.uint8),
                                 Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)),
                                 rng.random((16, 16)).astype(np.float32)])
    assert [r.labels.shape for r in results] == [(37, 23), (20, 30), (16, 16)]
    assert results[0].joints.shape == (16, 2) and results[0].scores.shape == (16,)
    with pytest.raises(Exception, match="\\(H, W\\)"):
        predictor(np.zeros((2, 3, 4, 5)))


def test_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "x.jpg")
    result = run_cli("predict", tmp_path / "x.jpg", "--out", tmp_path / "y.png")
    assert result.exit_code == 2 and "best.pt" in result.output
    missing = run_cli("predict", tmp_path / "x.jpg", "--weights", tmp_path / "nope.pt", "--out", tmp_path / "y.png")
    assert missing.exit_code == 2 and "nope.pt" in missing.output
