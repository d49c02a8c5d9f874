"""`mula export --format openvino`: the float32 IR round-trips, predicts and evaluates like the weights; --int8
calibrates on a folder or a cache split and stays within int8's tolerances; a failed check writes nothing;
missing calibration or a missing extra is one line.

Skipped where the `openvino` extra is not installed, except on CI (CI set), which installs it. Not collected
by itself (no test_ prefix): tests/test_export_openvino.py runs this file in a child interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from trees import build_lip_tree

HAS_OPENVINO = all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf", "onnx"))
if not HAS_OPENVINO:
    if os.environ.get("CI"):
        pytest.fail("the openvino extra is missing on CI: .ci/run installs it", pytrace=False)
    pytest.skip("OpenVINO checks need the optional openvino extra: pip install 'mula[openvino]'",
                allow_module_level=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hg-tiny with trained-like random weights: activations in a trained model's range, which int8 needs
    (the untrained `tiny_weights` reach 4e4 and quantize to noise)."""
    from mula_cli.bench.predict import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("w") / "tiny.pt", "hg-tiny", seed=2)


@pytest.fixture(scope="module")
def lip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.utils.manifests import load_manifest

    root = tmp_path_factory.mktemp("lip")
    build_lip_tree(root / "LIP", counts={"train": 2, "val": 4}, seed=4, sizes=[(120, 90), (90, 120)])
    prepare_dataset(load_manifest("lip"), root / "LIP", root / "lip.h5")
    return root / "lip.h5"


@pytest.fixture(scope="module")
def ir(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ir") / "m.xml"
    result = run_cli("export", trained, "--format", "openvino", "--out", out)
    assert result.exit_code == 0, result.output
    assert "largest difference" in result.output and "int8" not in result.output
    return out


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mula_cli.bench.predict import write_photos

    return write_photos(tmp_path_factory.mktemp("photos"), 1, seed=5)[0]


def _predict(weights: Path, picture: Path, tmp_path: Path, name: str, precision: str = "fp32") -> tuple:
    result = run_cli("predict", picture, "--weights", weights, "--out", tmp_path / f"{name}.png", "--pose",
                     tmp_path / f"{name}.json", "--precision", precision, "-q")
    assert result.exit_code == 0, result.output
    joints = json.loads((tmp_path / f"{name}.json").read_text())["joints"]
    return np.asarray(Image.open(tmp_path / f"{name}.png")), np.array([[j["x"], j["y"]] for j in joints])


def test_ir_round_trips_predicts_and_evaluates_like_the_weights(trained: Path, ir: Path, lip_cache: Path,
                                                                 picture: Path, tmp_path: Path) -> None:
    from mula_cli.deploy.export import ExportWrapper
    from mula_cli.inference.predictor import Predictor
    from mula_cli.inference.runtime import load_exported
    from mula_cli.model.weights import load_weights
    from mula_cli.ops.dynconv import export_form

    assert ir.with_suffix(".bin").is_file() and not list(ir.parent.glob(".*"))  # no staging folder left
    exported = load_exported(ir, precision="fp32")
    assert exported.config.preset == "hg-tiny" and "manifest" in exported.extra and not exported.int8
    model, _, _ = load_weights(trained)
    for batch in (1, 3):  # the batch stays dynamic
        x = torch.randint(0, 256, (batch, 3, 128, 128), generator=torch.Generator().manual_seed(batch)).float()
        with torch.no_grad(), export_form():
            want = ExportWrapper(model).eval()(x)
        got = exported.raw(x)
        assert [g.shape for g in got] == [(batch, 20, 128, 128), (batch, 17, 32, 32)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))

    labels_pt, joints_pt = _predict(trained, picture, tmp_path, "pt")
    labels_ir, joints_ir = _predict(ir, picture, tmp_path, "ir")
    assert labels_pt.shape == labels_ir.shape and (labels_pt == labels_ir).mean() > 0.99
    assert np.abs(joints_pt - joints_ir).sum(1).max() <= 2.0
    bf16 = Predictor(ir, "cpu", precision="bf16")  # the Predictor's precision reaches OpenVINO's hint
    assert bf16.precision == "bf16" and bf16.path == "exported OpenVINO IR (bf16, CPU)"

    scores = {}
    for name, weights in (("pt", trained), ("ir", ir)):
        result = run_cli("evaluate", weights, "--data", lip_cache, "--workers", "0", "--json", "--save-dir",
                         tmp_path / f"eval_{name}")
        assert result.exit_code == 0, result.output
        scores[name] = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
    assert scores["ir"]["precision"]["network"] == "float32"
    assert scores["ir"]["parsing"]["miou"] == pytest.approx(scores["pt"]["parsing"]["miou"], abs=1e-3)
    assert scores["ir"]["pose"]["pckh"] == pytest.approx(scores["pt"]["pose"]["pckh"], abs=1e-3)


