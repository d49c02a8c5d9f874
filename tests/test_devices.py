"""``--device``: one check for every command and the API; ``cuda:N`` honoured, anything else one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mula_cli.utils.devices import check_device_option, pick_device
from mula_cli.utils.errors import MulaError

from conftest import run_cli


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """What pick_device sees on a machine with two CUDA GPUs (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "CUDA:12", " cpu "])
def test_device_values_that_are_accepted(value: str) -> None:
    assert check_device_option(value) == value.strip().lower()


@pytest.mark.parametrize("value", ["foo", "gpu", "cuda:", "cuda:x", "cuda:-1", "mps0", ""])
def test_anything_else_is_a_user_error_naming_the_option(value: str) -> None:
    with pytest.raises(MulaError, match=r"--device .* is not a device; use auto, cpu, cuda or cuda:N"):
        check_device_option(value)


def test_cuda_n_is_honoured(two_gpus) -> None:
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("auto", local_rank=3) == torch.device("cuda", 1)
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(MulaError, match="cuda:2: PyTorch sees 2 CUDA GPU"):
        pick_device("cuda:2")


def test_without_a_gpu_auto_is_the_cpu_and_cuda_an_error(no_gpu) -> None:
    assert pick_device("auto") == torch.device("cpu")
    for value in ("cuda", "cuda:0"):
        with pytest.raises(MulaError, match="sees no CUDA GPU"):
            pick_device(value)


def test_torchrun_refuses_one_named_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.train.distributed import setup_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MulaError, match="LOCAL_RANK"):
        setup_world("cuda:1")


def _one_line_exit_2(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for text in expected:
        assert text in result.output, result.output


def test_every_command_refuses_a_bad_device(tiny_weights: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(photo)
    _one_line_exit_2(run_cli("predict", photo, "--weights", tiny_weights, "--device", "foo",
                             "--out-dir", tmp_path / "p"), "--device 'foo'")
    assert not (tmp_path / "p").exists()
    _one_line_exit_2(run_cli("evaluate", tiny_weights, "--device", "foo"), "--device 'foo'")
    _one_line_exit_2(run_cli("export", tiny_weights, "--format", "torchscript", "--device", "foo",
                             "--out", tmp_path / "m.torchscript"), "--device 'foo'")
    _one_line_exit_2(run_cli("train", "--device", "foo"), "--device 'foo'")
    _one_line_exit_2(run_cli("demo", "--quick", "--device", "gpu", "--out", tmp_path / "demo"), "--device 'gpu'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
def test_asking_for_a_missing_gpu_is_one_line_too(tiny_weights: Path, tmp_path: Path) -> None:
    _one_line_exit_2(run_cli("export", tiny_weights, "--format", "torchscript", "--device", "cuda",
                             "--out", tmp_path / "m.torchscript"), "sees no CUDA GPU")
    with pytest.raises(MulaError, match="sees no CUDA GPU"):
        from mula_cli import Predictor

        Predictor(tiny_weights, device="cuda:0")


def test_one_amp_rule_for_training_and_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.utils.devices import amp_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    # asked for, bf16 and fp16 run on the CPU too (CPU autocast); auto stays full precision there
    assert [amp_dtype(mode, cpu) for mode in ("auto", "off", "bf16", "fp16")] == [None, None, torch.bfloat16,
                                                                                 torch.float16]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert (amp_dtype("auto", gpu), amp_dtype("off", gpu), amp_dtype("fp16", gpu)) == (torch.bfloat16, None,
                                                                                       torch.float16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype("auto", gpu) is None and amp_dtype("bf16", gpu) == torch.bfloat16
    with pytest.raises(MulaError, match="--amp 'half' is unknown"):
        amp_dtype("half", cpu)


def test_autocast_is_one_rule_and_none_switches_it_off() -> None:
    from mula_cli.utils.devices import autocast, precision_name

    x, w = torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.nn.functional.conv2d(x, w).dtype == torch.bfloat16
        with autocast("cpu", None):  # a full-precision region inside an autocast one
            assert torch.nn.functional.conv2d(x, w).dtype == torch.float32
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["float32", "bfloat16", "float16"]


def test_evaluate_measures_in_fp32_unless_asked(tiny_weights: Path) -> None:
    import inspect

    from mula_cli.commands.evaluate import evaluate

    assert inspect.signature(evaluate).parameters["amp"].default.default == "off"
    _one_line_exit_2(run_cli("evaluate", tiny_weights, "--amp", "half"), "--amp 'half' is unknown")


def test_precision_auto_is_bf16_only_where_the_device_has_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.utils import devices

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not devices.native_bf16(cpu) and devices.prediction_precision("auto", cpu) == "fp32"
    assert devices.prediction_precision("bf16", cpu) == "bf16"  # asked for: taken, emulated or not
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert devices.native_bf16(cpu) and devices.prediction_precision("auto", cpu) == "bf16"
    assert devices.prediction_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(devices, "AUTO_BF16", False)  # what the accuracy check would set if bf16 failed it
    assert devices.prediction_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.native_bf16(torch.device("cuda"))
    with pytest.raises(MulaError, match="--precision 'fp16'"):
        devices.prediction_precision("fp16", cpu)


def test_predict_takes_precision_and_refuses_a_bad_one(tiny_weights: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.inference.predictor import Predictor

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert Predictor(tiny_weights, "cpu").path.startswith("fast float32")  # auto without native bf16
    predictor = Predictor(tiny_weights, "cpu", precision="bf16")
    assert predictor.precision == "bf16" and predictor.path.startswith("fast bfloat16")
    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(picture)
    bad = run_cli("predict", picture, "--weights", tiny_weights, "--precision", "half", "--out", tmp_path / "x.png")
    assert bad.exit_code == 2 and "--precision 'half'" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x.png").exists()
