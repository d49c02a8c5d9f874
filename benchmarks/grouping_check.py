"""Grouping check: which grouping radius and which seeding rule find people best?

Decodes heatmaps and offsets of synthetic multi-person pictures, built from the ground truth with the
errors a network makes, with ``group_people`` and scores them with the multi-person mAP (MPII's radius,
the default reference). Two sets of pictures, people of very different sizes in both:

- ``generator``: the synthetic generator's own PASCAL-Person-Part pictures (``mula prepare synthetic
  --multi-person``, val split): 1-4 people of 0.3-1.1 x the picture height, overlapping, cut by the
  border, letterboxed into the 256-px input;
- ``crowd``: 4-8 of the generator's bodies (random poses and views) of 0.25-1.0 x the picture height
  standing on one floor (the small ones further back), anywhere across the picture, so that they overlap.

Three error levels (``NOISE``): ``perfect`` maps; ``noisy`` and ``very noisy``, where every peak moves
(a Gaussian error relative to the person's size), has a random height (its score), may be missed or
detected twice (a second, weaker peak nearby that votes for the same person), and every vote is off
by an error that grows with the offset's length (a network's offsets err more for big people, whose
offsets are long) plus a few pixels. Two more (``ABLATIONS``: joints detected twice only, joints
missed only) compare the seeding rules on one kind of error at a time.

Compared: the grouping radius ``cluster_distance`` as a fraction of the input side (absolute, the
same for every person; 0.3125 is the default) against a radius relative to each person's extent (the
linkage tree is cut top-down: a node is one group when the distance between its two halves' mean votes
is at most ``f`` x its extent, the RMS distance of its candidates from its mean vote); and the seeding
rule ``seed_joints``: every type (default) against PPN's (neck, then head-top; other leftovers dropped).

    python benchmarks/grouping_check.py            # 2-3 minutes on one core
    python benchmarks/grouping_check.py --pictures 60   # a quick look

Results go to ``benchmarks/results/grouping_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage

from mula_cli.codecs import partition
from mula_cli.codecs.heatmaps import grid_centers
from mula_cli.codecs.partition import PPN_SEEDS, GroupingConfig, group_people
from mula_cli.data.synthetic.body import sample_figure
from mula_cli.data.synthetic.render import PART_SLOTS
from mula_cli.data.synthetic.writer import pascal_scene
from mula_cli.evaluation.multi_person_metrics import MultiPersonPoseAP
from mula_cli.utils.files import write_json
from mula_cli.utils.manifests import load_manifest

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "grouping_check.json"
MANIFEST = load_manifest("pascal_person_part")
NAMES = MANIFEST.joints
J = len(NAMES)
SIZE, STRIDE, SIGMA = 256, 4, 7.0  # the paper's input, the heatmaps' stride and Gaussian
CELLS = SIZE // STRIDE
SUPPORT = float(np.exp(-4.6052))  # the heatmaps' cut, as encode_heatmaps

# loc: peak error per axis / person size; miss: joints not detected; double: joints detected twice;
# rel, abs: vote error per axis = rel x offset length / sqrt(2) + abs pixels
NOISE = {
    "perfect": {"loc": 0.0, "miss": 0.0, "double": 0.0, "rel": 0.0, "abs": 0.0},
    "noisy": {"loc": 0.015, "miss": 0.1, "double": 0.05, "rel": 0.15, "abs": 2.0},
    "very noisy": {"loc": 0.025, "miss": 0.2, "double": 0.1, "rel": 0.3, "abs": 4.0},
}
# one kind of error at a time, for the seeding rules only: which error favours which rule
ABLATIONS = {
    "twice only": {**NOISE["perfect"], "double": 0.1},
    "missed only": {**NOISE["perfect"], "miss": 0.2},
}

Scene = tuple[np.ndarray, "np.ndarray | None", np.ndarray]  # people (P, J, 2), boxes (P, 4), sizes (P,)


def _letterbox(width: float, height: float) -> tuple[float, np.ndarray]:
    scale = SIZE / max(width, height)
    return scale, np.array([(SIZE - width * scale) / 2, (SIZE - height * scale) / 2])


def _size(points: np.ndarray) -> float:
    """A person's size: the diagonal of the box of all its joints, those outside the picture included."""
    return float(np.hypot(*(points.max(0) - points.min(0))))


