"""The best and worst pictures of an evaluation by a per-image score, for ``report.html``'s gallery.

The evaluation loop hands every image's prediction and its own scores to :class:`Gallery`: the
confusion matrix that image added (still on the device) and its pose score. Its parsing score
(the image's mIoU) is computed on the device and read a batch later, after the next batch's
predictions were read: that read is evaluation's one host synchronisation per batch, so by then
the scores are done and reading them waits for nothing. Only the pictures among the ``size`` best
or worst so far keep a small thumbnail of their prediction; their photos and ground truth are read
from the cache once, at the end (:meth:`Gallery.render`).
"""

from __future__ import annotations

import heapq
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from mula_cli.io.visualize import draw_people, draw_pose, draw_skeleton, overlay
from mula_cli.utils.manifests import DatasetManifest

if TYPE_CHECKING:
    from mula_cli.inference.batch import OriginalPrediction


@dataclass
class GalleryItem:
    """One picture of the gallery: its scores and its prediction at thumbnail size."""

    id: str
    score: float  # what the gallery ranks by: the mean of the parsing and pose scores it has (percent)
    parsing: float  # the image's own mIoU (percent; NaN without parsing ground truth)
    pose: float  # the image's PCKh@0.5, or multi-person the share of joints matched (percent; NaN = none)
    labels: np.ndarray  # predicted class ids, (h, w) thumbnail
    joints: np.ndarray  # (J, 2) predicted joints in thumbnail pixels
    joint_scores: np.ndarray  # (J,)
    people: list[np.ndarray] | None  # multi-person: (J, 3) x, y, score per person, thumbnail pixels
    panel: bytes = field(default=b"", repr=False)  # JPEG of photo | prediction | ground truth, after render()


def image_miou(confusion: torch.Tensor) -> torch.Tensor:
    """One image's mIoU in percent from the confusion matrix it added, on its device (no host sync):
    the mean over classes in its ground truth or prediction, NaN when it has no labelled pixel."""
    c = confusion.double()
    inter = c.diagonal()
    union = c.sum(0) + c.sum(1) - inter
    present = union > 0
    # no boolean indexing: it would read the mask on the host
    iou = torch.where(present, inter / union.clamp(min=1), torch.zeros_like(inter))
    return 100.0 * iou.sum() / present.sum()


