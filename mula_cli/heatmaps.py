"""Joint heatmaps and left/right mirroring: the one home of both.

Coordinates are in pixels with integer values at pixel centres (x = column, y = row), the
convention of the LIP CSV. A stride-``s`` heatmap cell ``k`` is centred on input pixel
``s/2 - 0.5 + k*s`` (the authors' target grid).

Encoding follows the authors' recipe exactly: one Gaussian of sigma 7 input pixels per labelled
joint, sampled at the cell centres, values below exp(-4.6052) (about 0.01) set to zero, clipped at
1; a last map = 1 - max over the joint maps (background). Unlabelled joints give all-zero maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GAUSSIAN_CUTOFF = 4.6052  # exponent above which a target value is set to 0 (exp(-4.6052) ~ 0.01)


def grid_centers(size: int, stride: int) -> np.ndarray:
    """Input-pixel coordinates of the centres of ``size`` stride-``stride`` cells."""
    return stride / 2.0 - 0.5 + np.arange(size, dtype=np.float64) * stride


def encode_heatmaps(joints: np.ndarray, labelled: np.ndarray, out_hw: tuple[int, int], stride: int,
                    sigma: float = 7.0) -> np.ndarray:
    """Target maps for one sample.

    Args:
        joints: (J, 2) joint x, y in input pixels.
        labelled: (J,) bool, joints that have coordinates.
        out_hw: heatmap height and width (input size / stride).
        stride: input pixels per heatmap cell.
        sigma: Gaussian sigma in input pixels.

    Returns:
        (J + 1, H, W) float32: one map per joint, then the background map.
    """
    h, w = out_hw
    num = len(joints)
    maps = np.zeros((num + 1, h, w), np.float32)
    idx = np.flatnonzero(labelled)
    if len(idx):
        # exp(-(dx^2 + dy^2) / 2 sigma^2) is separable: outer products of 1-D Gaussians, all joints at once
        two_s2 = 2.0 * sigma * sigma
        gx = np.exp(-np.minimum((grid_centers(w, stride)[None] - joints[idx, 0:1]) ** 2 / two_s2, 50.0))
        gy = np.exp(-np.minimum((grid_centers(h, stride)[None] - joints[idx, 1:2]) ** 2 / two_s2, 50.0))
        g = gy[:, :, None] * gx[:, None, :]
        g[g < np.exp(-GAUSSIAN_CUTOFF)] = 0.0
        maps[idx] = np.minimum(g, 1.0)
    maps[num] = 1.0 - maps[:num].max(axis=0) if num else 1.0
    return maps


def decode_argmax(heatmaps: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Joint positions at the maximum of each map (no background map), in input pixels.

    Args:
        heatmaps: (B, J, H, W) joint maps.
        stride: input pixels per cell.

    Returns:
        coords (B, J, 2) x, y and scores (B, J), the maxima.
    """
    b, j, h, w = heatmaps.shape
    scores, index = heatmaps.reshape(b, j, h * w).max(dim=-1)
    ys = torch.div(index, w, rounding_mode="floor").to(heatmaps.dtype)
    xs = (index % w).to(heatmaps.dtype)
    coords = torch.stack([xs, ys], dim=-1) * stride + (stride / 2.0 - 0.5)
    return coords, scores


def _symmetric_pad(x: Tensor, pad: int, dim: int) -> Tensor:
    """Edge-including reflection (scipy's 'reflect' mode: d c b a | a b c d)."""
    n = x.shape[dim]
    pad = min(pad, n)
    left = x.narrow(dim, 0, pad).flip(dim)
    right = x.narrow(dim, n - pad, pad).flip(dim)
    return torch.cat([left, x, right], dim=dim)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, J, H, W) maps matching ``scipy.ndimage.gaussian_filter``
    (truncate 4.0, 'reflect' borders), as the authors' test code applies it."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype).to(maps.device)
    b, j, h, w = maps.shape
    x = maps.reshape(b * j, 1, h, w)
    x = _symmetric_pad(x, radius, 3)
    if x.shape[3] < w + 2 * radius:  # tiny maps: fall back to replicate for the rest of the margin
        x = F.pad(x, (radius - (x.shape[3] - w) // 2,) * 2, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = _symmetric_pad(x, radius, 2)
    if x.shape[2] < h + 2 * radius:
        x = F.pad(x, (0, 0) + (radius - (x.shape[2] - h) // 2,) * 2, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(b, j, h, w)


def decode_official(heatmaps: Tensor, input_size: tuple[int, int], blur_sigma: float = 3.0) -> tuple[Tensor, Tensor]:
    """The authors' test-time decoding: resize maps to the input size (bilinear, half-pixel centres as
    OpenCV), Gaussian blur (sigma 3), argmax.

    Args:
        heatmaps: (B, J, h, w) joint maps (flip-averaged already if wanted; no background map).
        input_size: (H, W) of the network input.
        blur_sigma: blur sigma in input pixels.

    Returns:
        coords (B, J, 2) in input pixels and scores (B, J) (the blurred maxima).
    """
    maps = F.interpolate(heatmaps.float(), size=input_size, mode="bilinear", align_corners=False)
    if blur_sigma > 0:
        maps = gaussian_blur(maps, blur_sigma)
    return decode_argmax(maps, 1)


# ---------------------------------------------------------------------------------------------
# Mirroring. Left/right pairs come from the dataset manifest (class_flip_lut, joint_flip_index).

def swap_joints(joints: np.ndarray, flip_index: list[int]) -> np.ndarray:
    """Swap left/right joint identities of (..., J, 2) joints whose positions are already mirrored."""
    return joints[..., flip_index, :].copy()


def flip_joints(joints: np.ndarray, width: int, flip_index: list[int]) -> np.ndarray:
    """Mirror (..., J, 2) joints horizontally in an image ``width`` pixels wide and swap left/right."""
    out = swap_joints(joints, flip_index)
    out[..., 0] = width - 1 - out[..., 0]
    return out


def swap_labels(labels: np.ndarray, flip_lut: np.ndarray) -> np.ndarray:
    """Swap left/right class ids of a class-id map whose pixels are already mirrored."""
    return flip_lut[labels]


def flip_labels(labels: np.ndarray, flip_lut: np.ndarray) -> np.ndarray:
    """Mirror an (H, W) class-id map horizontally and swap left/right class ids."""
    return swap_labels(labels[:, ::-1], flip_lut)


def flip_heatmaps(maps: Tensor, flip_index: list[int]) -> Tensor:
    """Mirror (B, J(+1), H, W) heatmaps of a flipped input back: flip width, swap left/right channels.

    A trailing background map (J + 1 channels) keeps its place.
    """
    index = list(flip_index) + list(range(len(flip_index), maps.shape[1]))
    return maps.flip(-1)[:, index]


def flip_logits(logits: Tensor, flip_lut: np.ndarray) -> Tensor:
    """Mirror (B, K, H, W) parsing scores of a flipped input back: flip width, swap left/right classes."""
    index = [int(flip_lut[k]) for k in range(logits.shape[1])]
    return logits.flip(-1)[:, index]


def heatmap_size(input_size: int, stride: int) -> int:
    """Heatmap side for an input side (the encoders reduce exactly by ``stride``)."""
    return int(math.ceil(input_size / stride))