def generator_scenes(count: int, seed: int) -> list[Scene]:
    """The generator's val pictures, annotated as ``mula prepare`` annotates them, at the input's scale."""
    scenes = []
    for i in range(count):
        _, scene = pascal_scene(seed, "val", i)
        scale, shift = _letterbox(scene.segment.shape[1], scene.segment.shape[0])
        people, boxes, sizes = [], [], []
        for person in scene.people:
            mine = (scene.segment >= person.segment_base) & (scene.segment < person.segment_base + PART_SLOTS)
            ys, xs = np.nonzero(mine)
            if len(xs) == 0:  # hidden or outside: not annotated
                continue
            rows = [person.joint(name, scene.segment) for name in NAMES]
            people.append(np.array([(x, y) if inside else (np.nan, np.nan) for x, y, inside, _ in rows]) * scale + shift)
            boxes.append(np.array([xs.min(), ys.min(), xs.max(), ys.max()]) * scale + np.r_[shift, shift])
            sizes.append(_size(np.array([person.figure.points[n] for n in NAMES])) * scale)
        if people:
            scenes.append((np.stack(people), np.stack(boxes), np.array(sizes)))
    return scenes


def crowd_scenes(count: int, seed: int) -> list[Scene]:
    """4-8 of the generator's bodies of 0.25-1.0 x the picture height on one floor, anywhere across it."""
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    while len(scenes) < count:
        width = rng.uniform(320, 420)
        height = width * rng.uniform(0.62, 0.8)
        people, sizes = [], []
        for stature in np.sort(height * rng.uniform(0.25, 1.0, int(rng.integers(4, 9)))):
            figure = sample_figure(rng)
            pelvis = np.array([rng.uniform(0.05, 0.95) * width, 0.35 * height + 0.1 * stature])  # feet lower when nearer
            figure = figure.transformed(float(stature), pelvis - figure.points["pelvis"] * stature)
            points = np.array([figure.points[n] for n in NAMES])
            sizes.append(_size(points))
            points[((points < 0) | (points > [width - 1, height - 1])).any(1)] = np.nan
            people.append(points)
        keep = np.isfinite(np.stack(people)[..., 0]).sum(1) >= 2
        if keep.any():
            scale, shift = _letterbox(width, height)
            scenes.append((np.stack(people)[keep] * scale + shift, None, np.array(sizes)[keep] * scale))
    return scenes


