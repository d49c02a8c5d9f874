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


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights whose activations stay in float16's range, as trained ones do."""
    from mula_cli.bench.predict import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("w") / "tiny.pt", "hg-tiny", seed=2)


def _eager(weights: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from mula_cli.deploy.export import ExportWrapper
    from mula_cli.model.weights import load_weights

    model, _, _ = load_weights(weights)
    with torch.no_grad():
        return ExportWrapper(model).eval()(x)


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_ort)])
def test_export_round_trip_at_batch_1_and_3(weights: Path, tmp_path: Path, fmt: str) -> None:
    from mula_cli.inference.runtime import load_exported

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
                         tmp_path / f"{name}.json", "--precision", "fp32", "-q")  # like for like: exported is fp32
        assert result.exit_code == 0, result.output
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("pt", "x"))
    assert a.shape == (90, 60) and (a == b).mean() > 0.99
    ja, jb = (json.loads((tmp_path / f"{n}.json").read_text())["joints"] for n in ("pt", "x"))
    assert max(abs(p["x"] - q["x"]) + abs(p["y"] - q["y"]) for p, q in zip(ja, jb)) <= 2.0


def test_export_errors_are_one_line(weights: Path, tmp_path: Path) -> None:
    bad = run_cli("export", weights, "--format", "tflite")
    assert bad.exit_code == 2 and "torchscript or onnx" in bad.output
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    from mula_cli.inference.runtime import load_exported
    from mula_cli.utils.errors import MulaError

    with pytest.raises(MulaError):
        load_exported(tmp_path / "junk.onnx")


def test_an_export_that_disagrees_leaves_no_file(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.inference.runtime import ExportedModel

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


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=needs_ort)])
def test_half_export_runs_and_checks_on_the_cpu(trained_like: Path, tmp_path: Path, fmt: str) -> None:
    """float16 is not a GPU privilege: the CPU traces, runs and checks it, so CI walks export --half."""
    from mula_cli.inference.runtime import load_exported

    weights = trained_like
    out = tmp_path / f"h.{fmt}"
    result = run_cli("export", weights, "--format", fmt, "--half", "--device", "cpu", "--dynamic-batch", "--out", out)
    assert result.exit_code == 0, result.output
    exported = load_exported(out)
    x = torch.randint(0, 256, (2, 3, 128, 128), generator=torch.Generator().manual_seed(5)).float()
    with torch.no_grad():
        parsing, heat = exported.raw(x)
    assert exported.dtype == torch.float16 and heat.dtype == torch.float16
    want_parsing, want_heat = _eager(weights, x)
    assert float((parsing.argmax(1) == want_parsing.argmax(1)).float().mean()) > 0.95
    assert float((heat.float() - want_heat).abs().max()) < 0.05 * float(want_heat.abs().max())


def test_half_export_is_checked_against_the_same_operations(trained_like: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager model's own dynamic convolution (Triton on a GPU, accumulating in float32) is not what the
    exported graph runs (shift-and-add, rounded at every tap): the check must compare the export with the
    eager model in the export's form, or a correct file is refused. Stand-in: an eager kernel whose
    results differ by 5% (any difference the export form does not share)."""
    from mula_cli.ops import dynconv

    real = dynconv._dispatch
    monkeypatch.setattr(dynconv, "_dispatch", lambda x, w: real(x, w) * 1.05)
    result = run_cli("export", trained_like, "--format", "torchscript", "--half", "--out", tmp_path / "h.torchscript")
    assert result.exit_code == 0, result.output
    assert "largest difference 0.00e+00" in " ".join(result.output.split())  # the same operations, exactly


def test_half_export_that_overflows_is_refused_in_one_line(weights: Path, tmp_path: Path) -> None:
    """These random weights amplify every stage: float16 overflows (a NaN once compared as no difference)."""
    result = run_cli("export", weights, "--format", "torchscript", "--half", "--out", tmp_path / "h.torchscript")
    assert result.exit_code == 2 and "float16 overflows" in result.output, result.output
    assert list(tmp_path.iterdir()) == []
