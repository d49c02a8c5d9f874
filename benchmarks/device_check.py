"""The GPU path of mula, proved in one run of at most 8 minutes on one H100/H200 (``device_check.sh``).

Steps, most important first, each cut at a shared deadline:

1. the CUDA tests: every kernel compiled and checked against the grouped convolution, MULA_DYNCONV=auto
   falling back on a real compiler error, validation reducing on the NCCL + gloo process group;
2. synthetic data (``mula prepare synthetic``);
3. ``mula train`` with the defaults on CUDA (bf16, channels_last, device augmentation, auto dispatch):
   validation every other epoch, Ctrl-C in the middle, then ``--resume`` to the end;
4. ``mula evaluate`` (fp32), ``mula predict`` and ``mula export --half`` (checked after writing);
   then multi-person: synthetic crowds, ``mula train`` with the partition branch and ``--lovasz 1``,
   ``mula evaluate`` (mAP);
5. ``mula train --compile``, and ``--deterministic`` (strict: it either runs or names the operation
   without a deterministic kernel);
6. ``mula benchmark predict``: eager float32 against the fast path (and bf16) at batch 1 and 8;
7. ``mula benchmark dynconv`` with whatever time is left (it saves after every case).

What it saw goes to ``OUT``: ``device_check.json`` (every step's command, exit code, seconds, the
numbers read off its outputs, the end of its log), ``device_check.log``, ``logs.tar.gz`` (every
step's log, the pytest report, the runs' metrics and configs) and the two benchmarks' JSON; the summary
and the benchmark JSON files are also copied to ``benchmarks/results/``.

``--dry-run`` runs the same steps on the CPU at toy size (a tiny model, a few images, the CUDA tests
only collected, torch.compile switched off, no --half, the benchmark's no-GPU refusal expected), so
that a typo is found here and not in the GPU's minutes; tests/test_device_check.py runs it.

    python benchmarks/device_check.py --out OUT [--deadline SECONDS] [--dry-run]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FALLBACK = "TritonFallbackWarning"  # in a log: the Triton path failed on this GPU and auto fell back


@dataclass(frozen=True)
class Plan:
    """Sizes and switches of one run: the GPU check, or its CPU dry run."""

    gpu: bool
    model_args: list[str]
    train_images: int
    val_images: int
    batch: int
    workers: int
    epochs: int
    interrupt_after: str  # the line after which Ctrl-C is sent: well before the run's end
    test_args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_gpu(cls) -> Plan:
        # hg-2s: both tasks, adaptation in every stage, and a compile of well under a minute
        return cls(gpu=True, model_args=["--model", "hg-2s"], train_images=640, val_images=48, batch=16, workers=8,
                   epochs=4, interrupt_after="epoch 2:", test_args=["-m", "not slow", "-rs"])

    @classmethod
    def dry_run(cls) -> Plan:
        return cls(gpu=False, model_args=["--model", "hg-tiny", "--width", "16", "--device", "cpu"], train_images=16,
                   val_images=4, batch=4, workers=0, epochs=4, interrupt_after="epoch 1:", test_args=["--collect-only"],
                   env={"OMP_NUM_THREADS": "1"})


class Check:
    """Runs steps against a deadline and keeps the report (saved after every step)."""

    def __init__(self, out: Path, deadline_s: float, plan: Plan) -> None:
        self.out, self.plan = out, plan
        self.work = out / "work"
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.end = time.monotonic() + deadline_s
        self.report: dict[str, Any] = {"dry_run": not plan.gpu, "machine": _machine(), "steps": []}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **plan.env}

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, name: str, args: list[str], cap_s: float, *, expect: int = 0, interrupt_after: str | None = None,
            env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run ``python -m mula_cli ARGS`` (or ``python ARGS`` when the first is a path or ``-m``), log it,
        and record it; with ``interrupt_after``, send SIGINT once a stdout line starts with that text."""
        timeout = min(cap_s, self.left())
        step: dict[str, Any] = {"name": name, "command": args, "expected_exit": expect}
        if timeout < 5:
            step.update(skipped="too close to the deadline")
            return self._record(step)
        command = [sys.executable, *(args if args[0] == "-m" or args[0].endswith(".py") else
                                     ["-m", "mula_cli", *args])]
        log = self.logs / f"{name}.log"
        start = time.monotonic()
        interrupted = False
        with log.open("w") as sink:
            proc = subprocess.Popen(command, cwd=self.work, env={**self.env, **(env or {})}, text=True,
                                    stdout=sink, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                time.sleep(0.2)
                if time.monotonic() - start > timeout:
                    proc.kill()
                    proc.wait()
                    break
                if interrupt_after and not interrupted and any(
                        line.startswith(interrupt_after) for line in log.read_text(errors="replace").splitlines()):
                    proc.send_signal(signal.SIGINT)  # Ctrl-C: finish the step, save, print the resume command
                    interrupted = True
        step["exit"] = "timeout" if proc.returncode is None or time.monotonic() - start > timeout else proc.returncode
        step["interrupted"] = interrupted if interrupt_after else None
        text = log.read_text(errors="replace")
        step.update(seconds=round(time.monotonic() - start, 1), ok=step["exit"] == expect,
                    triton_fallback=FALLBACK in text, log_tail=text[-1500:])
        return self._record(step)

    def _record(self, step: dict[str, Any]) -> dict[str, Any]:
        self.report["steps"].append(step)
        print(f"== {step['name']}: exit {step.get('exit', '-')} (expected {step['expected_exit']}), "
              f"{step.get('seconds', 0)} s{' ' + step['skipped'] if 'skipped' in step else ''}", flush=True)
        self.save()
        return step

    def save(self) -> None:
        self.report["ok"] = all(s.get("ok", False) for s in self.report["steps"])
        (self.out / "device_check.json").write_text(json.dumps(self.report, indent=1) + "\n")


def _machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def _epochs(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        keep = ("epoch", "loss", "images_per_s", "val_miou", "val_pckh")
        return [{k: row[k] for k in keep if row.get(k)} for row in csv.DictReader(f)]


def check(out: Path, deadline_s: float, plan: Plan) -> dict[str, Any]:
    c = Check(out, deadline_s, plan)
    p = plan
    cache, runs = "synthetic.h5", "runs"
    train = ["train", "--data", cache, *p.model_args, "--batch-size", str(p.batch), "--workers", str(p.workers),
             "--project", runs, "--log-every", "5"]

    tests = [str(REPO / "tests" / "test_dynconv.py"), str(REPO / "tests" / "test_gpu_paths.py"),
             str(REPO / "tests" / "test_partition.py")]
    xdist = ["-n", "8"] if p.gpu and _has("xdist") else []
    c.run("cuda_tests", ["-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", *p.test_args, *xdist,
                         f"--junitxml={c.logs / 'pytest_cuda.xml'}"], 150)
    c.run("data", ["prepare", "synthetic", "tree", "--train", str(p.train_images), "--val", str(p.val_images),
                   "--test", "4", "--out", cache, "-q"], 60)

    # the defaults on CUDA: bf16, channels_last, device augmentation, MULA_DYNCONV=auto
    c.run("train_interrupted", [*train, "--epochs", str(p.epochs), "--val-every", "2", "--name", "default"], 150,
          expect=1, interrupt_after=p.interrupt_after)
    c.run("train_resumed", ["train", "--resume", f"{runs}/default/weights/last.pt", "--workers", str(p.workers)], 120)
    default = c.work / runs / "default"
    c.report["train_default_epochs"] = _epochs(default)
    best = f"{runs}/default/weights/best.pt"
    c.run("evaluate_fp32", ["evaluate", best, "--data", cache, "--workers", str(p.workers), "--json",
                            *([] if p.gpu else ["--device", "cpu"])], 60)
    c.run("predict", ["predict", "tree/Testing_images/testing_images", "--weights", best, "--out-dir", "predictions",
                      "-q", *([] if p.gpu else ["--device", "cpu"])], 60)
    export = ["--half", "--device", "cuda"] if p.gpu else ["--device", "cpu"]
    c.run("export_half", ["export", best, "--format", "torchscript", *export, "--out", "model.torchscript"], 90)

    # multi-person: the partition branch's targets, loss and grouping on the device (bf16, device augmentation),
    # with the Lovasz term (its sort and gather on the device)
    c.run("data_multi_person", ["prepare", "synthetic", "tree_mp", "--multi-person", "--train", str(p.train_images),
                                "--val", str(p.val_images), "--out", "multi.h5", "-q"], 60)
    c.run("train_multi_person", ["train", "--data", "multi.h5", *p.model_args, "--batch-size", str(p.batch),
                                 "--workers", str(p.workers), "--project", runs, "--log-every", "5", "--epochs", "2",
                                 "--val-every", "2", "--name", "multi", "--lovasz", "1"], 90)
    c.report["train_multi_person_epochs"] = _epochs(c.work / runs / "multi")
    c.run("evaluate_multi_person", ["evaluate", f"{runs}/multi/weights/last.pt", "--data", "multi.h5", "--workers",
                                    str(p.workers), "--json", *([] if p.gpu else ["--device", "cpu"])], 60)

    # a dry run cannot wait for Inductor on two cores: torch.compile is then switched off, the option kept
    c.run("train_compile", [*train, "--epochs", "2", "--val-every", "2", "--name", "compiled", "--compile"], 150,
          env={} if p.gpu else {"TORCHDYNAMO_DISABLE": "1"})
    c.report["train_compile_epochs"] = _epochs(c.work / runs / "compiled")
    deterministic = c.run("train_deterministic", [*train, "--epochs", "1", "--name", "deterministic",
                                                  "--deterministic"], 60)
    deterministic["ok"] = deterministic.get("exit") in (0, 2)  # strict: it runs, or says which kernel it lacks

    card = "".join(ch if ch.isalnum() else "_" for ch in (c.report["machine"]["gpu"] or "cpu")).strip("_").lower()
    # prediction end to end: eager float32 against the fast path (and bf16) at batch 1 and 8
    predict_json = out / f"predict_{card}.json"
    predict_args = ["--device", "cuda", "--bf16", "--batches", "1,8", "--repeats", "5"] if p.gpu else \
        ["--device", "cpu", "--model", "hg-tiny", "--batches", "1", "--repeats", "1"]
    c.run("predict_benchmark", ["benchmark", "predict", *predict_args, "--out", str(predict_json)], 100)
    bench_json = out / f"dynconv_{card}.json"
    c.run("benchmark", ["benchmark", "dynconv", "--out", str(bench_json)], max(c.left() - 15, 5),
          expect=0 if p.gpu else 2)
    c.save()
    _bundle(c, out, bench_json if p.gpu else None)
    return c.report


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _bundle(c: Check, out: Path, bench_json: Path | None) -> None:
    """Logs, pytest report and the runs' small files into one archive (the device returns 8 files at most)."""
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(c.logs, arcname="logs")
        for run in sorted((c.work / "runs").glob("*")):
            for name in ("metrics.csv", "config.json"):
                if (run / name).is_file():
                    tar.add(run / name, arcname=f"runs/{run.name}/{name}")
    if c.plan.gpu:  # the repository copy of what the GPU showed
        RESULTS.mkdir(parents=True, exist_ok=True)
        card = bench_json.stem.removeprefix("dynconv_") if bench_json else "gpu"
        shutil.copy(out / "device_check.json", RESULTS / f"device_check_{card}.json")
        for produced in (bench_json, out / f"predict_{card}.json"):
            if produced is not None and produced.is_file():
                shutil.copy(produced, RESULTS / produced.name)
    shutil.rmtree(c.work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("device_out"), help="folder for what the check saw")
    parser.add_argument("--deadline", type=float, default=470.0, help="seconds for every step together")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, at toy size")
    args = parser.parse_args()
    plan = Plan.dry_run() if args.dry_run else Plan.for_gpu()
    if plan.gpu:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA GPU visible; use --dry-run on a machine without one", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = check(args.out.resolve(), args.deadline, plan)
    failed = [s["name"] for s in report["steps"] if not s.get("ok")]
    print(f"device check {'passed' if not failed else 'failed: ' + ', '.join(failed)}; report: "
          f"{args.out / 'device_check.json'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