class Gallery:
    """Keeps the ``size`` best and ``size`` worst pictures of an evaluation by per-image score.

    Args:
        size: pictures in each of the two rows.
        thumb: the long side of the kept thumbnails, in pixels.
    """

    def __init__(self, size: int = 6, thumb: int = 192) -> None:
        self.size, self.thumb = size, thumb
        self._pending: list[tuple[str, OriginalPrediction, torch.Tensor | None, float]] = []
        self._best: list[tuple[float, int, GalleryItem]] = []  # min-heaps: the weakest kept on top
        self._worst: list[tuple[float, int, GalleryItem]] = []
        self._order = itertools.count()
        self.scored = 0

    def add(self, image_id: str, prediction: OriginalPrediction, confusion: torch.Tensor | None,
            pose: float | None) -> None:
        """One image: its prediction, the confusion matrix it added (None without parsing ground truth) and
        its pose score as a fraction (None or NaN without one). Held until :meth:`settle`."""
        parsing = image_miou(confusion) if confusion is not None else None
        pose_pct = 100.0 * pose if pose is not None and math.isfinite(pose) else math.nan
        self._pending.append((image_id, prediction, parsing, pose_pct))

    def settle(self) -> None:
        """Read the held images' scores (one transfer) and keep those among the best or worst so far.

        Call it right after a batch's predictions were read to the host, and once at the end.
        """
        if not self._pending:
            return
        on_device = [p for _, _, p, _ in self._pending if p is not None]
        values = iter(torch.stack(on_device).cpu().tolist() if on_device else [])
        for image_id, prediction, parsing, pose in self._pending:
            miou = next(values) if parsing is not None else math.nan
            available = [v for v in (miou, pose) if math.isfinite(v)]
            if available:
                self._offer(image_id, prediction, miou, pose, sum(available) / len(available))
        self._pending.clear()

    def _offer(self, image_id: str, prediction: OriginalPrediction, miou: float, pose: float,
               score: float) -> None:
        self.scored += 1
        into_best = len(self._best) < self.size or score > self._best[0][0]
        into_worst = len(self._worst) < self.size or -score > self._worst[0][0]
        if not (into_best or into_worst):
            return
        item = self._thumbnail(image_id, prediction, miou, pose, score)  # made only for the few kept
        for keep, heap, key in ((into_best, self._best, score), (into_worst, self._worst, -score)):
            if keep:
                entry = (key, next(self._order), item)
                if len(heap) < self.size:
                    heapq.heappush(heap, entry)
                else:
                    heapq.heapreplace(heap, entry)

    def _thumbnail(self, image_id: str, prediction: OriginalPrediction, miou: float, pose: float,
                   score: float) -> GalleryItem:
        h, w = prediction.labels.shape[-2:]
        scale = self.thumb / max(h, w)  # small pictures are enlarged too, to be seen
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = torch.nn.functional.interpolate(prediction.labels[None, None].float(), size=size,
                                                mode="nearest")
        labels = small[0, 0].to(torch.uint8).cpu().numpy()
        people = None if prediction.people is None else \
            [np.concatenate([p.joints[:, :2] * scale, p.joints[:, 2:]], axis=1) for p in prediction.people]
        return GalleryItem(image_id, score, miou, pose, labels, np.asarray(prediction.joints) * scale,
                           np.asarray(prediction.scores), people)

    def items(self) -> tuple[list[GalleryItem], list[GalleryItem]]:
        """The best pictures (best first) and the worst (worst first); none in both."""
        best = [item for _, _, item in sorted(self._best, key=lambda e: (-e[0], e[1]))]
        worst = [item for _, _, item in sorted(self._worst, key=lambda e: (-e[0], e[1]))]
        if self.scored < 2 * self.size:  # too few pictures for two rows of their own: split them in half
            ranked = {item.id: item for item in best + worst[::-1]}.values()
            ranked = sorted(ranked, key=lambda item: -item.score)
            half = (len(ranked) + 1) // 2
            return ranked[:half], ranked[half:][::-1]
        return best, worst

    def render(self, cache_path: Path, split: str, manifest: DatasetManifest
               ) -> tuple[list[GalleryItem], list[GalleryItem]]:
        """Draw every kept picture's panel from the cache's photo and ground truth; returns :meth:`items`."""
        from mula_cli.data.cache import CacheFile

        best, worst = self.items()
        with CacheFile(cache_path) as cache:
            data = cache.split(split)
            index = {sid: i for i, sid in enumerate(data.ids)}
            for item in best + worst:
                i = index[item.id]
                item.panel = _panel(item, data.image(i), data.label(i), data.people(i)[0], manifest)
        return best, worst


def _panel(item: GalleryItem, photo: Image.Image, truth: np.ndarray | None, gt_people: np.ndarray,
           manifest: DatasetManifest) -> bytes:
    """Photo | predicted parsing and skeleton | ground-truth parsing and skeleton, as a JPEG."""
    h, w = item.labels.shape
    scale = w / photo.width
    photo = photo.resize((w, h), Image.Resampling.BILINEAR)
    predicted = draw_pose(overlay(photo, item.labels, manifest), manifest, item.joints, item.joint_scores,
                          item.people)
    truth_tile = photo if truth is None else \
        overlay(photo, np.asarray(Image.fromarray(truth).resize((w, h), Image.Resampling.NEAREST)), manifest)
    people = np.asarray(gt_people, np.float64) * scale
    if manifest.multi_person:
        ones = np.ones(people.shape[:2] + (1,))
        truth_tile = draw_people(truth_tile, [np.concatenate([p, o], axis=1) for p, o in zip(people, ones)],
                                 manifest)
    elif len(people):
        truth_tile = draw_skeleton(truth_tile, people[0], manifest)
    sheet = Image.new("RGB", (3 * w + 8, h), (255, 255, 255))
    for k, tile in enumerate((photo, predicted, truth_tile)):
        sheet.paste(tile, (k * (w + 4), 0))
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
