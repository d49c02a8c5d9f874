"""`mula benchmark dynconv`: the thin command over benchmarks/, and the benchmark's arithmetic (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli


@pytest.fixture(scope="module")
def bench():
    from mula_cli.commands.benchmark import load_benchmark

    return load_benchmark("dynconv_bench")


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU: the benchmark would run")
def test_without_a_gpu_the_command_is_one_line_exit_2(tmp_path) -> None:
    result = run_cli("benchmark", "dynconv", "--quick", "--out", tmp_path / "b.json")
    assert result.exit_code == 2, result.output
    assert "needs a CUDA GPU" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_bytes_and_fmas_of_a_case(bench) -> None:
    case = bench.Case(batch=2, channels=3, size=4, kernel=3, dtype="bf16")
    maps, kernels = 2 * 3 * 4 * 4 * 2, 2 * 3 * 9 * 2  # bf16: 2 bytes an element
    assert case.bytes_moved() == {"forward": 2 * maps + kernels, "backward": 3 * maps + 2 * kernels,
                                  "forward_backward": 5 * maps + 3 * kernels}
    assert case.fmas() == {"forward": 96 * 9, "backward": 2 * 96 * 9, "forward_backward": 3 * 96 * 9}
    assert len(bench.grid(quick=True)) == 4 and len(bench.grid(quick=False)) == 3 * 2 * 2 * 2 * 2


def _row(bench, dtype: str, speedup: float, x_floor: float, batch: int = 16) -> dict:
    _, c, s, k = bench.KEY_CASE
    ms = {name: dict.fromkeys(bench.PASSES, 1.0) for name in bench.IMPLEMENTATIONS}
    ms["grouped"] = dict.fromkeys(bench.PASSES, speedup)
    return {"batch": batch, "channels": c, "size": s, "kernel": k, "dtype": dtype, "ms": ms,
            "speedup_vs_grouped": dict.fromkeys(bench.PASSES, speedup),
            "triton_x_floor": dict.fromkeys(bench.PASSES, x_floor)}


def test_targets_read_the_key_case_and_list_slower_cases(bench) -> None:
    cases = [_row(bench, "fp32", 12.0, 2.5), _row(bench, "bf16", 8.0, 3.5), _row(bench, "fp32", 0.5, 9, batch=8)]
    targets = bench.targets(cases)
    assert targets["speedup_at_least_10x"] == {"fp32": True, "bf16": False}
    assert targets["within_3x_of_floor"] == {"fp32": True, "bf16": False}
    assert len(targets["cases_slower_than_fallback"]) == 3 and all("8x256" in s for s in
                                                                   targets["cases_slower_than_fallback"])


def test_op_share_adds_the_calls_of_a_training_step(bench) -> None:
    b, c, s, k = bench.KEY_CASE
    report = {"cases": [_row(bench, "fp32", 3.0, 1.0)],
              "train_step_hg5s": {"op_calls": [[[b, c, s, s], k]] * 4,
                                  "ms": {"triton": {"fp32": 100.0}, "grouped": {"fp32": 109.0}}}}
    from mula_cli.commands.benchmark import load_benchmark

    share = load_benchmark("dynconv_bench_step").op_share(report)
    assert share["fp32"]["op_ms_per_step"] == {"triton": 4.0, "grouped": 12.0}
    assert share["fp32"]["expected_saving_ms"] == 8.0 and share["fp32"]["measured_saving_ms"] == 9.0
    assert "bf16_autocast" not in share  # no bf16 case in the grid: nothing to add up


def test_default_output_names_the_card(bench) -> None:
    assert bench.default_output({"device": {"name": "NVIDIA H200 (141 GB)"}}).name == "dynconv_nvidia_h200__141_gb.json"


@pytest.mark.parametrize("flags,sweep", [([], True), (["--quick"], False), (["--quick", "--sweep"], True),
                                         (["--no-sweep"], False)])
def test_sweep_is_honoured_with_quick(bench, monkeypatch: pytest.MonkeyPatch, tmp_path, flags, sweep) -> None:
    seen = {}
    monkeypatch.setattr(bench, "run", lambda **kwargs: seen.update(kwargs) or {"device": {"name": "x"}})
    monkeypatch.setattr(bench, "print_summary", lambda report: None)
    result = run_cli("benchmark", "dynconv", *flags, "--out", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert seen["sweep"] is sweep and seen["quick"] is ("--quick" in flags)
