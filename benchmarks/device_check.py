"""The GPU path of mula, proved in one run of at most 8 minutes on one H100/H200 (``device_check.sh``).

Every step runs one command under its own cap (``BUDGET_S``: seconds on one H100, 470 at most in all so
that the install and start-up fit in 8 minutes) and a shared deadline, and passes only on what it must
show (``Expect``: exit code, regexes its log must and must not match, files it must leave; a Traceback
fails any step), judged by :func:`judge`: ok, partial (cut by its cap after saving its results: only the
benchmark may), failed, or skipped (no time left before the deadline; counts as failed).

    step                       cap s  what it must show (caps: 462 s in all)
    cuda_tests                   100  pytest: N passed, none failed (the kernels, the dispatch, the GPU flow)
    data                          15  the synthetic tree and its cache
    train_interrupted             35  the defaults on CUDA, Ctrl-C after "epoch 2:": exit 130 + the resume line
    train_resumed                 35  --resume to "finished N epochs", best.pt
    evaluate_fp32                 15  the metrics JSON (miou, pckh)
    predict                       15  a label PNG and a pose JSON per test image
    export_half                   20  the TorchScript export --half, checked against the model
    data_multi_person             12  the crowd tree and its cache
    train_multi_person            30  the partition branch with the Lovasz term: finished, pose mAP
    evaluate_multi_person         20  the metrics JSON (map)
    train_compile                 60  --compile: one epoch and its validation
    train_deterministic           20  --deterministic: finished
    train_deterministic_repeat    20  the same run again: bit-identical last.pt state dicts
    predict_benchmark             30  eager vs fast (and bf16); the dynamic convolution that ran (Triton on CUDA)
    benchmark                     35  mula benchmark dynconv --quick --no-sweep: its JSON (partial if cut)

OUT gets only results, rewritten after every step so that a killed run still brings them back:
``device_check.json`` (each step's status, reason, key numbers, seconds, log tail; the verdict),
``logs.tar.gz`` (the step logs, the pytest report, the runs' metrics) and the benchmarks' JSON. Data,
caches and runs live in a temporary folder outside OUT. Output ends with a verdict, one line a step.

``--dry-run``: the same steps on the CPU at toy size (CUDA tests only collected, torch.compile off, no
--half, the benchmark's no-GPU refusal expected; caps times 3), so that a typo is found here and not in
the GPU's minutes; tests/test_device_check.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mula_cli.utils.files import atomic_write

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = {"cuda_tests": 100, "data": 15, "train_interrupted": 35, "train_resumed": 35, "evaluate_fp32": 15,
            "predict": 15, "export_half": 20, "data_multi_person": 12, "train_multi_person": 30,
            "evaluate_multi_person": 20, "train_compile": 60, "train_deterministic": 20,
            "train_deterministic_repeat": 20, "predict_benchmark": 30, "benchmark": 35}
TOTAL_BUDGET_S = 470  # 8 minutes less the install and start-up
CUDA_TESTS = ("test_dynconv.py", "test_gpu_paths.py", "test_partition.py", "test_gpu_flow.py")
TRACEBACK = r"Traceback"  # an uncaught exception anywhere fails the step, whatever its exit code
COMPILE_FELL_BACK = r"--compile: the compiled training step failed"  # the engine went on eagerly
FALLBACK = "TritonFallbackWarning"  # in a log: the Triton path failed on this GPU and auto fell back
ERROR_LINE = re.compile(r"^\s*(?:[\w.]*(?:Error|Exception)(?::.*)?|error: .*|E {3}.*|FAILED .*)$", re.M)


@dataclass(frozen=True)
class Expect:
    """What a step must show to pass (regexes: re.MULTILINE; ``files``: glob under the work folder or
    absolute, and how many matches at least; ``numbers``: name and a one-group regex, its last match)."""

    exit: int = 0
    shows: tuple[str, ...] = ()
    never: tuple[str, ...] = ()
    files: tuple[tuple[str, int], ...] = ()
    interrupted: bool = False  # the check must have sent the Ctrl-C
    partial_if_cut: bool = False  # cut by its cap with its files written: "partial", not failed
    numbers: tuple[tuple[str, str], ...] = ()


def judge(expect: Expect, code: int | None, log: str, interrupted: bool = False,
          found: dict[str, int] | None = None) -> tuple[str, str | None]:
    """ok, partial or failed, and for anything but ok which criterion decided it. ``code``: the exit code,
    None when cut by its cap; ``found``: how many files match each of ``expect.files``' globs."""
    for pattern in (TRACEBACK, *expect.never):
        if re.search(pattern, log, re.M):
            return "failed", f"the log shows /{pattern}/"
    found = found or {}
    missing = [f"{pattern} (found {found.get(pattern, 0)}, need {least})" for pattern, least in expect.files
               if found.get(pattern, 0) < least]
    if code is None:
        if expect.partial_if_cut and expect.files and not missing:
            return "partial", "cut by its time budget after saving its results"
        return "failed", "cut by its time budget" + (f"; missing {missing[0]}" if missing else "")
    if code != expect.exit:
        return "failed", f"exit {code}, expected {expect.exit}"
    if expect.interrupted and not interrupted:
        return "failed", "the Ctrl-C was never sent (the line it waits for never came)"
    for pattern in expect.shows:
        if not re.search(pattern, log, re.M):
            return "failed", f"the log lacks /{pattern}/"
    if missing:
        return "failed", f"missing {missing[0]}"
    return "ok", None


