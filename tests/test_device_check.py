"""benchmarks/device_check.{py,sh}: a step passes only on what it must show, the script's exit status is the
check's, and the CPU dry run works end to end (clean, and with a crash planted)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("device_check", REPO / "benchmarks" / "device_check.py")
dc = sys.modules["device_check"] = importlib.util.module_from_spec(_spec)  # dataclasses look their module up
_spec.loader.exec_module(dc)


def _expect(name: str, plan=dc.GPU, out: Path = Path("/out")) -> dc.Expect:
    return next(s.expect for s in dc.steps(plan, Path("/work"), out, "nvidia_h100") if s.name == name)


def test_every_step_has_a_cap_and_the_caps_fit_eight_minutes() -> None:
    for plan in (dc.GPU, dc.DRY_RUN):
        assert [s.name for s in dc.steps(plan, Path("/w"), Path("/o"), "x")] == list(dc.BUDGET_S)
    assert sum(dc.BUDGET_S.values()) <= dc.TOTAL_BUDGET_S <= 470
    table = dict(re.findall(r"^    (\w+) +(\d+)  ", dc.__doc__, re.M))  # the docstring's table says the same
    assert {k: int(v) for k, v in table.items()} == dc.BUDGET_S
    assert f"caps: {sum(dc.BUDGET_S.values())} s in all" in dc.__doc__
    assert "tests/test_gpu_flow.py" in " ".join(dc.steps(dc.GPU, Path("/w"), Path("/o"), "x")[0].args).replace(
        str(REPO) + "/", "")


CRASH = """training hg-2s (mula, 2 stages) on synthetic (320 train images) for 6 epochs, batch 16 on 1 x cuda
epoch 1: loss 0.1273 (pose 0.07628, parsing 5.104), lr 0.0025, 410.5 img/s
Traceback (most recent call last):
  File "/work/main/mula_cli/evaluation.py", line 78, in evaluate_model
    coords, scores = pred.joints.cpu().numpy(), pred.scores.cpu().numpy()
