"""Scoring a model on a cache split: what ``mula evaluate`` and training-time validation both run.

Each image is letterboxed (official test transform; at every test scale for multi-scale testing),
predicted in batches on the model's device, mapped back to its original resolution and scored there
with :mod:`mula_cli.evaluation.metrics`; or processed exactly as the authors' test code does
(``protocol="authors"``, :mod:`mula_cli.evaluation.authors_protocol`). In a
distributed run every rank scores a disjoint shard (no padding duplicates) and the metric sums
are added across ranks.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mula_cli.codecs.partition import Person
from mula_cli.data.dataset import MulaDataset, SampleConfig, collate
from mula_cli.data.loader import WorkerLoader
from mula_cli.evaluation.authors_protocol import as_their_reader_reads
from mula_cli.evaluation.metrics import ParsingMetrics, PoseMetrics
from mula_cli.evaluation.multi_person_metrics import MultiPersonPoseAP
from mula_cli.inference.authors_predict import predict_originals as predict_authors
from mula_cli.inference.batch import (
    AUTHORS,
    InferenceOptions,
    OriginalPrediction,
    ScaleViews,
    predict_batch,
    to_originals,
)
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest

if TYPE_CHECKING:
    from mula_cli.plots.gallery import Gallery


@dataclass
class ImagePrediction:
    """One image's prediction at its original resolution (for saving)."""

    id: str
    labels: np.ndarray  # (H, W) uint8 class ids
    joints: np.ndarray  # (J, 2) x, y in original pixels
    scores: np.ndarray  # (J,)
    people: list[Person] | None = None  # multi-person models: each person's joints in original pixels


@dataclass
class EvalResult:
    parsing: dict[str, object]
    pose: dict[str, object] | None
    images: int
    seconds: float
    # for plots, not in metrics.json: the parsing confusion matrix (ground truth x prediction) and each
    # joint group's PCKh curve (single-person pose)
    confusion: np.ndarray | None = None
    group_curves: dict[str, dict[str, float]] | None = None

    def summary(self) -> dict[str, float]:
        """The headline numbers (for logs and ``best.pt`` selection)."""
        out = {"pixel_acc": float(self.parsing["pixel_acc"]), "mean_acc": float(self.parsing["mean_acc"]),
               "miou": float(self.parsing["miou"])}
        if self.pose is not None and "map" in self.pose:
            out["map"] = float(self.pose["map"])
        elif self.pose is not None:
            out["pckh"] = float(self.pose["pckh"])
        return out


def _predict_originals(model: torch.nn.Module, x: torch.Tensor, batch: dict, manifest: DatasetManifest,
                       options: InferenceOptions, amp_dtype: torch.dtype | None) -> list[OriginalPrediction]:
    """Each picture of a batch at its original resolution (the network under ``amp_dtype`` autocast,
    everything after it in float32)."""
    sizes = [tuple(int(v) for v in hw) for hw in batch["orig_size"]]
    if options.protocol == AUTHORS:
        return predict_authors(model, batch["views"].to(x.device), batch["windows"].numpy(), sizes, manifest,
                               options.scales, options.blur_sigma, amp_dtype=amp_dtype)
    views = None
    if "views" in batch:
        views = ScaleViews(batch["views"].to(x.device), batch["view_affines"].numpy(), batch["affine"].numpy())
    pred = predict_batch(model, x, manifest, options, views=views, amp_dtype=amp_dtype)
    return to_originals(pred, batch["affine"].numpy(), sizes, clip=False)


