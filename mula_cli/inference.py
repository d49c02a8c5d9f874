"""Test-time inference on letterboxed batches: the official protocol plus flip and multi-scale options.

Official protocol (architecture.md, "Test protocol"): the image's long edge is resized to the
input size and centred on grey; pose = final-stage heatmaps of the image and its mirror
(channels swapped back) averaged, resized to the input size, blurred (sigma 3), argmax; parsing
= final-stage argmax of a single pass, mapped back with nearest resampling.

Options: ``parsing_flip`` averages parsing probabilities with the mirror too; ``scales`` runs the
network on the letterbox at other sizes (rounded to the model's size multiple; the adapters pool
to a fixed kernel size, so any multiple works) and averages heatmaps and probabilities after
resizing them back to the base input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mula_cli.heatmaps import decode_official, flip_heatmaps, flip_logits
from mula_cli.manifests import DatasetManifest
from mula_cli.model.loss import upsample_logits


@dataclass(frozen=True)
class InferenceOptions:
    """What to average at test time. Defaults are the authors' protocol."""

    pose_flip: bool = True
    parsing_flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    blur_sigma: float = 3.0


@dataclass
class BatchPrediction:
    """Predictions for a batch, in network-input (letterbox) pixels of the base input size."""

    labels: Tensor  # (B, S, S) int64 parsing argmax
    probabilities: Tensor  # (B, K, S, S) float parsing probabilities
    joints: Tensor  # (B, J, 2) x, y
    scores: Tensor  # (B, J) heatmap maxima after blurring
    heatmaps: Tensor  # (B, J, S/s, S/s) fused joint heatmaps (no background map)


def _resize_input(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])


def _scaled_size(base: int, scale: float, multiple: int) -> int:
    return max(multiple, int(round(base * scale / multiple)) * multiple)


@torch.no_grad()
def predict_batch(model: torch.nn.Module, images: Tensor, manifest: DatasetManifest,
                  options: InferenceOptions = InferenceOptions()) -> BatchPrediction:
    """Run the model on (B, 3, S, S) letterboxed images (uint8 or 0..255 float) and fuse the outputs.

    Args:
        model: a MuLA model in eval mode (normalisation is inside it).
        images: letterboxed inputs at the model's input size S.
        manifest: gives the mirror pairs for flip averaging.
        options: flip / multi-scale choices.
    """
    cfg = model.config
    base = images.shape[-1]
    joints = cfg.num_joints
    flip_index = manifest.joint_flip_index()
    flip_lut = manifest.class_flip_lut()
    heat_sum: Tensor | None = None
    prob_sum: Tensor | None = None
    heat_n = prob_n = 0
    out_hw = (base // cfg.stride, base // cfg.stride)
    for scale in options.scales:
        size = _scaled_size(base, scale, cfg.input_multiple)
        x = _resize_input(images, size)
        batch = torch.cat([x, x.flip(-1)]) if (options.pose_flip or options.parsing_flip) else x
        out = model(batch)
        pose, parsing = out.pose[-1].float(), out.parsing[-1].float()
        b = x.shape[0]
        heat = [pose[:b, :joints]]
        probs = [upsample_logits(parsing[:b], (base, base)).softmax(dim=1)]
        if options.pose_flip:
            heat.append(flip_heatmaps(pose[b:], flip_index)[:, :joints])
        if options.parsing_flip:
            probs.append(flip_logits(upsample_logits(parsing[b:], (base, base)), flip_lut).softmax(dim=1))
        for h in heat:
            h = F.interpolate(h, size=out_hw, mode="bilinear", align_corners=False) if h.shape[-2:] != out_hw else h
            heat_sum = h if heat_sum is None else heat_sum + h
            heat_n += 1
        for p in probs:
            prob_sum = p if prob_sum is None else prob_sum + p
            prob_n += 1
    heatmaps = heat_sum / heat_n
    probabilities = prob_sum / prob_n
    coords, scores = decode_official(heatmaps, (base, base), options.blur_sigma)
    return BatchPrediction(probabilities.argmax(dim=1), probabilities, coords, scores, heatmaps)


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

