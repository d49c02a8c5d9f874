"""Learning check and demo timing: does a small MuLA learn on the synthetic data, and how fast?

Runs ``mula demo`` (synthetic data, untrained score, training, trained score, predictions) with a
fixed budget in a temporary folder, times it, and records the validation metrics before and after
training. With the default plan this is the full-size ``mula demo`` a newcomer runs; ``--epochs``
gives a longer budget. Results go to ``benchmarks/results/learning_check.json`` (one entry per
budget), and the demo's overlay of the generated photo is copied to ``docs/demo_overlay.jpg``.

    python benchmarks/learning_check.py                  # the demo's own budget
    python benchmarks/learning_check.py --epochs 40      # a longer budget
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mula_cli.commands.demo import FULL, run_demo

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "learning_check.json"
OVERLAY = HERE.parent / "docs" / "demo_overlay.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=FULL.epochs)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the demo folder here instead of a temporary one")
    args = parser.parse_args()
    plan = replace(FULL, epochs=args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "demo"
        start = time.perf_counter()
        root = run_demo(folder, plan, args.device, args.seed)
        minutes = (time.perf_counter() - start) / 60
        metrics = json.loads((root / "metrics.json").read_text())
        overlay = root / "predict" / "person_overlay.jpg"
        if args.epochs == FULL.epochs and overlay.is_file():
            OVERLAY.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(overlay, OVERLAY)
    entry = {
        "plan": asdict(plan), "device": args.device, "seed": args.seed, "minutes": round(minutes, 2),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "before": metrics["before"], "after": metrics["after"],
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[f"epochs_{args.epochs}_{args.device}"] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