def eval_loader(cache_path: Path, split: str, input_size: int, stride: int, *, batch_size: int, workers: int,
                limit: int | None = None, rank: int = 0, world: int = 1,
                options: InferenceOptions | None = None) -> DataLoader:
    """Batches of letterboxed samples with their original-size ground truth; shard ``rank`` of ``world``.

    ``options`` says which test scales and protocol the samples are prepared for (the picture at
    each scale travels with the sample).
    """
    options = options or InferenceOptions()
    config = SampleConfig(input_size=input_size, stride=stride, train=False, test_scales=tuple(options.scales),
                          test_protocol=options.protocol)
    dataset = MulaDataset(cache_path, split, config, limit=limit)
    if world > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world))
    return WorkerLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: DataLoader, manifest: DatasetManifest, *,
                   options: InferenceOptions = InferenceOptions(), amp_dtype: torch.dtype | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_prediction: Callable[[ImagePrediction], None] | None = None,
                   pose_reference: str = "mpii", map_protocol: str = "strict",
                   gallery: Gallery | None = None) -> EvalResult:
    """Score ``model`` on every batch of ``loader`` (from :func:`eval_loader`).

    Args:
        model: the model (its device is used; it is put in eval mode and left there).
        loader: evaluation batches.
        manifest: classes, joints, mirror pairs and metric definitions of the dataset.
        options: test-time flip and scales.
        amp_dtype: autocast dtype of the network's forward pass, on the model's device (None = full
            precision); decoding and scoring run in float32 either way.
        progress: called with the number of images done after each batch.
        on_prediction: receives each image's prediction at original resolution (e.g. to save it).
        pose_reference: multi-person mAP's reference distance (see mula_cli.evaluation.multi_person_metrics).
        map_protocol: multi-person mAP's edge rules, strict or mpii (see mula_cli.evaluation.multi_person_metrics).
        gallery: receives every image's prediction and own scores, to keep the best and worst pictures.
    """
    model.eval()
    # the fast path keeps its folded weights as buffers: it may have no parameters at all
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    parsing = ParsingMetrics(manifest.num_classes, device=device)
    config = getattr(model, "config", None)
    if manifest.multi_person and config is not None and config.partition:
        if options.protocol == AUTHORS:
            raise MulaError("--protocol authors is the authors' single-person LIP test; multi-person models "
                            "use the default protocol")
        pose: PoseMetrics | MultiPersonPoseAP | None = MultiPersonPoseAP(manifest, reference=pose_reference,
                                                                         protocol=map_protocol)
    else:
        pose = None if manifest.multi_person else PoseMetrics(manifest, device=device)
    images = 0
    start = time.perf_counter()
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        predictions = _predict_originals(model, x, batch, manifest, options, amp_dtype)
        if gallery is not None:  # the previous batch's scores, finished by the host read of these predictions
            gallery.settle()
        for i, found in enumerate(predictions):
            gt = batch["orig_parsing"][i]
            added = parsing.update(found.labels, torch.from_numpy(gt)) if gt is not None else None
            people = batch["orig_joints"][i]
            own = None
            if isinstance(pose, MultiPersonPoseAP):
                own = pose.update([p.joints for p in found.people], people, gt_boxes=batch["orig_boxes"][i],
                                  person_scores=np.array([p.score for p in found.people]))
            elif pose is not None and len(people):
                # the authors' protocol scores the joints as their CSV reader reads them back
                scored = as_their_reader_reads(found.joints) if options.protocol == AUTHORS else found.joints
                own = pose.update(scored, people[0])
            if gallery is not None:
                gallery.add(batch["id"][i], found, added, own)
            if on_prediction is not None:
                on_prediction(ImagePrediction(batch["id"][i], found.labels.to(torch.uint8).cpu().numpy(), found.joints,
                                              found.scores, found.people))
        images += x.shape[0]
        if progress is not None:
            progress(x.shape[0])
    if gallery is not None:
        gallery.settle()
    parsing.all_reduce()
    if pose is not None:
        pose.all_reduce()  # multi-person AP gathers every rank's detections rather than summing
    count = torch.tensor([images], device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
    curves = pose.group_curves() if hasattr(pose, "group_curves") else None
    return EvalResult(parsing.compute(), pose.compute() if pose is not None else None, int(count.item()),
                      time.perf_counter() - start, parsing.confusion.cpu().numpy(), curves)
