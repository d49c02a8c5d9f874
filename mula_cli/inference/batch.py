"""Test-time inference on letterboxed batches: the official protocol plus flip and multi-scale options.

Official protocol (architecture.md, "Test protocol"): the image's long edge is resized to the
input size and centred on grey; pose = final-stage heatmaps of the image and its mirror
(channels swapped back) averaged, resized to the input size, blurred (sigma 3), argmax; parsing
= final-stage argmax of a single pass, mapped back with nearest resampling.

Options: ``parsing_flip`` averages the parsing logits with the mirror's too. ``scales`` tests the
picture at several sizes, as the authors' test code does: for each scale s the picture is resized
to a long edge of ``s * S`` and the fixed S x S window centred on it is cut (grey padding,
:func:`mula_cli.transforms.affine.scale_views`); every window's heatmaps and logits are mapped back
into the base window (the scale-1 letterbox, i.e. the picture) and averaged there: heatmaps before
the blur and argmax, logits before the argmax. Where a window does not cover the picture (the
centre crop of a scale above 1) only the windows that see it are averaged.

Multi-person models (the partition branch) also fuse their centroid offsets the same way (flip:
mirrored back with x negated; scales: sampled into the base window and divided by the view's
scale), and every image's joint candidates are grouped into people (:func:`mula_cli.codecs.partition.group_people`).

``protocol="authors"`` replaces all of this with the authors' exact test-time processing
(:mod:`mula_cli.evaluation.authors_protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mula_cli.codecs.heatmaps import decode_official, flip_heatmaps, flip_logits
from mula_cli.codecs.partition import GroupingConfig, Person, flip_offsets, group_people
from mula_cli.model.loss import upsample_logits
from mula_cli.transforms.affine import apply_affine, invert_affine
from mula_cli.utils.devices import autocast
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest

DEFAULT = "default"
AUTHORS = "authors"
PROTOCOLS = (DEFAULT, AUTHORS)
# The test scales of the authors' related pose code (Pose Partition Networks, NieXC/pytorch-ppn);
# their MuLA release tests at scale 1 only.
PAPER_SCALES = (0.7, 0.85, 1.0, 1.15, 1.3)


@dataclass(frozen=True)
class InferenceOptions:
    """What to average at test time. Defaults are the authors' released protocol (one scale)."""

    pose_flip: bool = True
    parsing_flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    blur_sigma: float = 3.0
    protocol: str = DEFAULT
    grouping: GroupingConfig = field(default_factory=GroupingConfig)  # multi-person decoding (partition branch)


@dataclass
class ScaleViews:
    """The picture at each test scale (from :func:`mula_cli.transforms.affine.scale_views`), batched."""

    images: Tensor  # (B, n, 3, S, S) uint8 windows
    affines: np.ndarray  # (B, n, 2, 3) original -> window pixels
    base: np.ndarray  # (B, 2, 3) original -> base window (scale-1 letterbox) pixels


@dataclass
class BatchPrediction:
    """Predictions for a batch, in base-window (scale-1 letterbox) pixels of the input size."""

    labels: Tensor  # (B, S, S) int64 parsing argmax
    probabilities: Tensor  # (B, K, S, S) float softmax of the fused logits
    joints: Tensor  # (B, J, 2) x, y
    scores: Tensor  # (B, J) heatmap maxima after blurring
    heatmaps: Tensor  # (B, J, S/s, S/s) fused joint heatmaps (no background map)
    offsets: Tensor | None = None  # (B, 2J, S/s, S/s) fused centroid offsets (partition branch)
    people: list[list[Person]] | None = None  # each image's people (partition branch), base-window pixels


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales``: comma-separated factors, or ``paper`` for :data:`PAPER_SCALES`."""
    if text.strip().lower() == "paper":
        return PAPER_SCALES
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or any(not 0.25 <= s <= 4 for s in scales):
        raise MulaError(f"--scales {text!r} must be comma-separated factors between 0.25 and 4 "
                        "(e.g. 0.75,1,1.25), or 'paper' for 0.7,0.85,1,1.15,1.3")
    return scales


def _view_outputs(model: torch.nn.Module, x: Tensor, manifest: DatasetManifest, options: InferenceOptions,
                  amp_dtype: torch.dtype | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Final-stage joint heatmaps (B, J, h, w), parsing logits (B, K, h, w) and centroid offsets
    (B, 2J, h, w; None without the partition branch) of one window each, flip-averaged as the options ask,
    in float32 (the network alone runs under ``amp_dtype`` autocast)."""
    joints = model.config.num_joints
    flip = options.pose_flip or options.parsing_flip
    with autocast(x.device, amp_dtype):
        out = model(torch.cat([x, x.flip(-1)]) if flip else x)
    pose, parsing = out.pose[-1].float(), out.parsing[-1].float()
    offsets = out.offsets[-1].float() if out.offsets else None
    b = x.shape[0]
    heat, logits = pose[:b, :joints], parsing[:b]
    if options.pose_flip:
        heat = (heat + flip_heatmaps(pose[b:], manifest.joint_flip_index())[:, :joints]) / 2
        if offsets is not None:
            offsets = (offsets[:b] + flip_offsets(offsets[b:], manifest.joint_flip_index())) / 2
    elif offsets is not None:
        offsets = offsets[:b]
    if options.parsing_flip:
        logits = (logits + flip_logits(parsing[b:], manifest.class_flip_lut())) / 2
    return heat, logits, offsets


