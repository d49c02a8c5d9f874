"""`mula export`: TorchScript and ONNX files round-trip at batch 1 and 3, and predict runs them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="ONNX checks need the optional onnx and onnxruntime packages")


@pytest.fixture
def weights(tiny_weights: Path) -> Path:
    return tiny_weights


def _eager(weights: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from mula_cli.export import ExportWrapper
    from mula_cli.model.weights import load_weights

    model, _, _ = load_weights(weights)
    with torch.no_grad():
        return ExportWrapper(model).eval()(x)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_ort)])
def test_export_round_trip_at_batch_1_and_3(weights: Path, tmp_path: Path, fmt: str) -> None:
    from mula_cli.runtime import load_exported

    out = tmp_path / f"m.{fmt}"
    args = ["export", weights, "--format", fmt, "--out", out] + (["--dynamic-batch"] if fmt == "onnx" else [])
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "largest difference" in result.output
    exported = load_exported(out)
    assert exported.config.preset == "hg-tiny" and "manifest" in exported.extra
    for batch in (1, 3):
        x = torch.randint(0, 256, (batch, 3, 128, 128), generator=torch.Generator().manual_seed(batch)).float()
        want_parsing, want_heat = _eager(weights, x)
        got_parsing, got_heat = exported.raw(x)
        assert got_parsing.shape == (batch, 20, 128, 128) and got_heat.shape == (batch, 17, 32, 32)
        torch.testing.assert_close(got_heat, want_heat, rtol=1e-4, atol=1e-4 * float(want_heat.abs().max()))
        torch.testing.assert_close(got_parsing, want_parsing, rtol=1e-4, atol=1e-4 * float(want_parsing.abs().max()))


def test_torchscript_takes_uint8_and_labels_option(weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.torchscript"
    assert run_cli("export", weights, "--format", "torchscript", "--out", out, "--labels").exit_code == 0
    module = torch.jit.load(str(out))
    x = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    labels, _ = module(x)
    assert labels.shape == (2, 128, 128) and labels.dtype == torch.int64
    want_parsing, _ = _eager(weights, x.float())
    assert float((labels == want_parsing.argmax(1)).float().mean()) > 0.99


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_ort)])
def test_predict_runs_the_exported_file_like_the_weights(weights: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"m.{fmt}"
    args = ["export", weights, "--format", fmt, "--out", out] + (["--dynamic-batch"] if fmt == "onnx" else [])
    assert run_cli(*args).exit_code == 0
    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(picture)
    for name, w in (("pt", weights), ("x", out)):
        result = run_cli("predict", picture, "--weights", w, "--out", tmp_path / f"{name}.png", "--pose",
                         tmp_path / f"{name}.json", "-q")
        assert result.exit_code == 0, result.output
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("pt", "x"))
    assert a.shape == (90, 60) and (a == b).mean() > 0.99
    ja, jb = (json.loads((tmp_path / f"{n}.json").read_text())["joints"] for n in ("pt", "x"))
    assert max(abs(p["x"] - q["x"]) + abs(p["y"] - q["y"]) for p, q in zip(ja, jb)) <= 2.0


def test_export_errors_are_one_line(weights: Path, tmp_path: Path) -> None:
    bad = run_cli("export", weights, "--format", "tflite")
    assert bad.exit_code == 2 and "torchscript or onnx" in bad.output
    half = run_cli("export", weights, "--format", "torchscript", "--half")
    assert half.exit_code == 2 and "--device cuda" in half.output
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    from mula_cli.errors import MulaError
    from mula_cli.runtime import load_exported

    with pytest.raises(MulaError):
        load_exported(tmp_path / "junk.onnx")


def test_an_export_that_disagrees_leaves_no_file(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.runtime import ExportedModel

    real = ExportedModel.raw

    def off_by_a_lot(self, image):
        parsing, heat = real(self, image)
        return parsing, heat * 2.0

    monkeypatch.setattr(ExportedModel, "raw", off_by_a_lot)
    out = tmp_path / "m.torchscript"
    result = run_cli("export", weights, "--format", "torchscript", "--out", out)
    assert result.exit_code == 2 and "disagrees" in result.output and "nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary file
    out.write_bytes(b"a good export from before")
    assert run_cli("export", weights, "--format", "torchscript", "--out", out).exit_code == 2
    assert out.read_bytes() == b"a good export from before" and list(tmp_path.iterdir()) == [out]