TypeError: Got unsupported ScalarType BFloat16
"""
SAVED = ("saved runs/default/weights/last.pt (epoch 3, batch 5); continue with: mula train --resume "
         "runs/default/weights/last.pt\nerror: training interrupted; the run can be resumed\n")
LAST = {"runs/default/weights/last.pt": 1}


def test_a_training_crash_before_the_interrupt_is_a_failure() -> None:
    """The review's scenario: the run crashes (exit 1, as Python's uncaught exception) before the line the
    Ctrl-C waits for; the old check expected exit 1 and recorded it ok."""
    expect = _expect("train_interrupted")
    for interrupted in (False, True):  # the Ctrl-C may or may not have gone out before the crash
        status, reason = dc.judge(expect, 1, CRASH, interrupted, LAST)
        assert status == "failed" and "Traceback" in reason
    assert dc.judge(expect, 1, CRASH.split("Traceback")[0], True, LAST) == ("failed", "exit 1, expected 130")
    assert dc.last_error_line(CRASH) == "TypeError: Got unsupported ScalarType BFloat16"
    # our own Ctrl-C landing in the crash adds an exit-time traceback: the crash's line is still the one named
    assert dc.last_error_line(CRASH + "Exception ignored in atexit callback: <bound method>\nTraceback (most recent "
                              "call last):\n  File x\nKeyboardInterrupt: \n") == "TypeError: Got unsupported ScalarType BFloat16"
    assert dc.last_error_line("a\nerror: weights file x does not exist\n") == "error: weights file x does not exist"


def test_an_interrupted_run_must_show_the_resume_line_and_the_sent_interrupt() -> None:
    expect = _expect("train_interrupted")
    log = CRASH.split("Traceback")[0] + "epoch 2: loss 0.05\n" + SAVED
    assert dc.judge(expect, 130, log, True, LAST) == ("ok", None)
    assert dc.judge(expect, 130, log.replace(" (epoch 3", "\n(epoch 3"), True, LAST)[0] == "ok"  # wrapped
    assert dc.judge(expect, 130, log, False, LAST)[1].startswith("the Ctrl-C was never sent")
    assert dc.judge(expect, 130, log.replace("continue with", "continue"), True, LAST)[1].startswith("the log lacks")
    assert dc.judge(expect, 130, log, True, {})[1].startswith("missing runs/default/weights/last.pt")
    assert dc.judge(expect, 0, log, True, LAST) == ("failed", "exit 0, expected 130")  # ran to the end


def test_steps_are_judged_on_what_they_show() -> None:
    resumed = _expect("train_resumed")
    best = {"runs/default/weights/best.pt": 1}
    done = "resuming at epoch 3, batch 6 hg-2s\nepoch 6: loss 0.04 (pose 0.02), lr 1e-4, 900.1 img/s; val mIoU 6.85, PCKh 1.92" \
           "\nfinished 6 epochs; results in runs/default (best.pt: score 0.04)\n"
    assert dc.judge(resumed, 0, done, found=best) == ("ok", None)
    assert dc.numbers(resumed, done) == {"loss": "0.04", "img/s": "900.1", "mIoU": "6.85", "PCKh": "1.92"}
    assert dc.judge(resumed, 0, done.replace("6 epochs", "4 epochs"), found=best)[0] == "failed"
    evaluate = _expect("evaluate_fp32")
    metrics = '{\n "parsing": {\n  "miou": 6.850931815719412,\n },\n "pose": {\n  "pckh": 1.92,\n }\n}\n'
    assert dc.judge(evaluate, 0, metrics) == ("ok", None) and dc.numbers(evaluate, metrics)["miou"] == "6.851"
    assert dc.judge(evaluate, 0, metrics.replace("1.92", "null"))[1] == 'the log lacks /"pckh":\\s*-?\\d/'
    tests = _expect("cuda_tests")
    assert dc.judge(tests, 0, "....s.\n212 passed, 3 skipped in 61.2s\n") == ("ok", None)
    assert dc.judge(tests, 1, "2 failed, 210 passed in 60.0s\n")[0] == "failed"
    assert dc.judge(_expect("cuda_tests", dc.DRY_RUN), 0, "tests/test_dynconv.py::a\n1 test collected\n")[1] \
        .startswith("the log lacks /^tests/test_gpu_paths")
    fell_back = "dynamic convolution: grouped convolution for 7x7 contiguous float32 (auto fell back: X) (...)\n"
    wrote = {"/out/predict_nvidia_h100.json": 1}
    assert dc.judge(_expect("predict_benchmark"), 0, f"{fell_back}wrote /out/predict_nvidia_h100.json\n",
                    found=wrote)[1] == "the log shows /auto fell back/"
    compiled, last = _expect("train_compile"), {"runs/compiled/weights/last.pt": 1}
    epoch = "epoch 1: loss 0.1 (pose 0.02), lr 1e-4, 90.1 img/s; val mIoU 6.85, PCKh 1.92\nfinished 1 epochs; results\n"
    assert dc.judge(compiled, 0, epoch, found=last) == ("ok", None)
    gave_way = "--compile: the compiled training step failed on its first run (UnboundLocalError: x); training on\n"
    assert dc.judge(compiled, 0, gave_way + epoch, found=last)[0] == "failed"  # finished, but not compiled


def test_a_benchmark_cut_by_its_cap_is_partial_only_with_its_json() -> None:
    bench, pattern = _expect("benchmark"), "/out/dynconv_*.json"
    assert dc.judge(bench, None, "16 256 64^2 h=3 fp32: fwd+bwd ...\n", found={pattern: 1})[0] == "partial"
    assert dc.judge(bench, None, "copy 3000 GB/s\n", found={pattern: 0})[0] == "failed"
    assert dc.judge(_expect("train_compile"), None, "epoch 1:", found={"runs/compiled/weights/last.pt": 1}) == \
        ("failed", "cut by its time budget")
    assert dc.judge(bench, None, "Traceback (most recent call last):\n", found={pattern: 1})[0] == "failed"


def test_same_weights_compares_bits(tmp_path: Path) -> None:
    state = {"a": torch.tensor([0.0, 1.5]), "n": torch.tensor(3)}
    paths = [tmp_path / f"{i}.pt" for i in range(3)]
    for path, a in zip(paths, ([0.0, 1.5], [0.0, 1.5], [-0.0, 1.5])):
        torch.save({"state_dict": {**state, "a": torch.tensor(a)}}, path)
    assert dc.same_weights(paths[0], paths[1]) is None
    assert dc.same_weights(paths[0], paths[2]) == "1 of 2 tensors differ (first: a)"  # -0.0 == 0.0, but not bitwise
    assert dc.same_weights(paths[0], tmp_path / "missing.pt") == "a run's last.pt was not written"


def test_the_verdict_has_a_line_per_step_and_names_the_failures() -> None:
    steps = [{"name": "data", "status": "ok", "seconds": 3.0, "numbers": {"images": "356"}},
             {"name": "train_resumed", "status": "failed", "seconds": 9.5, "reason": "exit 1, expected 0; last error: X"},
             {"name": "predict", "status": "skipped", "seconds": 0, "reason": "2 s left before the deadline"},
             {"name": "benchmark", "status": "partial", "seconds": 40.1}]
    lines = dc.verdict({"ok": False, "steps": steps})
    assert lines[0] == "device check FAILED: train_resumed, predict (partial: benchmark)" and len(lines) == 5
    assert lines[1].split() == ["ok", "data", "3.0", "s", "images=356"]
    assert lines[2].endswith("-- exit 1, expected 0; last error: X")
    assert dc.verdict({"ok": True, "steps": steps[3:]})[0] == "device check passed (partial: benchmark)"


def test_a_step_cut_by_its_cap_is_killed_with_its_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sleeper.py").write_text(
        "import pathlib, subprocess, sys, time\n"
        f"child = subprocess.Popen(['sleep', '60'])\npathlib.Path({str(tmp_path)!r}, 'child').write_text(str(child.pid))\n"
        "print('measured one case', flush=True)\ntime.sleep(60)\n")
    monkeypatch.setattr(dc, "BUDGET_S", {"sleeper": 5})
    out = tmp_path / "out"
    out.mkdir()
    check = dc.Check(out, tmp_path / "work", 60, dataclasses.replace(dc.DRY_RUN, scale=1.0))
    check.env["PYTHONPATH"] = str(tmp_path)
    expect = dc.Expect(partial_if_cut=True, files=((str(tmp_path / "child"), 1),))
    record = check.run(dc.Step("sleeper", ["-m", "sleeper"], expect))
    assert record["status"] == "partial" and record["exit"] == "cut" and 5 <= record["seconds"] < 15
    time.sleep(0.5)
    assert not Path(f"/proc/{int((tmp_path / 'child').read_text())}").exists() or \
        "Z" in Path(f"/proc/{int((tmp_path / 'child').read_text())}/stat").read_text().split()[2]
    report = json.loads((out / "device_check.json").read_text())  # written after the step, not at the end
    assert report["steps"][0]["status"] == "partial" and report["ok"] and report["verdict"][0].endswith("sleeper)")
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "logs.tar.gz"]


def _fake_python(tmp_path: Path, code: int) -> Path:
    fake = tmp_path / "python"
    fake.write_text(f"#!/usr/bin/env bash\nif [[ $1 == benchmarks/device_check.py ]]; then echo step; exit {code}; fi\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("code", [0, 1, 7])
def test_the_shell_script_exits_with_the_checks_status(tmp_path: Path, code: int) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(_fake_python(tmp_path, code))}
    run = subprocess.run(["bash", "benchmarks/device_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == code, run.stdout + run.stderr
    assert f"device check exit: {code}" in (tmp_path / "out" / "device_check.log").read_text()


def _dry_run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **env}
    run = subprocess.run(["bash", "benchmarks/device_check.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    return run, json.loads((out / "device_check.json").read_text()), out


@pytest.mark.slow
def test_the_device_check_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    results = sorted(p.name for p in (REPO / "benchmarks" / "results").iterdir())
    run, report, out = _dry_run(tmp_path)
    steps = {s["name"]: s for s in report["steps"]}
    assert run.returncode == 0, {n: (s["status"], s["reason"]) for n, s in steps.items()}
    assert list(steps) == list(dc.BUDGET_S) and {s["status"] for s in steps.values()} == {"ok"}
    assert report["ok"] and report["verdict"][0] == "device check passed"
    assert steps["train_interrupted"]["interrupted"] and steps["train_interrupted"]["exit"] == 130
    assert [int(r["epoch"]) for r in report["train_default_epochs"]] == [1, 2, 3, 4]
    assert [int(r["epoch"]) for r in report["train_multi_person_epochs"]] == [1]
    assert set(steps["evaluate_multi_person"]["numbers"]) == {"map", "miou"}
    assert "needs a CUDA GPU" in steps["benchmark"]["log_tail"]
    assert steps["predict_benchmark"]["numbers"]["dynconv"].startswith("grouped convolution")
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert {"logs/train_resumed.log", "logs/train_deterministic_repeat.log", "runs/default/metrics.csv"} <= set(names)
    assert json.loads((out / "predict_cpu.json").read_text())["results"]  # the prediction benchmark's report
    # only results in OUT; the work folder (data, caches, runs) was elsewhere, and is gone
    assert sorted(p.name for p in out.iterdir()) == ["device_check.json", "device_check.log", "logs.tar.gz",
                                                     "predict_cpu.json"]
    assert not Path(report["work"]).is_relative_to(out) and not Path(report["work"]).exists()
    log = (out / "device_check.log").read_text()
    assert "device check exit: 0" in log and "\n".join(report["verdict"]) in log
    assert sorted(p.name for p in (REPO / "benchmarks" / "results").iterdir()) == results  # a dry run keeps out


# Imported first by every Python process of the check (it is on PYTHONPATH): after mula_cli.train.engine
# loads, every epoch line is followed by a crash, as C1's bf16 validation did after the "epoch N:" line.
PLANTED = '''
import importlib.abc, importlib.machinery, sys

class Plant(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mula_cli.train.engine":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            log_epoch = module._log_epoch

            def crash(*args, **kwargs):
                log_epoch(*args, **kwargs)
                raise TypeError("Got unsupported ScalarType BFloat16 (planted)")

            module._log_epoch = crash

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Plant())
'''


@pytest.mark.slow
def test_a_planted_crash_fails_every_step_it_reaches(tmp_path: Path) -> None:
    (tmp_path / "plant").mkdir()
    (tmp_path / "plant" / "sitecustomize.py").write_text(PLANTED)
    run, report, out = _dry_run(tmp_path, PYTHONPATH=str(tmp_path / "plant"))
    steps = {s["name"]: s for s in report["steps"]}
    crashed = ["train_interrupted", "train_resumed", "train_multi_person", "train_compile", "train_deterministic",
               "train_deterministic_repeat"]
    assert {n for n, s in steps.items() if s["status"] != "ok"} == set(crashed), {n: s["reason"] for n, s in
                                                                                  steps.items()}
    for name in crashed:  # exit 1; train_interrupted's Ctrl-C may also land in the crash (exit -2): failed either way
        assert steps[name]["status"] == "failed" and steps[name]["reason"].startswith("the log shows /Traceback/")
        assert steps[name]["reason"].endswith("last error: TypeError: Got unsupported ScalarType BFloat16 (planted)")
        assert steps[name]["exit"] in ((1, -2) if name == "train_interrupted" else (1,))
    assert report["ok"] is False and report["verdict"][0] == f"device check FAILED: {', '.join(crashed)}"
    log = (out / "device_check.log").read_text()
    assert run.returncode == 1 and "device check exit: 1" in log and "\n".join(report["verdict"]) in log