def numbers(expect: Expect, log: str) -> dict[str, str]:
    """The key numbers of a step: the last match of each of its ``numbers`` regexes (long decimals: 4 digits)."""
    found = {name: re.findall(pattern, log, re.M) for name, pattern in expect.numbers}
    last = {name: " ".join(matches[-1].split())[:60] for name, matches in found.items() if matches}
    return {name: f"{float(v):.4g}" if re.fullmatch(r"-?\d+\.\d{5,}", v) else v for name, v in last.items()}


def last_error_line(log: str) -> str:
    """The last line that reads like an error (an exception's, pytest's, mula's), else the last line."""
    errors = ERROR_LINE.findall(log)
    lines = [line for line in log.splitlines() if line.strip()]
    return " ".join((errors[-1] if errors else lines[-1] if lines else "(empty log)").split())[:160]


def same_weights(first: Path, second: Path) -> str | None:
    """None when the two checkpoints' state dicts are equal bit for bit, else what differs."""
    import torch

    if not (first.is_file() and second.is_file()):
        return "a run's last.pt was not written"
    a, b = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in (first, second))
    if a.keys() != b.keys():
        return "the two state dicts have different keys"

    def raw(t: torch.Tensor) -> torch.Tensor:  # bytes: NaN equals its own bits, -0.0 differs from 0.0
        return t.detach().contiguous().reshape(-1).view(torch.uint8)

    differ = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or
              not torch.equal(raw(a[k]), raw(b[k]))]
    return f"{len(differ)} of {len(a)} tensors differ (first: {differ[0]})" if differ else None


@dataclass(frozen=True)
class Plan:
    """Sizes and switches of one run: the GPU check, or its CPU dry run."""

    gpu: bool
    model_args: list[str]
    train_images: int
    val_images: int
    crowd_images: int  # multi-person train images (validation: 4, grouping noisy maps is slow)
    batch: int
    workers: int
    epochs: int
    interrupt_after: str  # the line after which Ctrl-C is sent: epochs before the run's end
    test_args: list[str]
    scale: float = 1.0  # every cap and the deadline times this
    env: dict[str, str] = field(default_factory=dict)


# hg-2s: both tasks, adaptation in every stage, and a compile of well under a minute; 6 epochs, so that the
# Ctrl-C after the second has four epochs' time to land before the run ends
GPU = Plan(gpu=True, model_args=["--model", "hg-2s"], train_images=320, val_images=32, crowd_images=160, batch=16,
           workers=8, epochs=6, interrupt_after="epoch 2:", test_args=["-m", "not slow", "-rfEs"])
DRY_RUN = Plan(gpu=False, model_args=["--model", "hg-tiny", "--width", "16", "--device", "cpu"], train_images=16,
               val_images=4, crowd_images=16, batch=4, workers=0, epochs=4, interrupt_after="epoch 1:",
               test_args=["--collect-only"], scale=3.0, env={"OMP_NUM_THREADS": "1"})


@dataclass(frozen=True)
class Step:
    name: str
    args: list[str]  # after ``python -m mula_cli``, or after ``python`` when it starts with -m
    expect: Expect
    env: dict[str, str] = field(default_factory=dict)
    interrupt_after: str | None = None
    after: Callable[[], str | None] | None = None  # a last check once the rest passed: None or why it fails


