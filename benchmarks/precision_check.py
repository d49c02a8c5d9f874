"""What reduced precision changes on trained weights: each path scored on held-out pictures against float32.

For every weights file and every path (the PyTorch fast path in float32 and in bfloat16; exported
models such as OpenVINO IRs in their own precision), the held-out split of a cache is scored the way
``mula evaluate`` scores it (letterbox, pose flip, outputs mapped back to the original picture), one
picture per batch, and each picture's labels and joints are set beside the float32 fast path's:
PCKh (or mAP for multi-person weights), mIoU, the share of equal labels (overall and the lowest
picture's), joint displacement percentiles and the share of joints that moved, and the time per
picture of that loop (decode, letterbox, network, map-back; data loading in the same process).

    python benchmarks/precision_check.py --weights runs/demo/train/weights/best.pt --data runs/demo/data/synthetic.h5
    python benchmarks/precision_check.py --weights best.pt --data lip.h5 --exported best.xml --exported best_int8.xml

The verdict per path uses the tolerance ``--precision auto`` is held to: PCKh (mAP) and mIoU within
0.3 points of float32, >= 99.5 % of labels equal, median joint displacement 0 px.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mula_cli.bench.predict import machine
from mula_cli.evaluation.runner import eval_loader, evaluate_model
from mula_cli.inference.batch import InferenceOptions
from mula_cli.inference.fastpath import prediction_model
from mula_cli.inference.runtime import load_exported
from mula_cli.model.weights import load_weights
from mula_cli.utils.files import write_json
from mula_cli.utils.manifests import manifest_from_json

TOLERANCE = {"points": 0.3, "labels": 0.995, "median_px": 0.0}


def score_path(model: torch.nn.Module, cache: Path, split: str, manifest, config, limit: int | None) -> dict:
    """Score one path picture by picture; keep each picture's prediction for the comparison."""
    loader = eval_loader(cache, split, config.input_size, config.stride, batch_size=1, workers=0,
                         limit=limit)
    kept = []
    start = time.perf_counter()
    result = evaluate_model(model, loader, manifest, options=InferenceOptions(),
                            on_prediction=lambda p: kept.append((p.labels.copy(), p.joints.copy(), p.people)))
    seconds = time.perf_counter() - start
    pose = result.pose or {}
    return {"images": result.images, "ms_per_picture": round(seconds / max(result.images, 1) * 1000, 1),
            "miou": round(float(result.parsing["miou"]), 3), "pose_metric": "mAP" if "map" in pose else "PCKh",
            "pose": round(float(pose["map"] if "map" in pose else pose["pckh"]), 3), "_kept": kept}


def compare(reference: list, other: list) -> dict:
    """Label agreement and joint displacement of ``other``'s pictures against ``reference``'s."""
    pixels = sum(r[0].size for r in reference)
    equal = [int((r[0] == o[0]).sum()) for r, o in zip(reference, other)]
    per_picture = [e / r[0].size for e, r in zip(equal, reference)]
    moved = []
    for r, o in zip(reference, other):
        a, b = r[1], o[1]
        both = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
        moved.append(np.linalg.norm(a[both] - b[both], axis=1))
    moved = np.concatenate(moved) if moved else np.zeros(0)
    return {"label_agreement": round(sum(equal) / pixels, 5), "lowest_picture_label_agreement": round(min(per_picture), 5),
            "joints": int(moved.size), "joints_moved_share": round(float((moved > 0).mean()), 4),
            "joint_px_percentiles": {f"p{q}": round(float(np.percentile(moved, q)), 2) for q in (50, 90, 99, 100)}}


def verdict(fp32: dict, row: dict, agreement: dict) -> dict:
    checks = {"pose_within_0.3": abs(row["pose"] - fp32["pose"]) <= TOLERANCE["points"],
              "miou_within_0.3": abs(row["miou"] - fp32["miou"]) <= TOLERANCE["points"],
              "labels_99.5": agreement["label_agreement"] >= TOLERANCE["labels"],
              "median_joint_0px": agreement["joint_px_percentiles"]["p50"] <= TOLERANCE["median_px"]}
    return {**checks, "passes": all(checks.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, action="append", required=True, help="trained weights (.pt), repeatable")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="the cache each --weights is scored on (one, or one per --weights)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="pictures per split (default all)")
    parser.add_argument("--exported", type=Path, action="append", default=[],
                        help="exported models of the first --weights to score as well (e.g. OpenVINO .xml)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_check.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    caches = args.data * len(args.weights) if len(args.data) == 1 else args.data
    report = {"what": __doc__.split("\n\n")[0], "machine": machine(), "tolerance": TOLERANCE, "models": []}
    for k, (weights, cache) in enumerate(zip(args.weights, caches)):
        model, config, extra = load_weights(weights)
        manifest = manifest_from_json(extra["manifest"])
        paths = {"fast_fp32": prediction_model(model, fast=True)[0],
                 "fast_bf16": prediction_model(model, fast=True, bf16=True)[0]}
        if k == 0:  # OpenVINO IRs in both of the CPU's precisions; other exported files as they are
            for p in args.exported:
                for precision in ("fp32", "bf16") if p.suffix == ".xml" else ("fp32",):
                    paths[f"{p.name}:{precision}"] = load_exported(p, precision=precision)
        rows = {}
        for name, runner in paths.items():
            rows[name] = score_path(runner, cache, args.split, manifest, config, args.limit)
            print(f"{weights.name} {name}: {rows[name]['pose_metric']} {rows[name]['pose']}, mIoU {rows[name]['miou']}, "
                  f"{rows[name]['ms_per_picture']} ms per picture", flush=True)
        reference = rows["fast_fp32"]
        entry = {"weights": str(weights), "preset": config.preset, "input_size": config.input_size,
                 "data": str(cache), "split": args.split, "paths": {}}
        for name, row in rows.items():
            entry["paths"][name] = {k: v for k, v in row.items() if k != "_kept"}
            if name != "fast_fp32":
                agreement = compare(reference["_kept"], row["_kept"])
                entry["paths"][name].update(vs_fp32=agreement, verdict=verdict(reference, row, agreement))
                print(f"  {name} vs fp32: {agreement}, passes: {entry['paths'][name]['verdict']['passes']}", flush=True)
        report["models"].append(entry)
        write_json(args.out, report)  # after every model: a run cut short keeps what it measured
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
