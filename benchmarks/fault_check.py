"""Fault injection: stop `mula` at random moments, the ways jobs are stopped, and check that nothing is lost.

    python benchmarks/fault_check.py                        # 20 stops of `mula train`, 5 each of the others
    python benchmarks/fault_check.py --kills 3 --other-kills 1 --epochs 3   # the short version the tests run

Ways to stop: SIGTERM or SIGINT to the whole process group (a scheduler's time limit or ``scancel``,
``docker stop``, a terminal's Ctrl-C), SIGKILL to the main process (the OOM killer, the end of a grace
period). Each stop is followed by the checks, then the command is started again (resumed) until it ends.

- ``mula train --workers 2`` on a small synthetic cache: after SIGTERM/SIGINT the exit code is 128 +
  the signal and there is no traceback; after any stop every weights file loads, ``metrics.csv`` has
  each epoch once, with none missing. The finished run's weights must equal an uninterrupted run's bit
  for bit (CPU), whatever stopped it on the way.
- ``mula prepare synthetic --force --workers 2`` over an existing cache: the cache is the old one
  intact or the new one complete, never part of one.
- ``mula predict`` on a folder and on a video: everything written is readable, and a rerun completes
  the rest.

Writes the figures as JSON (``--out``, default ``benchmarks/results/fault_check.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

WAYS = ("TERM to the group", "INT to the group", "KILL to the main process")
TRAIN = ["--model", "hg-tiny", "--width", "16", "--batch-size", "4", "--workers", "2", "--schedule", "constant",
         "--lr", "1e-3", "--log-every", "1", "--val-every", "1", "--device", "cpu", "--seed", "5"]


@dataclass
class Stop:
    """One stop and what the checks found after it."""

    command: str
    way: str
    after_s: float
    exit_code: int | None
    outcome: str  # "stopped" (the stop landed), "finished" (the command ended before it)
    problems: list[str] = field(default_factory=list)


class Runner:
    """Starts ``mula`` commands in their own process group, stops them and keeps their logs."""

    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng, self.n = work, rng, 0
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(self, args: list[str]) -> tuple[subprocess.Popen, Path, Path]:
        self.n += 1
        out, err = self.work / f"log{self.n:03d}.out", self.work / f"log{self.n:03d}.err"
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen([sys.executable, "-m", "mula_cli", *map(str, args)], cwd=self.work, env=self.env,
                                    stdout=o, stderr=e, start_new_session=True)
        return proc, out, err

    def run(self, args: list[str]) -> tuple[int, str, str]:
        proc, out, err = self.start(args)
        code = proc.wait(timeout=1800)
        return code, out.read_text(), err.read_text()

    def stop(self, proc: subprocess.Popen, way: str) -> int:
        """Stop ``proc`` one of the ways; wait for it and for every process of its group."""
        with contextlib.suppress(ProcessLookupError):  # it ended on its own just before the stop
            if way.startswith("KILL"):
                os.kill(proc.pid, signal.SIGKILL)
            else:
                os.killpg(proc.pid, signal.SIGTERM if way.startswith("TERM") else signal.SIGINT)
        code = proc.wait(timeout=600)
        _wait_group_gone(proc.pid)
        return code

    def stop_at_random(self, command: str, args: list[str], way: str, earliest_s: float, latest_s: float,
                       marker: str | None = None) -> tuple[Stop, str, str]:
        """Run ``args``, stop it a random time after it printed ``marker`` (or started) and report."""
        proc, out, err = self.start(args)
        if marker is not None:
            while marker not in out.read_text() and proc.poll() is None:
                time.sleep(0.05)
        delay = self.rng.uniform(earliest_s, latest_s)
        time.sleep(delay)
        finished = proc.poll() is not None
        code = proc.wait() if finished else self.stop(proc, way)
        stderr = err.read_text()
        # exit 0 after a stop: it landed as the command was ending (training's last step or validation
        # done): the command did all its work, which the checks that follow verify
        stop = Stop(command, way, round(delay, 2), code, "finished" if finished or code == 0 else "stopped")
        expected = {0} if finished else {0} | _expected_codes(way)
        if code not in expected:
            stop.problems.append(f"exit code {code}, expected {sorted(expected)}: {stderr.strip()[-400:]}")
        if "Traceback" in stderr:
            stop.problems.append("a traceback: " + stderr[stderr.index("Traceback"):][-400:])
        return stop, out.read_text(), stderr


def _expected_codes(way: str) -> set[int]:
    """128 + the signal from mula's handlers; killed by the signal itself (-signal) when it lands in the
    interpreter's own start (before any of mula runs) or its shutdown (after the command has finished):
    there is nothing to save then, and a shell reports both as 128 + the signal."""
    if way.startswith("KILL"):
        return {-signal.SIGKILL}
    sig = signal.SIGTERM if way.startswith("TERM") else signal.SIGINT
    return {128 + sig, -sig}


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Orphaned workers notice their parent is gone within seconds; kill any that outlive ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):  # the last one left in the meantime
        os.killpg(pgid, signal.SIGKILL)


def _partials(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.partial")) if folder.exists() else []


# ---- training --------------------------------------------------------------------------------------


def check_run(run: Path) -> list[str]:
    """Every file of a run directory readable and consistent with the others."""
    import torch

    problems = []
    epoch = 0
    for path in sorted((run / "weights").glob("*.pt")):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            problems.append(f"{path} unreadable: {exc}")
            continue
        if path.name == "last.pt":
            epoch = payload["training"]["state"]["epoch"]
    if (run / "metrics.csv").is_file():
        with (run / "metrics.csv").open(newline="") as f:
            epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
        if epochs != list(range(1, len(epochs) + 1)):
            problems.append(f"{run / 'metrics.csv'} epochs {epochs}: repeated or missing")
        elif len(epochs) not in (epoch, epoch + 1):  # the row is written just before last.pt
            problems.append(f"{run / 'metrics.csv'} has {len(epochs)} epochs, last.pt is after epoch {epoch}")
    try:
        json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{run / 'config.json'}: {exc}")
    return problems


def _newest_run(project: Path) -> Path | None:
    """The run directory made last (exp, exp2, ...): a stop before the first save means a new run."""
    runs = [p for p in project.glob("exp*") if p.is_dir()] if project.is_dir() else []
    return max(runs, key=lambda p: int(p.name[3:] or 1), default=None)


def train_trials(runner: Runner, cache: Path, kills: int, epochs: int, window_s: float) -> dict:
    import torch

    from mula_cli.data.cache import CacheFile

    code, _, err = runner.run(["train", "--data", cache, *TRAIN, "--epochs", epochs, "--project", "uninterrupted"])
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{err[-2000:]}")
    reference = runner.work / "uninterrupted" / "exp"
    stops: list[Stop] = []
    run: Path | None = None
    fresh = ["train", "--data", cache, *TRAIN, "--epochs", epochs, "--project", "interrupted"]

    def command() -> list:  # resume the newest run where it has a checkpoint; else start again
        last = run / "weights" / "last.pt" if run is not None else None
        return ["train", "--resume", last.relative_to(runner.work)] if last is not None and last.is_file() else fresh

    for k in range(kills):
        stop, _, _ = runner.stop_at_random("train", command(), WAYS[k % 3], 0.0, window_s, marker="run directory:")
        run = _newest_run(runner.work / "interrupted")
        if run is not None:
            stop.problems += check_run(run)
        try:  # the cache training reads is never written: it must still open after every stop
            with CacheFile(cache) as c:
                c.count("train")
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            stop.problems.append(f"{cache} unreadable: {exc}")
        stops.append(stop)
        if stop.outcome == "finished":
            break
    for _ in range(3):  # to the end
        code, _, err = runner.run(command())
        run = _newest_run(runner.work / "interrupted")
        if code == 0:
            break
    final_problems = check_run(run) + [f"left behind: {p}" for p in _partials(run)]
    a = torch.load(reference / "weights" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(run / "weights" / "last.pt", weights_only=True)["state_dict"]
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != epochs:
        final_problems.append(f"metrics.csv has {len(rows)} epochs, not {epochs}")
    return {"stops": stops, "final_exit_code": code, "weights_equal_uninterrupted": equal,
            "final_problems": final_problems}


# ---- prepare -----------------------------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_trials(runner: Runner, kills: int, images: int) -> dict:
    from mula_cli.data.cache import CacheFile

    cache = runner.work / "prepared.h5"
    base = ["prepare", "synthetic", "tree", "--train", images, "--val", 4, "--test", 0, "--out", cache,
            "--workers", 2, "-q"]
    code, _, err = runner.run([*base, "--seed", 0])
    if code != 0:
        raise SystemExit(f"prepare failed:\n{err[-2000:]}")
    good = _sha(cache)
    stops = []
    for k in range(kills):
        stop, _, _ = runner.stop_at_random("prepare", [*base, "--seed", k + 1, "--force"], WAYS[k % 3], 0.5, 4.0)
        now = _sha(cache) if cache.is_file() else None
        if now != good:  # then it must be a whole new cache
            try:
                with CacheFile(cache) as c:
                    assert c.count("train") == images, f"{c.count('train')} training images"
                good = now
            except Exception as exc:  # noqa: BLE001
                stop.problems.append(f"{cache} is neither the old cache nor a complete new one: {exc}")
        stops.append(stop)
    code, _, err = runner.run([*base, "--seed", kills + 1, "--force"])
    final = [] if code == 0 else [f"the rerun failed: {err.strip()[-400:]}"]
    final += [f"left behind: {p}" for p in _partials(runner.work) if "prepared" in p or "/tree/" in p]
    return {"stops": stops, "final_exit_code": code, "final_problems": final}


# ---- predict -------------------------------------------------------------------------------------------


def _readable_outputs(folder: Path) -> tuple[int, list[str]]:
    from PIL import Image

    problems, n = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.endswith(".partial"):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                with Image.open(path) as img:
                    img.load()
            n += 1
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{path} unreadable: {exc}")
    return n, problems


def folder_trials(runner: Runner, weights: Path, pictures: Path, kills: int) -> dict:
    expected = 3 * len(list(pictures.glob("*.jpg")))  # labels, pose JSON, overlay per picture
    args = ["predict", pictures, "--weights", weights, "--out-dir", "predicted", "--batch-size", 2, "-q"]
    stops = []
    for k in range(kills):
        stop, _, _ = runner.stop_at_random("predict folder", args, WAYS[k % 3], 1.0, 6.0)
        stop.problems += _readable_outputs(runner.work / "predicted")[1]
        stops.append(stop)
    code, _, err = runner.run(args)
    n, final = _readable_outputs(runner.work / "predicted")
    if code != 0 or n != expected:
        final.append(f"the rerun: exit {code}, {n} of {expected} outputs: {err.strip()[-300:]}")
    final += [f"left behind: {p}" for p in _partials(runner.work / "predicted")]
    return {"stops": stops, "final_exit_code": code, "final_problems": final}


def _video_state(vis: Path, pose: Path) -> tuple[int, int, list[str]]:
    """Frames decodable from the overlay video, whole JSON lines, and problems."""
    import av

    problems, frames, lines = [], 0, 0
    if pose.is_file():
        for i, line in enumerate(pose.read_text().splitlines()):
            try:
                json.loads(line)
                lines += 1
            except ValueError:
                problems.append(f"{pose} line {i + 1} is not JSON")
    if vis.is_file() and vis.stat().st_size:
        try:
            with av.open(str(vis)) as container:
                frames = sum(1 for _ in container.decode(video=0))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{vis} does not play: {exc}")
    return frames, lines, problems


def video_trials(runner: Runner, weights: Path, clip: Path, frames: int, kills: int) -> dict:
    vis, pose = runner.work / "overlay.mp4", runner.work / "overlay.jsonl"
    args = ["predict", clip, "--weights", weights, "--vis", vis, "--pose", pose, "-q"]
    stops = []
    for k in range(kills):
        stop, _, _ = runner.stop_at_random("predict video", args, WAYS[k % 3], 2.0, 6.0)
        decoded, lines, problems = _video_state(vis, pose)
        if stop.outcome == "stopped" and not stop.way.startswith("KILL") and decoded != lines:
            problems.append(f"{vis} plays {decoded} frames but {pose} has {lines} records")
        stop.problems += problems
        stops.append(stop)
    code, _, err = runner.run(args)
    decoded, lines, final = _video_state(vis, pose)
    if code != 0 or decoded != frames or lines != frames:
        final.append(f"the rerun: exit {code}, {decoded} frames and {lines} records of {frames}: {err.strip()[-300:]}")
    return {"stops": stops, "final_exit_code": code, "final_problems": final}


def write_clip(path: Path, frames: int, size: tuple[int, int] = (96, 72)) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.zeros((size[1], size[0], 3), np.uint8)
            image[:, (i * 3) % size[0]:, 1] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---- all of it --------------------------------------------------------------------------------------------


def run_all(work: Path, *, kills: int = 20, other_kills: int = 5, epochs: int = 40, seed: int = 0,
            window_s: float = 4.0, prepare_images: int = 300, pictures: int = 40, frames: int = 150) -> dict:
    """Every scenario in ``work``; returns the summary (see :func:`summarise`)."""
    rng = random.Random(seed)
    runner = Runner(work, rng)
    code, _, err = runner.run(["prepare", "synthetic", "data", "--train", 16, "--val", 4, "--test", 0,
                               "--out", "train.h5", "-q"])
    if code != 0:
        raise SystemExit(f"prepare failed:\n{err[-2000:]}")
    t0 = time.perf_counter()
    results = {"train": train_trials(runner, work / "train.h5", kills, epochs, window_s)}
    weights = work / "uninterrupted" / "exp" / "weights" / "best.pt"
    folder = work / "pictures"
    folder.mkdir(exist_ok=True)
    for i, src in enumerate(sorted((work / "data").rglob("*.jpg"))[:pictures]):
        shutil.copy(src, folder / f"p{i:03d}.jpg")
    results["prepare"] = prepare_trials(runner, other_kills, prepare_images)
    results["predict_folder"] = folder_trials(runner, weights, folder, other_kills)
    results["predict_video"] = video_trials(runner, weights, write_clip(work / "clip.mp4", frames), frames,
                                            other_kills)
    return summarise(results, time.perf_counter() - t0)


def summarise(results: dict, seconds: float) -> dict:
    stops = [s for r in results.values() for s in r["stops"]]
    problems = [p for s in stops for p in s.problems] + [p for r in results.values() for p in r["final_problems"]]
    return {
        "stops": len(stops),
        "stops_that_landed": sum(s.outcome == "stopped" for s in stops),
        "by_way": {way: sum(s.way == way for s in stops) for way in WAYS},
        "survived": sum(not s.problems for s in stops),
        "files_lost_or_damaged": len(problems),
        "train_weights_equal_uninterrupted": results["train"]["weights_equal_uninterrupted"],
        "problems": problems,
        "seconds": round(seconds, 1),
        "scenarios": {name: {**{k: v for k, v in r.items() if k != "stops"},
                             "stops": [asdict(s) for s in r["stops"]]} for name, r in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="stops of `mula train`")
    parser.add_argument("--other-kills", type=int, default=5, help="stops of prepare, predict folder, predict video")
    parser.add_argument("--epochs", type=int, default=40, help="of the training run (enough for --kills stops)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fault_check.json")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = run_all(work.resolve(), kills=args.kills, other_kills=args.other_kills, epochs=args.epochs,
                          seed=args.seed)
    summary = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "scenarios"}, indent=2))
    print(f"wrote {args.out}")
    raise SystemExit(0 if not summary["problems"] and summary["train_weights_equal_uninterrupted"] else 1)


if __name__ == "__main__":
    main()