def steps(plan: Plan, work: Path, out: Path, card: str) -> list[Step]:
    """The check's steps, in order (the most important first), with what each must show."""
    p, runs, cache, gpu = plan, "runs", "synthetic.h5", plan.gpu
    dev = [] if gpu else ["--device", "cpu"]
    train = ["train", "--data", cache, *p.model_args, "--batch-size", str(p.batch), "--workers", str(p.workers),
             "--project", runs, "--log-every", "5"]
    epoch = (("loss", r"^epoch \d+: loss (\S+)"), ("img/s", r"([\d,.]+) img/s"), ("mIoU", r"val mIoU ([\d.]+)"),
             ("PCKh", r"PCKh ([\d.]+)"), ("mAP", r"pose mAP ([\d.]+)"))

    def trained(run: str, epochs: int, *shows: str, best: bool = False) -> Expect:
        return Expect(shows=(rf"^finished {epochs} epochs", *shows), numbers=epoch,
                      files=((f"{runs}/{run}/weights/{'best' if best else 'last'}.pt", 1),))

    def metrics(*keys: str) -> Expect:  # `mula evaluate --json`: the metrics as numbers, not null
        return Expect(shows=tuple(rf'"{k}":\s*-?\d' for k in keys), numbers=tuple((k, rf'"{k}":\s*(\S+?),?$')
                                                                                   for k in keys))

    tests = [str(REPO / "tests" / name) for name in CUDA_TESTS]
    xdist = ["-n", "8"] if gpu and importlib.util.find_spec("xdist") else []
    failures = (r"\b\d+ (failed|errors?)\b", r"^ERROR")  # pytest's summary, and a collection error
    cuda_tests = Expect(shows=(r"\b\d+ passed\b",), never=failures,
                        numbers=(("passed", r"(\d+) passed"), ("skipped", r"(\d+) skipped"))) if gpu else \
        Expect(shows=(r"\b\d+ tests? collected\b", *(rf"^tests/{re.escape(n)}::" for n in CUDA_TESTS)),
               never=failures, numbers=(("collected", r"(\d+) tests? collected"),))
    data = Expect(shows=(r"^generated \d+ images", r"\d+ samples in"), numbers=(("images", r"generated (\d+)"),),
                  files=((cache, 1),))
    interrupted = Expect(exit=130, interrupted=True, files=((f"{runs}/default/weights/last.pt", 1),), numbers=epoch,
                         shows=(r"^saved\s+\S+last\.pt\s+\(epoch\s+\d+,\s+batch\s+\d+\);\s+continue\s+with:\s+mula\s+"
                                r"train\s+--resume\s+\S+last\.pt",))  # \s+: robust to a wrapped line
    best = f"{runs}/default/weights/best.pt"
    deterministic = [*train, "--epochs", "1", "--val-limit", "4", "--deterministic", "--name"]
    export = ["--half", "--device", "cuda"] if gpu else ["--device", "cpu"]
    predict_args = ["--device", "cuda", "--precision", "bf16", "--batches", "1,8", "--repeats", "3"] if gpu else \
        ["--device", "cpu", "--model", "hg-tiny", "--batches", "1", "--repeats", "1"]
    key_case = r"^ *16 +256 +64\^2 h=7 bf16: fwd\+bwd (triton .*floor)$"  # ms of both, speed-up, x floor
    benchmark = Expect(shows=(r"^wrote \S*dynconv_\w+\.json",), partial_if_cut=True,
                       files=((str(out / "dynconv_*.json"), 1),), numbers=(("7x7 bf16 fwd+bwd", key_case),)) \
        if gpu else Expect(exit=2, shows=(r"needs a CUDA GPU",))
    return [
        Step("cuda_tests", ["-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", *p.test_args, *xdist,
                            f"--junitxml={work / 'logs' / 'pytest_cuda.xml'}"], cuda_tests),
        Step("data", ["prepare", "synthetic", "tree", "--train", str(p.train_images), "--val", str(p.val_images),
                      "--test", "4", "--out", cache, "-q"], data),
        # the defaults on CUDA: bf16, channels_last, device augmentation, MULA_DYNCONV=auto
        Step("train_interrupted", [*train, "--epochs", str(p.epochs), "--val-every", "2", "--name", "default"],
             interrupted, interrupt_after=p.interrupt_after),
        Step("train_resumed", ["train", "--resume", f"{runs}/default/weights/last.pt", "--workers", str(p.workers)],
             trained("default", p.epochs, r"^resuming at epoch \d+", best=True)),
        Step("evaluate_fp32", ["evaluate", best, "--data", cache, "--workers", str(p.workers), "--json", *dev],
             metrics("miou", "pckh")),
        Step("predict", ["predict", "tree/Testing_images/testing_images", "--weights", best, "--out-dir",
                         "predictions", "-q", *dev],
             Expect(shows=(r"^4 image\(s\) predicted",), files=(("predictions/*.png", 4), ("predictions/*.json", 4)),
                    numbers=(("images", r"^(\d+) image\(s\) predicted"),))),
        Step("export_half", ["export", best, "--format", "torchscript", *export, "--out", "model.torchscript"],
             Expect(shows=(r"^exported model\.torchscript; checked at batch", r"parsing labels agree on"),
                    files=(("model.torchscript", 1),), numbers=(("largest difference", r"largest difference (\S+)"),
                                                                ("labels agree", r"agree on (\S+%)")))),
        # multi-person: the partition branch's targets, loss and grouping on the device, with the Lovasz term
        Step("data_multi_person", ["prepare", "synthetic", "tree_mp", "--multi-person", "--train",
                                   str(p.crowd_images), "--val", "4", "--out", "multi.h5", "-q"],
             Expect(shows=data.shows, numbers=data.numbers, files=(("multi.h5", 1),))),
        Step("train_multi_person", ["train", "--data", "multi.h5", *train[3:], "--epochs", "1", "--val-limit", "4",
                                    "--name", "multi", "--lovasz", "1"], trained("multi", 1, r"pose mAP \d")),
        Step("evaluate_multi_person", ["evaluate", f"{runs}/multi/weights/last.pt", "--data", "multi.h5", "--workers",
                                       str(p.workers), "--json", *dev], metrics("map", "miou")),
        # a dry run cannot wait for Inductor on two cores: torch.compile is then switched off, the option kept
        Step("train_compile", [*train, "--epochs", "1", "--name", "compiled", "--compile"],
             replace(trained("compiled", 1, r"val mIoU \d"), never=(COMPILE_FELL_BACK,)),
             env={} if gpu else {"TORCHDYNAMO_DISABLE": "1"}),
        # the same seed twice: both must finish and agree bit for bit
        Step("train_deterministic", [*deterministic, "deterministic"], trained("deterministic", 1)),
        Step("train_deterministic_repeat", [*deterministic, "deterministic_repeat"], trained("deterministic_repeat", 1),
             after=lambda: same_weights(*(work / runs / r / "weights" / "last.pt" for r in
                                          ("deterministic", "deterministic_repeat")))),
        # prediction end to end: eager float32 against the fast path (and bf16); on CUDA auto must take Triton
        Step("predict_benchmark", ["benchmark", "predict", *predict_args, "--out", str(out / f"predict_{card}.json")],
             Expect(shows=(r"^wrote \S*predict_\w+\.json", rf"dynamic convolution: {'Triton' if gpu else 'grouped'}"),
                    never=(r"auto fell back",), files=((str(out / f"predict_{card}.json"), 1),),
                    numbers=(("fast speed-up", r"^ +fast .*speed-up x([\d.]+)"),
                             ("dynconv", r"dynamic convolution: (.*)")))),
        Step("benchmark", ["benchmark", "dynconv", "--quick", "--no-sweep", "--out",
                           str(out / f"dynconv_{card}.json")], benchmark),
    ]


