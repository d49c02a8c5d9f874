"""Benchmark the synthetic data generator: images/s per core, and image size statistics.

Generates a LIP-layout tree (and a smaller PASCAL-layout one) in a temporary folder, prints the rates
and saves them to ``benchmarks/results/synthetic_speed.json``. With ``--sheet PATH`` it also draws a
contact sheet from the files on disk (image | label map in the manifest palette | skeleton from the
pose CSV, occluded joints hollow) to check by eye that the people look like people.

    python benchmarks/synthetic_speed.py [--images 300] [--workers 1] [--sheet /tmp/synthetic_sheet.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mula_cli.data.synthetic.writer import generate_lip_tree, generate_pascal_tree
from mula_cli.utils.manifests import DatasetManifest, load_manifest

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic_speed.json"


def size_stats(folder: Path) -> dict[str, float]:
    sizes = np.array([Image.open(p).size for p in sorted(folder.glob("*.jpg"))], dtype=float)
    grayscale = sum(Image.open(p).mode == "L" for p in folder.glob("*.jpg"))
    return {"images": len(sizes), "mean_width": round(sizes[:, 0].mean(), 1), "mean_height": round(sizes[:, 1].mean(), 1),
            "min_long_side": int(sizes.max(1).min()), "max_long_side": int(sizes.max(1).max()),
            "mean_pixels": round(float(np.prod(sizes, axis=1).mean()), 0), "grayscale": int(grayscale)}


def contact_sheet(root: Path, manifest: DatasetManifest, out: Path, count: int = 24, columns: int = 4) -> None:
    """Image, colourised label map and CSV skeleton for the first ``count`` training images."""
    palette = np.array(manifest.palette, dtype=np.uint8)
    rows = list(csv.reader((root / "TrainVal_pose_annotations/lip_train_set.csv").open()))[:count]
    tiles = []
    for row in rows:
        image = Image.open(root / "TrainVal_images/train_images" / row[0]).convert("RGB")
        label = np.asarray(Image.open(root / "TrainVal_parsing_annotations/train_segmentations" /
                                      f"{row[0][:-4]}.png"))
        skeleton = image.copy()
        draw = ImageDraw.Draw(skeleton)
        joints = {}
        for j in range(manifest.num_joints):
            x, y, v = row[1 + 3 * j: 4 + 3 * j]
            if x != "nan":
                joints[j] = (int(x), int(y), v == "1")
        for a, b in manifest.skeleton:
            if a in joints and b in joints:
                names = manifest.joints[a] + manifest.joints[b]
                colour = (255, 60, 60) if "R-" in names else (60, 255, 60) if "L-" in names else (255, 255, 0)
                draw.line([joints[a][:2], joints[b][:2]], fill=colour, width=2)
        for x, y, occluded in joints.values():
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=(255, 255, 255), fill=None if occluded else (255, 255, 255))
        w, h = image.size
        tile = Image.new("RGB", (3 * w + 4, h), (40, 40, 40))
        for k, part in enumerate((image, Image.fromarray(palette[label]), skeleton)):
            tile.paste(part, (k * (w + 2), 0))
        tiles.append(tile)
    cell_w, cell_h = max(t.size[0] for t in tiles) + 8, max(t.size[1] for t in tiles) + 8
    sheet = Image.new("RGB", (columns * cell_w, -(-len(tiles) // columns) * cell_h), (255, 255, 255))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * cell_w, (k // columns) * cell_h))
    sheet.save(out)
    print(f"contact sheet of {len(tiles)} images: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="LIP-layout images to generate")
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", type=Path, default=None, help="also save a contact sheet here")
    args = parser.parse_args()

    lip, pascal = load_manifest("synthetic"), load_manifest("synthetic_multi_person")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "lip"
        cpu = time.process_time()
        stats = generate_lip_tree(root, {"train": args.images, "val": 0, "test": 0}, args.seed, lip,
                                  workers=args.workers)
        cpu_rate = args.images / max(time.process_time() - cpu, 1e-9)
        lip_sizes = size_stats(root / "TrainVal_images/train_images")
        if args.sheet is not None:
            contact_sheet(root, lip, args.sheet)
        n_multi = max(args.images // 3, 1)
        multi = generate_pascal_tree(Path(tmp) / "pascal", {"train": n_multi, "val": 0}, args.seed, pascal,
                                     workers=args.workers)
        pascal_sizes = size_stats(Path(tmp) / "pascal" / "JPEGImages")

    result = {
        "benchmark": "synthetic generation (generate + encode + write every file)",
        "workers": args.workers,
        "lip": {"images": stats.images, "seconds": round(stats.seconds, 3),
                "images_per_s": round(stats.images_per_s, 1),
                "images_per_s_per_core": round(stats.images_per_s / args.workers, 1),
                "main_process_cpu_images_per_s": round(cpu_rate, 1) if args.workers == 1 else None,
                "sizes": lip_sizes},
        "pascal": {"images": multi.images, "seconds": round(multi.seconds, 3),
                   "images_per_s": round(multi.images_per_s, 1), "sizes": pascal_sizes},
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
