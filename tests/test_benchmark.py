"""`mula benchmark`: where results go, what the report says ran, the dynconv benchmark's arithmetic (no GPU
needed), and that the package's benchmarks never reach into the repository's benchmarks/ scripts."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from mula_cli.bench import dynconv as bench
from mula_cli.bench import dynconv_step
from mula_cli.bench.predict import dynconv_paths

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU: the benchmark would run")
def test_without_a_gpu_the_command_is_one_line_exit_2(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("benchmark", "dynconv", "--quick")
    assert result.exit_code == 2, result.output
    assert "needs a CUDA GPU" in result.output and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no result, and no empty run folder either


def test_bytes_and_fmas_of_a_case() -> None:
    case = bench.Case(batch=2, channels=3, size=4, kernel=3, dtype="bf16")
    maps, kernels = 2 * 3 * 4 * 4 * 2, 2 * 3 * 9 * 2  # bf16: 2 bytes an element
    assert case.bytes_moved() == {"forward": 2 * maps + kernels, "backward": 3 * maps + 2 * kernels,
                                  "forward_backward": 5 * maps + 3 * kernels}
    assert case.fmas() == {"forward": 96 * 9, "backward": 2 * 96 * 9, "forward_backward": 3 * 96 * 9}
    assert len(bench.grid(quick=True)) == 4 and len(bench.grid(quick=False)) == 3 * 2 * 2 * 2 * 2


def _row(dtype: str, speedup: float, x_floor: float, batch: int = 16) -> dict:
    _, c, s, k = bench.KEY_CASE
    ms = {name: dict.fromkeys(bench.PASSES, 1.0) for name in bench.IMPLEMENTATIONS}
    ms["grouped"] = dict.fromkeys(bench.PASSES, speedup)
    return {"batch": batch, "channels": c, "size": s, "kernel": k, "dtype": dtype, "ms": ms,
            "speedup_vs_grouped": dict.fromkeys(bench.PASSES, speedup),
            "triton_x_floor": dict.fromkeys(bench.PASSES, x_floor)}


def test_targets_read_the_key_case_and_list_slower_cases() -> None:
    cases = [_row("fp32", 12.0, 2.5), _row("bf16", 8.0, 3.5), _row("fp32", 0.5, 9, batch=8)]
    targets = bench.targets(cases)
    assert targets["speedup_at_least_10x"] == {"fp32": True, "bf16": False}
    assert targets["within_3x_of_floor"] == {"fp32": True, "bf16": False}
    assert len(targets["cases_slower_than_fallback"]) == 3 and all("8x256" in s for s in
                                                                   targets["cases_slower_than_fallback"])


def test_op_share_adds_the_calls_of_a_training_step() -> None:
    b, c, s, k = bench.KEY_CASE
    report = {"cases": [_row("fp32", 3.0, 1.0)],
              "train_step_hg5s": {"op_calls": [[[b, c, s, s], k]] * 4,
                                  "ms": {"triton": {"fp32": 100.0}, "grouped": {"fp32": 109.0}}}}
    share = dynconv_step.op_share(report)
    assert share["fp32"]["op_ms_per_step"] == {"triton": 4.0, "grouped": 12.0}
    assert share["fp32"]["expected_saving_ms"] == 8.0 and share["fp32"]["measured_saving_ms"] == 9.0
    assert "bf16_autocast" not in share  # no bf16 case in the grid: nothing to add up


def test_card_name_is_a_file_name_part() -> None:
    assert bench.card_name({"device": {"name": "NVIDIA H200 (141 GB)"}}) == "nvidia_h200__141_gb"


def _fake_run(seen: dict):
    def run(**kwargs) -> dict:  # what the real one does with `save`: after every case, the report so far
        seen.update(kwargs)
        report = {"device": {"name": "NVIDIA H100 80GB HBM3"}, "cases": []}
        kwargs["save"](report)
        return report

    return run


@pytest.mark.parametrize("flags,sweep", [([], True), (["--quick"], False), (["--quick", "--sweep"], True),
                                         (["--no-sweep"], False)])
def test_sweep_is_honoured_with_quick(monkeypatch: pytest.MonkeyPatch, tmp_path, flags, sweep) -> None:
    seen: dict = {}
    monkeypatch.setattr(bench, "run", _fake_run(seen))
    monkeypatch.setattr(bench, "print_summary", lambda report: None)
    result = run_cli("benchmark", "dynconv", *flags, "--out", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert seen["sweep"] is sweep and seen["quick"] is ("--quick" in flags)


def test_dynconv_results_go_to_a_new_run_folder_or_to_out(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(bench, "run", _fake_run({}))
    monkeypatch.setattr(bench, "print_summary", lambda report: None)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = run_cli("benchmark", "dynconv", "--quick")
        assert result.exit_code == 0, result.output
    first = Path("runs/benchmark/exp/dynconv_nvidia_h100_80gb_hbm3.json")
    assert first.is_file() and Path("runs/benchmark/exp2", first.name).is_file()
    assert f"wrote {Path('runs/benchmark/exp2', first.name)}" in result.output
    result = run_cli("benchmark", "dynconv", "--project", "elsewhere", "--name", "h100")
    assert Path("elsewhere/h100", first.name).is_file(), result.output
    result = run_cli("benchmark", "dynconv", "--out", "mine.json")
    assert Path("mine.json").is_file() and "wrote mine.json" in result.output
    assert not Path("benchmarks").exists()


PREDICT = ("benchmark", "predict", "--model", "hg-tiny", "--batches", "1", "--repeats", "1", "--device", "cpu")


def test_predict_results_go_to_a_run_folder_and_say_what_ran(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli(*PREDICT)
    assert result.exit_code == 0, result.output
    written = Path("runs/benchmark/exp/predict_cpu.json")
    assert f"wrote {written}" in result.output and not Path("benchmarks").exists()
    report = json.loads(written.read_text())
    # on the CPU, auto runs the grouped convolution for the eager model's NCHW tensors; never Triton
    assert report["dynconv"].startswith("grouped convolution;") and "Triton" not in report["dynconv"]
    assert "MULA_DYNCONV=auto on cpu" in report["dynconv"] and "grouped-convolution dynconv" not in report["what"]
    assert f"dynamic convolution: {report['dynconv']}" in " ".join(result.output.split())


def test_predict_results_go_to_out(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    from mula_cli.ops import dynconv

    monkeypatch.setenv("MULA_DYNCONV", "grouped")
    dynconv.set_dispatch_mode()  # read the variable again (it is read once)
    result = run_cli(*PREDICT, "--out", "sub/p.json")
    assert result.exit_code == 0, result.output
    assert "wrote sub/p.json" in result.output and not Path("runs").exists()
    assert json.loads(Path("sub/p.json").read_text())["dynconv"] == "grouped convolution (MULA_DYNCONV=grouped)"


def test_the_path_on_cuda_is_read_off_the_dispatch_verdicts() -> None:
    from mula_cli.ops import dynconv

    cuda = torch.device("cuda", 0)
    dynconv.set_dispatch_mode("auto")
    assert dynconv_paths("cuda") == "grouped convolution (MULA_DYNCONV=auto: the Triton kernels took no case on cuda)"
    dynconv._state.verdicts[(7, "contiguous", torch.float32, cuda)] = None
    assert dynconv_paths("cuda") == "Triton operator for 7x7 contiguous float32 (MULA_DYNCONV=auto on cuda)"
    dynconv._state.verdicts[(7, "channels_last", torch.bfloat16, cuda)] = "CompilationError: at 12:8"
    assert dynconv_paths("cuda") == ("Triton operator for 7x7 contiguous float32; grouped convolution for 7x7 "
                                     "channels_last bfloat16 (auto fell back: CompilationError: at 12:8) "
                                     "(MULA_DYNCONV=auto on cuda)")
    dynconv.set_dispatch_mode("triton")
    assert dynconv_paths("cuda") == "Triton operator (MULA_DYNCONV=triton)"


def _benchmark_scripts() -> set[str]:
    return {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {"benchmarks"}


def test_no_library_module_imports_the_repositorys_benchmarks() -> None:
    scripts, offences = _benchmark_scripts(), []
    assert {"device_check", "dynconv_cuda"} <= scripts
    for path in sorted((ROOT / "mula_cli").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offences += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                         if n.split(".")[0] in scripts]
            # sys.path.insert(...) / sys.path.append(...) / sys.path = ..., and loading a file by path
            text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Assign, ast.AugAssign)) else ""
            if "sys.path" in text.split("(")[0] or "spec_from_file_location" in text or "import_module" in text:
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno} {text[:80]}")
    assert offences == []
