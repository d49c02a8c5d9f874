"""Evaluation metrics shared by training-time validation and ``mula evaluate``.

Definitions follow the LIP convention that published numbers use (see the README):

- Parsing: one confusion matrix ``H[g, p]`` accumulated over the whole set at each image's
  original resolution (ground truth outside ``[0, K)``, e.g. 255, ignored). PixelAcc, MeanAcc,
  mIoU, frequency-weighted IoU. A class absent from both ground truth and prediction has no IoU
  and is skipped in the mean (nan-mean, as the authors' code; SCHP/CE2P count it as 0; both
  agree on full LIP val where every class occurs).
- Pose: PCKh with head size ``||head-top - upper-neck||`` (no 0.6 factor); an image whose head
  joints are not both labelled is excluded; a joint counts only where the ground truth labels
  it, and a missing (NaN) prediction of a labelled joint counts as a miss. Groups are the plain
  mean of their joints' PCKh; "U.Body" and "Avg" pool every counted
  (image, joint) of their joints. Also a PCKh curve over thresholds and PCK normalised by the
  torso size (distance between the mean of the manifest's upper and lower torso joints).

Both accumulators hold only sums, so ranks of a distributed run add them (never average ratios).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mula_cli.utils.manifests import DatasetManifest

PCK_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(11))  # 0.00 .. 0.50


def _all_reduce_(tensor: Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)


class ParsingMetrics:
    """Confusion-matrix accumulator for parsing.

    Args:
        num_classes: K, classes including background.
        device: where the matrix lives (keep it on the GPU during GPU evaluation).
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add one image (or a batch) of predicted and ground-truth class ids of the same shape; returns
        the confusion matrix of what was added (on the device, unread: per-image scores without a sync)."""
        k = self.num_classes
        target = target.to(self.confusion.device).long().flatten()
        pred = pred.to(self.confusion.device).long().flatten()
        valid = (target >= 0) & (target < k)
        added = torch.bincount(target[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
        self.confusion += added
        return added

    def all_reduce(self) -> None:
        _all_reduce_(self.confusion)

    def compute(self) -> dict[str, object]:
        """PixelAcc, MeanAcc, mIoU, fwIoU (percent) and per-class accuracy and IoU (percent, NaN = undefined)."""
        h = self.confusion.double().cpu().numpy()
        correct = np.diag(h)
        gt = h.sum(axis=1)
        pred = h.sum(axis=0)
        total = h.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            acc = correct / gt
            iou = correct / (gt + pred - correct)
            freq = gt / total if total else np.zeros_like(gt)
        defined = np.isfinite(iou)
        return {
            "pixel_acc": 100.0 * correct.sum() / total if total else float("nan"),
            "mean_acc": 100.0 * nanmean(acc),
            "miou": 100.0 * nanmean(iou),
            "fwiou": 100.0 * float((freq[defined] * iou[defined]).sum()),
            "class_acc": [100.0 * float(v) for v in acc],
            "class_iou": [100.0 * float(v) for v in iou],
            "pixels": int(total),
        }


def nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there is none (a class or joint without ground truth)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


class PoseMetrics:
    """PCKh / PCK accumulator for single-person pose.

    Args:
        manifest: gives the head joints, groups, upper-body and average joint sets, torso joints.
        thresholds: normalised distance thresholds of the curve (must include 0.5).
        device: where the counts live: the model's device, so that a distributed run reduces them with
            the process group's backend for it (NCCL has no CPU backend).
    """

    def __init__(self, manifest: DatasetManifest, thresholds: tuple[float, ...] = PCK_THRESHOLDS,
                 device: torch.device | str = "cpu") -> None:
        if not any(abs(t - 0.5) < 1e-9 for t in thresholds):
            raise ValueError("the PCK thresholds must include 0.5 (the headline PCKh@0.5)")
        self.manifest = manifest
        self.thresholds = np.asarray(thresholds, np.float64)
        j, t = manifest.num_joints, len(thresholds)
        # hits[t, j], counts[j] for head-normalised and torso-normalised distances; images[0] = used,
        # images[1] = excluded (no head size)
        self.state = torch.zeros(2 * t * j + 2 * j + 2, dtype=torch.int64, device=device)
        self._shape = (t, j)

    def _views(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        t, j = self._shape
        s = self.state
        return (s[: t * j].view(t, j), s[t * j: t * j + j], s[t * j + j: 2 * t * j + j].view(t, j),
                s[2 * t * j + j: 2 * t * j + 2 * j], s[-2:])

    def update(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one image: predicted and ground-truth (J, 2) joints in original pixels (NaN = unlabelled).

        Returns the image's own PCKh@0.5: the fraction of its labelled joints of the average within half
        its head size (NaN when the image is excluded or labels none of them), e.g. to rank pictures.
        """
        pred = np.asarray(pred, np.float64)
        gt = np.asarray(gt, np.float64)
        hits, counts, torso_hits, torso_counts, images = self._views()
        spec = self.manifest.pckh
        labelled = np.isfinite(gt).all(axis=1)
        dist = np.linalg.norm(pred - gt, axis=1)
        own = float("nan")
        if labelled[spec.head_top] and labelled[spec.neck]:
            head = float(np.linalg.norm(gt[spec.head_top] - gt[spec.neck]))
            if head > 0:
                self._add(hits, counts, dist / head, labelled)
                images[0] += 1
                average = labelled[list(spec.average)]
                with np.errstate(invalid="ignore"):  # a NaN prediction is a miss
                    within = (dist[list(spec.average)] / head <= 0.5) & average
                own = float(within.sum() / average.sum()) if average.any() else own
            else:
                images[1] += 1
        else:
            images[1] += 1
        torso = self._torso_size(gt, labelled)
        if torso is not None:
            self._add(torso_hits, torso_counts, dist / torso, labelled)
        return own

    def _add(self, hits: Tensor, counts: Tensor, normalised: np.ndarray, labelled: np.ndarray) -> None:
        # Every labelled joint counts; a missing prediction (NaN, e.g. from an external CSV) is a
        # miss, as in the authors' scorer, never a joint left out of the count.
        with np.errstate(invalid="ignore"):
            within = (normalised[None, :] <= self.thresholds[:, None]) & (labelled & np.isfinite(normalised))[None, :]
        hits += torch.from_numpy(within.astype(np.int64)).to(hits.device)
        counts += torch.from_numpy(labelled.astype(np.int64)).to(counts.device)

    def _torso_size(self, gt: np.ndarray, labelled: np.ndarray) -> float | None:
        torso = self.manifest.raw.get("torso")
        if not torso:
            return None
        upper, lower = torso["upper"], torso["lower"]
        if not (labelled[upper].all() and labelled[lower].all()):
            return None
        size = float(np.linalg.norm(gt[upper].mean(axis=0) - gt[lower].mean(axis=0)))
        return size if size > 0 else None

    def all_reduce(self) -> None:
        _all_reduce_(self.state)

    def group_curves(self) -> dict[str, dict[str, float]]:
        """Each joint group's PCKh (percent) at every threshold: the curve of :meth:`compute`'s groups
        (its ``curve`` is the pooled Avg's). For plots; not part of metrics.json."""
        t, _ = self._shape
        hits, counts = (v.cpu().numpy().astype(np.float64) for v in self._views()[:2])
        with np.errstate(divide="ignore", invalid="ignore"):
            per_joint = 100.0 * hits / counts[None, :]
        return {name: {f"{self.thresholds[i]:.2f}": nanmean(per_joint[i, list(js)]) for i in range(t)}
                for name, js in self.manifest.pckh.groups.items()}

    def compute(self) -> dict[str, object]:
        """PCKh@0.5 per joint, groups, U.Body, Avg (percent), the PCKh curve and torso PCK@0.2."""
        hits, counts, torso_hits, torso_counts, images = (v.cpu().numpy().astype(np.float64) for v in self._views())
        spec = self.manifest.pckh
        headline = int(np.argmin(np.abs(self.thresholds - 0.5)))
        with np.errstate(divide="ignore", invalid="ignore"):
            per_joint = 100.0 * hits / counts[None, :]

        def pooled(joints, h=hits, c=counts, t=headline) -> float:
            total = c[list(joints)].sum()
            return float(100.0 * h[t, list(joints)].sum() / total) if total else float("nan")

        groups = {name: nanmean(per_joint[headline, list(js)]) for name, js in spec.groups.items()}
        torso_t = int(np.argmin(np.abs(self.thresholds - 0.2)))
        all_joints = range(self.manifest.num_joints)
        return {
            "pckh": pooled(spec.average),
            "joint_pckh": [float(v) for v in per_joint[headline]],
            "groups": {**groups, "U.Body": pooled(spec.upper_body), "Avg": pooled(spec.average)},
            "curve": {f"{t:.2f}": pooled(spec.average, t=i) for i, t in enumerate(self.thresholds)},
            "pck_torso@0.2": pooled(all_joints, torso_hits, torso_counts, torso_t),
            "images": int(images[0]),
            "excluded_images": int(images[1]),
        }