def predicted_maps(scene: Scene, noise: dict[str, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(J, h, w) heatmaps and (2J, h, w) offsets of a network that errs as ``noise`` says."""
    people, _, sizes = scene
    peaks = []  # type, x, y, height, vote x, vote y
    for person, size in zip(people, sizes):
        labelled = np.isfinite(person).all(1)
        centroid = person[labelled].mean(0)

        def vote(at: np.ndarray, centroid: np.ndarray = centroid) -> np.ndarray:
            spread = noise["rel"] * np.linalg.norm(centroid - at) / np.sqrt(2) + noise["abs"]
            return centroid + rng.normal(0, 1, 2) * spread

        for k in np.flatnonzero(labelled):
            if rng.random() < noise["miss"]:
                continue
            at = person[k] + rng.normal(0, noise["loc"] * size, 2)
            height = rng.uniform(0.3, 1.0) if noise["loc"] else 1.0
            peaks.append((k, *at, height, *vote(at)))
            if rng.random() < noise["double"]:
                angle = rng.uniform(0, 2 * np.pi)
                twin = at + rng.uniform(0.08, 0.25) * size * np.array([np.cos(angle), np.sin(angle)])
                peaks.append((k, *twin, height * rng.uniform(0.3, 0.8), *vote(twin)))
    heat = np.zeros((J, CELLS, CELLS), np.float32)
    offsets = np.zeros((2 * J, CELLS, CELLS), np.float32)
    centres = grid_centers(CELLS, STRIDE)
    table = np.array(peaks).reshape(-1, 6)
    for k in range(J):
        mine = table[table[:, 0] == k]
        if not len(mine):
            continue
        d2 = (centres[None, :, None] - mine[:, 2, None, None]) ** 2 + (centres[None, None, :] - mine[:, 1, None, None]) ** 2
        maps = np.exp(-d2 / (2 * SIGMA**2))
        maps = np.where(maps >= SUPPORT, maps * mine[:, 3, None, None], 0.0)
        best, owner = maps.max(0), maps.argmax(0)  # where peaks overlap the higher one's vote wins
        heat[k] = best
        offsets[2 * k] = np.where(best > 0, (mine[owner, 4] - centres[None, :]) / (SIZE / 2), 0.0)
        offsets[2 * k + 1] = np.where(best > 0, (mine[owner, 5] - centres[:, None]) / (SIZE / 2), 0.0)
    return heat, offsets


def relative_cut(factor: float) -> Callable[[np.ndarray, np.ndarray, float], np.ndarray]:
    """A drop-in for ``partition._cluster`` whose radius is relative to each group's extent.

    The same centroid-linkage tree, cut top-down: a node is one group when the distance between its
    two halves' mean votes is at most ``factor`` x its extent (the RMS distance of its candidates from
    its mean vote: about a third of a person's height for a whole person); otherwise its halves are
    examined in turn. The absolute radius is ignored."""

    def cut(votes: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
        n = len(votes)
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        tree = linkage(votes.astype(np.float64), method="centroid")
        members = [[i] for i in range(n)]
        for a, b, _, _ in tree:
            members.append(members[int(a)] + members[int(b)])
        labels, stack, k = np.zeros(n, dtype=np.int64), [2 * n - 2], 0
        while stack:
            node = stack.pop()
            idx = members[node]
            extent = np.sqrt(((points[idx] - votes[idx].mean(0)) ** 2).sum(1).mean())
            if node < n or tree[node - n, 2] <= factor * extent:
                labels[idx], k = k, k + 1
            else:
                stack.extend([int(tree[node - n, 0]), int(tree[node - n, 1])])
        return labels

    return cut


@contextmanager
def clustering(cut: Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None) -> Iterator[None]:
    """Decode with ``cut`` in place of the absolute radius (None: as the library does)."""
    saved = partition._cluster
    partition._cluster = cut or saved
    try:
        yield
    finally:
        partition._cluster = saved


def score(scenes: list[Scene], maps: list[tuple[np.ndarray, np.ndarray]], config: GroupingConfig,
          cut: Callable | None = None) -> dict[str, Any]:
    metrics = {name: MultiPersonPoseAP(MANIFEST, reference=name) for name in ("mpii", "head-neck")}
    seconds = []
    with clustering(cut):
        for (people, boxes, _), (heat, offsets) in zip(scenes, maps):
            start = time.perf_counter()
            found = group_people(heat, offsets, STRIDE, SIZE, config)
            seconds.append(time.perf_counter() - start)
            pred = np.stack([p.joints for p in found]) if found else np.zeros((0, J, 3))
            for metric in metrics.values():
                metric.update(pred, people, gt_boxes=boxes, person_scores=np.array([p.score for p in found]))
    mpii, head_neck = (m.compute() for m in metrics.values())
    return {"map": round(mpii["map"], 2), "map_head_neck": round(head_neck["map"], 2),
            "people": mpii["gt_people"], "predicted": mpii["pred_people"], "found": mpii["matched_people"],
            "decode_ms_median": round(1000 * float(np.median(seconds)), 2)}


def variants(seeding_only: bool = False) -> dict[str, tuple[GroupingConfig, Callable | None]]:
    base = GroupingConfig()
    if seeding_only:
        return {"absolute 0.3125 (default)": (base, None),
                "PPN seeding (neck, head-top)": (replace(base, seed_joints=PPN_SEEDS), None)}
    out: dict[str, tuple[GroupingConfig, Callable | None]] = {}
    for radius in (0.1, 0.15, 0.25, 0.3125, 0.4):
        out[f"absolute {radius:g}" + (" (default)" if radius == base.cluster_distance else "")] = (
            replace(base, cluster_distance=radius), None)
    for factor in (0.5, 1.0, 1.5, 2.0):
        out[f"relative {factor:g}"] = (base, relative_cut(factor))
    out["PPN seeding (neck, head-top)"] = (replace(base, seed_joints=PPN_SEEDS), None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=300, help="generator pictures (crowds: two thirds of it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    sets = {"generator": generator_scenes(args.pictures, 1000 + args.seed),
            "crowd": crowd_scenes(max(1, 2 * args.pictures // 3), 2000 + args.seed)}
    results: dict[str, Any] = {}
    print(f"{'set':10} {'maps':11} {'decoding':30} {'mAP':>6} {'(head-neck)':>11} {'found/people':>13} {'predicted':>9}")
    for set_name, scenes in sets.items():
        for level, (noise_name, noise) in enumerate((NOISE | ABLATIONS).items()):
            rng = np.random.default_rng([args.seed, level])
            maps = [predicted_maps(scene, noise, rng) for scene in scenes]
            for name, (config, cut) in variants(noise_name in ABLATIONS).items():
                r = score(scenes, maps, config, cut)
                results.setdefault(set_name, {}).setdefault(noise_name, {})[name] = r
                print(f"{set_name:10} {noise_name:11} {name:30} {r['map']:6.1f} {r['map_head_neck']:11.1f} "
                      f"{r['found']:>6}/{r['people']:<6} {r['predicted']:9}", flush=True)
    doc = {"settings": vars(args) | {"input_size": SIZE, "stride": STRIDE, "sigma": SIGMA, "noise": NOISE | ABLATIONS,
                                     "pictures": {k: len(v) for k, v in sets.items()}},
           "results": results, "seconds": round(time.perf_counter() - started, 1),
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    if not args.no_save:
        write_json(RESULTS, doc)
    print(json.dumps({"seconds": doc["seconds"]}))


if __name__ == "__main__":
    main()
