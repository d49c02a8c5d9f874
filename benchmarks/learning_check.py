"""Learning check: does a small MuLA learn both tasks on the synthetic data, how fast, and does the
paper's ordering of variants hold at that budget?

Default mode runs ``mula demo`` (synthetic data, untrained score, training, trained score,
predictions) with its own budget in a temporary folder, times it and records the held-out metrics
before and after training; the demo's overlay of the generated photo is copied to
``docs/demo_overlay.jpg``.

``--compare`` trains, on the demo's data and with the demo's recipe and budget, MuLA against the
same network without interaction (the HG-k x 1u counterpart), the two one-direction variants and
MuLA with one stage fewer, for several seeds, and reports the mean and spread of held-out mIoU and
PCKh for each. Results go to ``benchmarks/results/learning_check.json`` after every run, so a cut
short comparison keeps what it measured (and skips it when rerun with the same settings).

    python benchmarks/learning_check.py                       # the demo's own budget
    python benchmarks/learning_check.py --epochs 16           # a longer budget
    python benchmarks/learning_check.py --seed 1 --lovasz 0   # another seed's data, the paper's loss
    python benchmarks/learning_check.py --compare --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from mula_cli.commands.demo import FULL, DemoPlan, plan_config, run_demo
from mula_cli.utils.files import write_json

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "learning_check.json"
OVERLAY = HERE.parent / "docs" / "demo_overlay.jpg"

# name -> model overrides of the demo's hg-tiny (2 stages, MuLA in both directions)
COMPARISON: dict[str, dict[str, Any]] = {
    "mula": {},
    "independent": {"variant": "independent"},  # the HG-2x1u counterpart: two stacked hourglasses, no interaction
    "la-pose": {"variant": "la-pose"},  # only pose adapted (kernels from the parsing feature)
    "la-parsing": {"variant": "la-parsing"},  # only parsing adapted
    "mula-1-stage": {"stages": 1},
}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_results(results: dict[str, Any]) -> None:
    write_json(RESULTS, results)


@contextmanager
def results_lock() -> Iterator[None]:
    """Several ``--compare`` processes (one per core) add their runs to the same JSON file."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_run(key: str, plan: DemoPlan, device: str, run_key: str, entry: dict[str, Any]) -> None:
    """Add one comparison run to the results file, re-read under the lock."""
    with results_lock():
        results = load_results()
        section = results.get(key) if results.get(key, {}).get("plan") == asdict(plan) else None
        section = section or {"plan": asdict(plan), "device": device, "runs": {}}
        section["runs"][run_key] = entry
        section["summary"] = summarise(section["runs"])
        results[key] = section
        save_results(results)


def demo_check(plan: DemoPlan, device: str, seed: int, keep: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp) / "demo"
        start = time.perf_counter()
        root = run_demo(folder, plan, device, seed)
        minutes = (time.perf_counter() - start) / 60
        metrics = json.loads((root / "metrics.json").read_text())
        overlay = root / "predict" / "person_overlay.jpg"
        if plan == FULL and seed == 0 and overlay.is_file():
            OVERLAY.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(overlay, OVERLAY)
    entry = {"plan": asdict(plan), "device": device, "seed": seed, "minutes": round(minutes, 2), **machine(),
             "before": metrics["before"], "after": metrics["after"]}
    with results_lock():
        results = load_results()
        results[demo_key(plan, device, seed)] = entry
        save_results(results)
    print(json.dumps(entry, indent=2))


def demo_key(plan: DemoPlan, device: str, seed: int) -> str:
    """``demo_epochs_12_cpu`` for the demo itself; other seeds and Lovasz weights get their own entry."""
    key = f"demo_epochs_{plan.epochs}_{device}"
    key += f"_seed{seed}" if seed else ""
    return key + (f"_lovasz{plan.lovasz:g}" if plan.lovasz != FULL.lovasz else "")


def compare(plan: DemoPlan, device: str, seeds: list[int], names: list[str]) -> None:
    from mula_cli.commands.prepare import prepare_synthetic_dataset
    from mula_cli.data.cache import CacheFile
    from mula_cli.evaluation.runner import eval_loader, evaluate_model
    from mula_cli.model.weights import load_weights
    from mula_cli.train.engine import train

    key = f"comparison_epochs_{plan.epochs}_{device}"
    section = load_results().get(key, {})
    done = set(section.get("runs", {})) if section.get("plan") == asdict(plan) else set()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "synthetic.h5"
        prepare_synthetic_dataset(Path(tmp) / "tree", train=plan.train, val=plan.val, test=0, seed=0, out_path=cache,
                                  quiet=True)
        with CacheFile(cache) as c:
            manifest = c.manifest
        for name in names:
            for seed in seeds:
                run_key = f"{name}/seed{seed}"
                if run_key in done:
                    continue
                start = time.perf_counter()
                cfg = plan_config(plan, cache, Path(tmp) / "runs", device, seed, name=f"{name}_{seed}",
                                  **COMPARISON[name])
                run = train(cfg, quiet=True)
                model, config, _ = load_weights(run / "weights" / "last.pt")
                loader = eval_loader(cache, "val", config.input_size, config.stride, batch_size=16, workers=0)
                scores = evaluate_model(model, loader, manifest).summary()
                entry = {**scores, "minutes": round((time.perf_counter() - start) / 60, 2), **machine()}
                record_run(key, plan, device, run_key, entry)
                print(run_key, json.dumps(entry), flush=True)
    print(markdown(load_results()[key]["summary"]))


def summarise(runs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per variant: mean and sample standard deviation of held-out mIoU and PCKh over the seeds."""
    summary: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(k.split("/")[0] for k in runs):
        values = [v for k, v in runs.items() if k.split("/")[0] == name]
        row: dict[str, float] = {"seeds": len(values)}
        for metric in ("miou", "pckh"):
            xs = [v[metric] for v in values]
            row[f"{metric}_mean"] = round(statistics.fmean(xs), 2)
            row[f"{metric}_std"] = round(statistics.stdev(xs), 2) if len(xs) > 1 else 0.0
        summary[name] = row
    return summary


def markdown(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| variant | seeds | mIoU | PCKh@0.5 |", "|---|---:|---:|---:|"]
    for name, row in summary.items():
        lines.append(f"| {name} | {row['seeds']} | {row['miou_mean']:.1f} ± {row['miou_std']:.1f} | "
                     f"{row['pckh_mean']:.1f} ± {row['pckh_std']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=FULL.epochs)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo run")
    parser.add_argument("--lovasz", type=float, default=FULL.lovasz, help="Lovasz-softmax weight (0: the paper's loss only)")
    parser.add_argument("--keep", type=Path, help="keep the demo folder here instead of a temporary one")
    parser.add_argument("--compare", action="store_true", help="compare the variants instead of running the demo")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds of --compare")
    parser.add_argument("--variants", default=",".join(COMPARISON), help="variants of --compare")
    parser.add_argument("--threads", type=int, help="PyTorch threads (1 when running one --compare per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = replace(FULL, epochs=args.epochs, lovasz=args.lovasz)
    if args.compare:
        names = [n for n in args.variants.split(",") if n]
        unknown = [n for n in names if n not in COMPARISON]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {', '.join(COMPARISON)}")
        compare(plan, args.device, [int(s) for s in args.seeds.split(",")], names)
    else:
        demo_check(plan, args.device, args.seed, args.keep)


if __name__ == "__main__":
    main()