def _base_to_view(affines: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(B, 2, 3) matrices from base-window pixels to this view's window pixels."""
    full = np.zeros((len(base), 3, 3))
    full[:, :2], full[:, 2, 2] = base, 1.0
    return (affines @ np.linalg.inv(full))[:, :2]


def _sample(maps: Tensor, matrices: np.ndarray, points: np.ndarray, size: int,
            align_corners: bool) -> tuple[Tensor, Tensor]:
    """Bilinear samples of view maps at base-window ``points`` (P, 2), and where the view covers them.

    With ``align_corners`` the maps are logits as :func:`upsample_logits` spreads them over the
    window's pixel centres 0..S-1; otherwise stride-s cells covering the window's pixel area.
    """
    q = np.einsum("bij,pj->bpi", matrices[:, :, :2], points) + matrices[:, None, :, 2]  # (B, P, 2)
    if align_corners:
        grid, low, high = 2.0 * q / (size - 1) - 1.0, 0.0, size - 1.0
    else:
        grid, low, high = 2.0 * (q + 0.5) / size - 1.0, -0.5, size - 0.5
    inside = ((q >= low - 1e-6) & (q <= high + 1e-6)).all(axis=-1)
    side = int(round(len(points) ** 0.5))
    grid_t = torch.from_numpy(grid.reshape(len(q), side, side, 2)).to(maps)
    values = F.grid_sample(maps, grid_t, mode="bilinear", padding_mode="border", align_corners=align_corners)
    mask = torch.from_numpy(inside.reshape(len(q), 1, side, side)).to(maps)
    return values * mask, mask


def _grid_points(count: int, step: float, offset: float) -> np.ndarray:
    """(count * count, 2) x, y of a square grid in row-major order."""
    axis = offset + step * np.arange(count, dtype=np.float64)
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: Tensor, manifest: DatasetManifest,
                  options: InferenceOptions = InferenceOptions(), views: ScaleViews | None = None,
                  amp_dtype: torch.dtype | None = None) -> BatchPrediction:
    """Run the model on (B, 3, S, S) letterboxed images (uint8 or 0..255 float) and fuse the outputs.

    Args:
        model: a MuLA model in eval mode (normalisation is inside it).
        images: the scale-1 letterboxes at the model's input size S (the base window).
        manifest: gives the mirror pairs for flip averaging.
        options: flip / multi-scale choices (``protocol`` must be the default one here).
        views: the picture at every scale of ``options.scales``; needed unless the scales are (1,).
        amp_dtype: autocast dtype of the network's forward passes (None = full precision). Fusion,
            upsampling, softmax, decoding and grouping run in float32 either way, also when the caller
            wraps this call in an autocast region.
    """
    if options.protocol != DEFAULT:
        raise ValueError(f"predict_batch runs the default protocol, not {options.protocol!r}")
    with autocast(images.device, None):
        return _predict_batch(model, images, manifest, options, views, amp_dtype)


