"""How much each difference between mula's default test protocol and the authors' moves PCKh and mIoU.

Scores one weights file on a cache's val split with: the default protocol; the authors' protocol
(every step); the authors' protocol with one step done mula's way (so that step's effect is the
difference to "authors"); and both protocols at the paper scales. Prints a table and writes
``benchmarks/results/protocol_fidelity.json``.

    python benchmarks/protocol_fidelity.py runs/train/exp/weights/last.pt --data synthetic.h5
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from mula_cli.data.cache import CacheFile, resolve_cache
from mula_cli.evaluation.metrics import ParsingMetrics, PoseMetrics
from mula_cli.evaluation.runner import eval_loader, evaluate_model
from mula_cli.inference.authors_predict import predict_originals
from mula_cli.inference.batch import PAPER_SCALES, InferenceOptions
from mula_cli.model.weights import load_weights
from mula_cli.transforms.authors_views import ALL_STEPS, AuthorsSteps, authors_views
from mula_cli.utils.files import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "protocol_fidelity.json"


def authors_with(model, cache: Path, steps: AuthorsSteps, scales: tuple[float, ...], limit: int | None) -> dict:
    """Score with the authors' protocol, some steps switched to mula's way (one picture at a time)."""
    with CacheFile(cache) as c:
        manifest, split = c.manifest, c.split("val")
        count = len(split) if limit is None else min(limit, len(split))
        parsing, pose = ParsingMetrics(manifest.num_classes), PoseMetrics(manifest)
        size = model.config.input_size
        for i in range(count):
            img = split.image(i)
            sample = authors_views(img, size, scales, steps, raw=split.image_bytes(i))
            views = torch.from_numpy(sample["views"])[None]
            found = predict_originals(model, views, sample["windows"][None], [(img.height, img.width)], manifest,
                                      scales, steps=steps)[0]
            label = split.label(i)
            if label is not None:
                parsing.update(found.labels, torch.from_numpy(label))
            people = split.people(i)[0]
            if len(people):
                pose.update(found.joints, people[0])
    return {"miou": parsing.compute()["miou"], "pckh": pose.compute()["pckh"], "images": count}


def default_protocol(model, cache: Path, scales: tuple[float, ...], limit: int | None) -> dict:
    with CacheFile(cache) as c:
        manifest = c.manifest
    options = InferenceOptions(scales=scales)
    loader = eval_loader(cache, "val", model.config.input_size, model.config.stride, batch_size=8, workers=0,
                         limit=limit, options=options)
    result = evaluate_model(model, loader, manifest, options=options)
    return {"miou": result.parsing["miou"], "pckh": result.pose["pckh"], "images": result.images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--data", required=True, help="a single-person cache (its val split is scored)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, config, _ = load_weights(args.weights)
    model.eval()
    cache = resolve_cache(args.data)
    start = time.perf_counter()
    rows = {"default": default_protocol(model, cache, (1.0,), args.limit),
            "authors": authors_with(model, cache, ALL_STEPS, (1.0,), args.limit)}
    for step in ("placement", "crop_heatmaps", "integer_coordinates", "parsing_map_back"):
        rows[f"authors, {step} done mula's way"] = authors_with(model, cache, replace(ALL_STEPS, **{step: False}),
                                                                  (1.0,), args.limit)
    rows["default, paper scales"] = default_protocol(model, cache, PAPER_SCALES, args.limit)
    rows["authors, paper scales"] = authors_with(model, cache, ALL_STEPS, PAPER_SCALES, args.limit)
    print(f"{'protocol':48} {'PCKh':>7} {'mIoU':>7} {'dPCKh':>7} {'dmIoU':>7}")
    ref = rows["authors"]
    for name, r in rows.items():
        print(f"{name:48} {r['pckh']:7.2f} {r['miou']:7.2f} {r['pckh'] - ref['pckh']:+7.2f} {r['miou'] - ref['miou']:+7.2f}")
    doc = {"weights": str(args.weights), "model": config.preset, "width": config.width,
           "input_size": config.input_size, "data": str(cache), "steps": asdict(ALL_STEPS),
           "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
           "results": {k: {m: float(np.round(v, 3)) for m, v in r.items()} for k, r in rows.items()}}
    write_json(args.out, doc)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
