"""Benchmark the data path: prepare throughput and the training dataset's samples/s on one core.

Generates a synthetic LIP-layout tree, caches it with ``prepare`` (one worker and several), then
times ``MulaDataset.__getitem__`` at 256x256 with the full training augmentation (rotation, scale,
crop, flip, heatmap targets) in one process with one thread, which is what one DataLoader worker
does: with the warp in the worker (PIL) and deferred to the device in batches (then also the batch
warp's own time). Prints and saves ``benchmarks/results/data_speed.json``.

    python benchmarks/data_speed.py [--images 400] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mula_cli.data.dataset import MulaDataset, SampleConfig
from mula_cli.data.prepare import prepare_dataset
from mula_cli.data.synthetic.writer import generate_lip_tree
from mula_cli.transforms.affine import NO_AUGMENT, AugmentConfig
from mula_cli.utils.manifests import load_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "data_speed.json"


def getitem_rate(cache: Path, config: SampleConfig, epochs: int) -> float:
    dataset = MulaDataset(cache, "train", config)
    dataset[0]  # open the file outside the timing
    start = time.perf_counter()
    n = 0
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            dataset[i]
            n += 1
    return n / (time.perf_counter() - start)


def device_warp_ms(cache: Path, batch: int) -> dict[str, float]:
    """Time of mula_cli.data.device_warp.warp_images for one batch, on the CPU and on CUDA if present."""
    from mula_cli.data.dataset import collate
    from mula_cli.data.device_warp import warp_images

    dataset = MulaDataset(cache, "train", SampleConfig(defer_warp=True))
    data = collate([dataset[i % len(dataset)] for i in range(batch)])
    timings = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        args = [[t.to(device) for t in data["crop"]], data["input_to_crop"].to(device)]
        for _ in range(2):
            warp_images(*args, 256)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(5):
            warp_images(*args, 256)
        if device == "cuda":
            torch.cuda.synchronize()
        timings[device] = round((time.perf_counter() - start) / 5 * 1e3, 2)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = load_manifest("synthetic")
    results: dict[str, object] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                  "torch": torch.__version__, "images": args.images}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        stats = generate_lip_tree(root, {"train": args.images, "val": 20}, 0, manifest)
        results["synthetic_images_per_s"] = round(stats.images_per_s, 1)
        for workers in (1, os.cpu_count() or 1):
            t0 = time.perf_counter()
            result = prepare_dataset(manifest, root, Path(tmp) / f"c{workers}.h5", workers=workers)
            results[f"prepare_samples_per_s_workers_{workers}"] = round(result.total / (time.perf_counter() - t0), 1)
        cache = Path(tmp) / "c1.h5"
        results["device_warp_batch_of_32_ms"] = device_warp_ms(cache, 32)
        results["getitem_per_core"] = {
            "deferred_warp_worker": round(getitem_rate(cache, SampleConfig(defer_warp=True), args.epochs), 1),
            "full_augmentation_bilinear": round(getitem_rate(cache, SampleConfig(), args.epochs), 1),
            "full_augmentation_bicubic": round(
                getitem_rate(cache, SampleConfig(augment=AugmentConfig(bicubic=True)), args.epochs), 1),
            "no_augmentation": round(getitem_rate(cache, SampleConfig(augment=NO_AUGMENT), args.epochs), 1),
            "evaluation_letterbox": round(getitem_rate(cache, SampleConfig(train=False), args.epochs), 1),
        }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results["load_average_1min"] = load
    print(json.dumps(results, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