def _predict_batch(model: torch.nn.Module, images: Tensor, manifest: DatasetManifest, options: InferenceOptions,
                   views: ScaleViews | None, amp_dtype: torch.dtype | None) -> BatchPrediction:
    cfg = model.config
    size = images.shape[-1]
    cells = size // cfg.stride
    if views is None:
        if tuple(options.scales) != (1.0,):
            raise ValueError("multi-scale testing needs the picture at each scale: pass views (scale_views)")
        heat, logits, offsets = _view_outputs(model, images, manifest, options, amp_dtype)
        fused_logits = upsample_logits(logits, (size, size))
    else:
        heat_sum = heat_n = logit_sum = logit_n = offset_sum = None
        heat_points = _grid_points(cells, cfg.stride, cfg.stride / 2 - 0.5)
        pixel_points = _grid_points(size, 1.0, 0.0)
        for k in range(views.images.shape[1]):
            heat_k, logits_k, offsets_k = _view_outputs(model, views.images[:, k], manifest, options, amp_dtype)
            matrices = _base_to_view(views.affines[:, k], views.base)
            if np.allclose(matrices, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-9):  # the base window itself
                h, hn = heat_k, torch.ones_like(heat_k[:, :1])
                g, gn = upsample_logits(logits_k, (size, size)), torch.ones_like(heat_k[:, :1, :1, :1])
                o = offsets_k
            else:
                h, hn = _sample(heat_k, matrices, heat_points, size, align_corners=False)
                g, gn = _sample(logits_k, matrices, pixel_points, size, align_corners=True)
                if offsets_k is not None:  # view pixels per base pixel: an offset in the view is that much longer
                    scale = torch.from_numpy(matrices[:, 0, 0]).to(offsets_k).reshape(-1, 1, 1, 1)
                    o = _sample(offsets_k, matrices, heat_points, size, align_corners=False)[0] / scale
            heat_sum, heat_n = (h, hn) if heat_sum is None else (heat_sum + h, heat_n + hn)
            logit_sum, logit_n = (g, gn) if logit_sum is None else (logit_sum + g, logit_n + gn)
            if offsets_k is not None:
                offset_sum = o if offset_sum is None else offset_sum + o
        heat = heat_sum / heat_n.clamp(min=1)
        fused_logits = logit_sum / logit_n.clamp(min=1)
        offsets = None if offset_sum is None else offset_sum / heat_n.clamp(min=1)
    coords, scores = decode_official(heat, (size, size), options.blur_sigma)
    people = None
    if offsets is not None:
        heat_np, offsets_np = heat.cpu().numpy(), offsets.cpu().numpy()
        people = [group_people(heat_np[i], offsets_np[i], cfg.stride, size, options.grouping)
                  for i in range(len(heat_np))]
    return BatchPrediction(fused_logits.argmax(dim=1), fused_logits.softmax(dim=1), coords, scores, heat,
                           offsets, people)


@dataclass
class OriginalPrediction:
    """One picture's prediction at its original resolution."""

    labels: Tensor  # (H, W) int64 class ids, on the model's device
    joints: np.ndarray  # (J, 2) x, y in the picture's pixels
    scores: np.ndarray  # (J,) float32
    people: list[Person] | None = None  # multi-person models: each person's joints in the picture's pixels


def to_originals(pred: BatchPrediction, affines: np.ndarray, sizes: list[tuple[int, int]], *,
                 clip: bool) -> list[OriginalPrediction]:
    """Every picture of a batch prediction mapped back to its original resolution (the one map-back of
    evaluation, the Predictor and video prediction).

    Args:
        pred: :func:`predict_batch`'s result.
        affines: (B, 2, 3) original-to-letterbox matrices.
        sizes: each picture's (height, width).
        clip: keep joints inside the picture (a maximum in the letterbox padding then names the nearest
            place inside it); scoring leaves them where the maps put them.
    """
    # float32 on the host: NumPy has no bfloat16, and coordinates must not be rounded to it
    coords, scores = pred.joints.float().cpu().numpy(), pred.scores.float().cpu().numpy()
    results = []
    for i, hw in enumerate(sizes):
        back = invert_affine(affines[i])
        joints = apply_affine(coords[i].astype(np.float64), back)
        if clip:
            joints = np.clip(joints, 0.0, [hw[1] - 1.0, hw[0] - 1.0])
        people = None if pred.people is None else \
            [p.transformed(back, hw if clip else None) for p in pred.people[i]]
        results.append(OriginalPrediction(to_original(pred.labels[i], affines[i], hw), joints, scores[i], people))
    return results


def to_original(labels: Tensor, affine: np.ndarray, orig_hw: tuple[int, int]) -> Tensor:
    """Map an (S, S) letterbox label map back to the original image size with nearest resampling.

    Args:
        labels: class ids in letterbox pixels.
        affine: the original-to-letterbox matrix (scale and offset only).
        orig_hw: original height and width.
    """
    h, w = orig_hw
    sx, sy = affine[0, 0], affine[1, 1]
    left = affine[0, 2] - 0.5 * sx + 0.5
    top = affine[1, 2] - 0.5 * sy + 0.5
    x0, y0 = int(round(left)), int(round(top))
    x1, y1 = x0 + max(1, int(round(w * sx))), y0 + max(1, int(round(h * sy)))
    crop = labels[y0:y1, x0:x1].float()[None, None]
    return F.interpolate(crop, size=(h, w), mode="nearest-exact")[0, 0].long()