class Check:
    """Runs steps against their caps and a deadline; saves the report and the logs after every step."""

    def __init__(self, out: Path, work: Path, deadline_s: float, plan: Plan) -> None:
        self.out, self.work, self.plan = out, work, plan
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.end = time.monotonic() + deadline_s
        self.report: dict[str, Any] = {"dry_run": not plan.gpu, "machine": _machine(), "work": str(work),
                                       "budget_s": {k: v * plan.scale for k, v in BUDGET_S.items()}, "steps": []}
        # COLUMNS: rich wraps at 80 columns when writing to a file; keep a message on one line
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **plan.env}

    def run(self, step: Step) -> dict[str, Any]:
        cap = BUDGET_S[step.name] * self.plan.scale
        timeout = min(cap, self.end - time.monotonic())
        record: dict[str, Any] = {"name": step.name, "command": step.args, "budget_s": cap,
                                  "expected_exit": step.expect.exit}
        if timeout < 5:
            record.update(status="skipped", reason=f"{max(timeout, 0):.0f} s left before the deadline", seconds=0)
            return self._record(record)
        command = [sys.executable, *(step.args if step.args[0] == "-m" else ["-m", "mula_cli", *step.args])]
        log = self.logs / f"{step.name}.log"
        start, interrupted, cut = time.monotonic(), False, False
        with log.open("w") as sink:  # its own process group: a cut takes its workers (DataLoader, xdist) too
            proc = subprocess.Popen(command, cwd=self.work, env={**self.env, **step.env}, text=True, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            while proc.poll() is None:
                time.sleep(0.1)
                if time.monotonic() - start > timeout:
                    cut = True
                    with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                elif step.interrupt_after and not interrupted and re.search(
                        f"^{re.escape(step.interrupt_after)}", log.read_text(errors="replace"), re.M):
                    proc.send_signal(signal.SIGINT)  # Ctrl-C: finish the step, save, print the resume command
                    interrupted = True
        text = log.read_text(errors="replace")
        found = {p: len(glob.glob(os.path.join(self.work, p))) for p, _ in step.expect.files}
        status, reason = judge(step.expect, None if cut else proc.returncode, text, interrupted, found)
        if status == "failed":
            reason = f"{reason}; last error: {last_error_line(text)}"
        elif status == "ok" and step.after is not None and (why := step.after()):
            status, reason = "failed", why
        record.update(status=status, reason=reason, exit="cut" if cut else proc.returncode,
                      seconds=round(time.monotonic() - start, 1), interrupted=interrupted if step.interrupt_after
                      else None, numbers=numbers(step.expect, text), triton_fallback=FALLBACK in text,
                      log_tail=text[-1500:])
        return self._record(record)

    def _record(self, record: dict[str, Any]) -> dict[str, Any]:
        self.report["steps"].append(record)
        print(f"== {verdict_line(record)}", flush=True)
        self.save()
        return record

    def save(self) -> None:
        steps_ = self.report["steps"]
        self.report["ok"] = bool(steps_) and all(s["status"] in ("ok", "partial") for s in steps_)  # skipped: failed
        for name, run in (("train_default_epochs", "default"), ("train_multi_person_epochs", "multi")):
            self.report[name] = _epochs(self.work / "runs" / run)
        self.report["verdict"] = verdict(self.report)
        atomic_write(self.out / "device_check.json", lambda p: p.write_text(json.dumps(self.report, indent=1)))
        atomic_write(self.out / "logs.tar.gz", self._bundle)

    def _bundle(self, path: Path) -> None:
        with tarfile.open(path, "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
            for small in sorted([*self.work.glob("runs/*/metrics.csv"), *self.work.glob("runs/*/config.json")]):
                tar.add(small, arcname=str(small.relative_to(self.work)))


def verdict_line(s: dict[str, Any]) -> str:
    """One line of the verdict: status, name, seconds, key numbers, and why when not ok."""
    text = f"{s['status']:<8} {s['name']:<27} {s.get('seconds', 0):6.1f} s"
    text += "".join(f"  {k}={v}" for k, v in s.get("numbers", {}).items())
    if s.get("triton_fallback"):
        text += "  (Triton fell back to the grouped convolution)"
    return text + (f"  -- {s['reason']}" if s.get("reason") else "")


def verdict(report: dict[str, Any]) -> list[str]:
    failed = [s["name"] for s in report["steps"] if s["status"] in ("failed", "skipped")]
    partial = [s["name"] for s in report["steps"] if s["status"] == "partial"]
    head = f"device check FAILED: {', '.join(failed)}" if failed else "device check passed"
    return [head + (f" (partial: {', '.join(partial)})" if partial else ""), *map(verdict_line, report["steps"])]


def _machine() -> dict[str, Any]:
    import torch

    triton = importlib.util.find_spec("triton") and importlib.import_module("triton").__version__
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "triton": triton or None}


def _epochs(run: Path) -> list[dict[str, str]]:
    keep = ("epoch", "loss", "images_per_s", "val_miou", "val_pckh", "val_map")
    with contextlib.suppress(FileNotFoundError), (run / "metrics.csv").open() as f:
        return [{k: row[k] for k in keep if row.get(k)} for row in csv.DictReader(f)]
    return []


def check(out: Path, deadline_s: float, plan: Plan) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mula-device-check-"))  # outside OUT: only results go there
    try:
        c = Check(out, work, deadline_s * plan.scale, plan)
        card = "".join(ch if ch.isalnum() else "_" for ch in c.report["machine"]["gpu"] or "cpu").strip("_").lower()
        for step in steps(plan, work, out, card):
            c.run(step)
        return c.report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("device_out"), help="folder for what the check saw")
    parser.add_argument("--deadline", type=float, default=TOTAL_BUDGET_S, help="seconds for all steps (dry run: x3)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, at toy size")
    args = parser.parse_args()
    plan = DRY_RUN if args.dry_run else GPU
    if plan.gpu and not _machine()["gpu"]:
        print("error: no CUDA GPU visible; use --dry-run on a machine without one", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = check(args.out.resolve(), args.deadline, plan)
    print("\n".join(report["verdict"]), f"report: {args.out / 'device_check.json'}", sep="\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