def test_int8_calibrates_on_a_folder_and_on_a_cache_split(trained: Path, lip_cache: Path, picture: Path,
                                                            tmp_path: Path) -> None:
    """The int8 IR on a photo it was not calibrated on stays within the export check's int8 tolerances
    (mula_cli.deploy.openvino: labels, heatmaps, joint peaks at near-ties of float32's), and `mula predict`
    runs it. Joints are not compared in pixels: these random weights' joint heatmaps are nearly flat, so
    their peaks are near-ties that int8 may pick differently (a trained model's are not)."""
    import openvino as ov

    from mula_cli.bench.predict import write_photos
    from mula_cli.deploy.export import ExportWrapper
    from mula_cli.deploy.openvino import Int8Check, letterboxed
    from mula_cli.inference.runtime import load_exported
    from mula_cli.model.weights import load_weights
    from mula_cli.ops.dynconv import export_form

    folder = tmp_path / "pictures"
    write_photos(folder, 6, seed=1)
    model, _, _ = load_weights(trained)
    x = torch.from_numpy(letterboxed([Image.open(picture)], 128))
    with torch.no_grad(), export_form():
        want = ExportWrapper(model).eval()(x)
    labels_pt, _ = _predict(trained, picture, tmp_path, "pt")
    for name, args in (("folder", ["--calibration", folder, "--calibration-count", "4"]),
                       ("cache", ["--calibration", lip_cache, "--calibration-split", "val"])):
        out = tmp_path / f"{name}.xml"
        result = run_cli("export", trained, "--format", "openvino", "--int8", *args, "--out", out)
        assert result.exit_code == 0, result.output
        assert "int8 on the calibration pictures" in result.output, result.output
        exported = load_exported(out)
        assert exported.int8 and exported.description == "exported OpenVINO IR (int8, fp32, CPU)"
        meta = json.loads(ov.Core().read_model(str(out)).get_rt_info(["mula", "meta"]).astype(str))
        assert meta["calibration"]["pictures"] == 4  # where the pictures came from is recorded in the file
        assert str(folder if name == "folder" else lip_cache) in meta["calibration"]["source"]
        check = Int8Check()
        check.add(want, exported.raw(x), labels_only=False)
        assert check.passed(), check.summary()
        labels, joints = _predict(out, picture, tmp_path, name)
        assert (labels == labels_pt).mean() >= 0.95 and joints.shape == (16, 2)


def test_a_failed_check_leaves_no_file(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mula_cli.deploy.export as export
    import mula_cli.deploy.openvino as ov_export
    from mula_cli.utils.errors import MulaError

    out = tmp_path / "out" / "m.xml"
    out.parent.mkdir()
    out.write_text("an older export")  # stays as it was

    def disagree(*args, **kwargs):
        raise MulaError("the openvino export disagrees with the eager model, so nothing was written")

    monkeypatch.setattr(export, "_verify", disagree)
    result = run_cli("export", trained, "--format", "openvino", "--out", out)
    assert result.exit_code == 2 and "nothing was written" in result.output, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.xml"] and out.read_text() == "an older export"
    monkeypatch.undo()

    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(folder / "a.png")
    # the int8 check fails (quantization itself is the int8 test's; here the float32 IR stands in, faster)
    monkeypatch.setattr(ov_export, "quantize", lambda xml, out, pictures: shutil.copytree(xml.parent, out.parent))
    monkeypatch.setattr(ov_export.Int8Check, "passed", lambda self: False)
    result = run_cli("export", trained, "--format", "openvino", "--int8", "--calibration", folder, "--out", out)
    assert result.exit_code == 2 and "too far from the float32 model" in result.output, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.xml"] and out.read_text() == "an older export"


def _one_error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_missing_calibration_or_extra_is_one_line(trained: Path, ir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.inference.runtime import load_exported
    from mula_cli.utils.errors import MulaError

    out = tmp_path / "m.xml"
    assert "--int8 needs --calibration" in _one_error_line(run_cli("export", trained, "-f", "openvino", "--int8",
                                                                   "--out", out))
    assert "--int8 is for --format openvino" in _one_error_line(run_cli("export", trained, "-f", "onnx", "--int8",
                                                                        "--calibration", tmp_path))
    assert "no pictures" in _one_error_line(run_cli("export", trained, "-f", "openvino", "--int8", "--calibration",
                                                    tmp_path, "--out", out))
    monkeypatch.setitem(sys.modules, "nncf", None)  # installed without NNCF: float32 still works, int8 says why
    line = _one_error_line(run_cli("export", trained, "-f", "openvino", "--int8", "--calibration", tmp_path))
    assert "NNCF" in line and "pip install 'mula[openvino]'" in line
    monkeypatch.setitem(sys.modules, "openvino", None)
    line = _one_error_line(run_cli("export", trained, "-f", "openvino", "--out", out))
    assert "pip install 'mula[openvino]'" in line
    with pytest.raises(MulaError, match=r"pip install 'mula\[openvino\]'"):
        load_exported(ir)
    assert not out.exists() and not list(tmp_path.glob(".*"))
