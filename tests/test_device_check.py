"""benchmarks/device_check.sh, dry-run on the CPU: every step's command line works before a GPU's minutes are spent."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_device_check_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    results = sorted(p.name for p in (REPO / "benchmarks" / "results").iterdir())
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "PYTHON": "python"}
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}"
    run = subprocess.run(["bash", "benchmarks/device_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    out = tmp_path / "out"
    report = json.loads((out / "device_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["cuda_tests", "data", "train_interrupted", "train_resumed", "evaluate_fp32", "predict",
                           "export_half", "data_multi_person", "train_multi_person", "evaluate_multi_person",
                           "train_compile", "train_deterministic", "predict_benchmark", "benchmark"]
    assert report["ok"] and all(s["ok"] for s in steps.values()), {n: s.get("exit") for n, s in steps.items()}
    assert steps["train_interrupted"]["interrupted"] and "--resume" in steps["train_interrupted"]["log_tail"]
    assert [int(r["epoch"]) for r in report["train_default_epochs"]] == [1, 2, 3, 4]
    assert [int(r["epoch"]) for r in report["train_multi_person_epochs"]] == [1, 2]
    assert '"map"' in steps["evaluate_multi_person"]["log_tail"]
    assert "needs a CUDA GPU" in steps["benchmark"]["log_tail"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/train_resumed.log" in names and "runs/default/metrics.csv" in names
    assert json.loads((out / "predict_cpu.json").read_text())  # the prediction benchmark's report
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.log", "logs.tar.gz",
                                                     "predict_cpu.json"]
    assert "device check exit: 0" in (out / "device_check.log").read_text()
    assert sorted(p.name for p in (REPO / "benchmarks" / "results").iterdir()) == results  # a dry run keeps out
