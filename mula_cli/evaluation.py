"""Scoring a model on a cache split: what ``mula evaluate`` and training-time validation both run.

Each image is letterboxed (official test transform), predicted in batches on the model's device,
mapped back to its original resolution and scored there with :mod:`mula_cli.metrics`. In a
distributed run every rank scores a disjoint shard (no padding duplicates) and the metric sums
are added across ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mula_cli.data.dataset import MulaDataset, SampleConfig, collate
from mula_cli.data.transforms import apply_affine, invert_affine
from mula_cli.inference import InferenceOptions, predict_batch, to_original
from mula_cli.manifests import DatasetManifest
from mula_cli.metrics import ParsingMetrics, PoseMetrics


@dataclass
class ImagePrediction:
    """One image's prediction at its original resolution (for saving)."""

    id: str
    labels: np.ndarray  # (H, W) uint8 class ids
    joints: np.ndarray  # (J, 2) x, y in original pixels
    scores: np.ndarray  # (J,)


@dataclass
class EvalResult:
    parsing: dict[str, object]
    pose: dict[str, object] | None
    images: int
    seconds: float

    def summary(self) -> dict[str, float]:
        """The headline numbers (for logs and ``best.pt`` selection)."""
        out = {"pixel_acc": float(self.parsing["pixel_acc"]), "mean_acc": float(self.parsing["mean_acc"]),
               "miou": float(self.parsing["miou"])}
        if self.pose is not None:
            out["pckh"] = float(self.pose["pckh"])
        return out


def eval_loader(cache_path: Path, split: str, input_size: int, stride: int, *, batch_size: int, workers: int,
                limit: int | None = None, rank: int = 0, world: int = 1) -> DataLoader:
    """Batches of letterboxed samples with their original-size ground truth; shard ``rank`` of ``world``."""
    dataset = MulaDataset(cache_path, split, SampleConfig(input_size=input_size, stride=stride, train=False),
                          limit=limit)
    if world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: DataLoader, manifest: DatasetManifest, *,
                   options: InferenceOptions = InferenceOptions(), amp_dtype: torch.dtype | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_prediction: Callable[[ImagePrediction], None] | None = None) -> EvalResult:
    """Score ``model`` on every batch of ``loader`` (from :func:`eval_loader`).

    Args:
        model: the model (its device is used; it is put in eval mode and left there).
        loader: evaluation batches.
        manifest: classes, joints, mirror pairs and metric definitions of the dataset.
        options: test-time flip and scales.
        amp_dtype: autocast dtype on CUDA (None = full precision).
        progress: called with the number of images done after each batch.
        on_prediction: receives each image's prediction at original resolution (e.g. to save it).
    """
    model.eval()
    device = next(model.parameters()).device
    parsing = ParsingMetrics(manifest.num_classes, device=device)
    pose = None if manifest.multi_person else PoseMetrics(manifest, device=device)
    images = 0
    start = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None and device.type == "cuda"):
            pred = predict_batch(model, x, manifest, options)
        coords, scores = pred.joints.cpu().numpy(), pred.scores.float().cpu().numpy()
        for i in range(x.shape[0]):
            affine = batch["affine"][i].numpy()
            h, w = (int(v) for v in batch["orig_size"][i])
            labels = to_original(pred.labels[i], affine, (h, w))
            gt = batch["orig_parsing"][i]
            if gt is not None:
                parsing.update(labels, torch.from_numpy(gt))
            joints = apply_affine(coords[i].astype(np.float64), invert_affine(affine))
            people = batch["orig_joints"][i]
            if pose is not None and len(people):
                pose.update(joints, people[0])
            if on_prediction is not None:
                on_prediction(ImagePrediction(batch["id"][i], labels.to(torch.uint8).cpu().numpy(), joints, scores[i]))
        images += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
    parsing.all_reduce()
    if pose is not None:
        pose.all_reduce()
    count = torch.tensor([images], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
    return EvalResult(parsing.compute(), pose.compute() if pose is not None else None, int(count.item()),
                      time.perf_counter() - start)
