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


def encode_heatmaps(joints: Tensor | np.ndarray, labelled: Tensor | np.ndarray, out_hw: tuple[int, int],
                    stride: int, sigma: float = 7.0) -> Tensor:
    """Target maps, for one sample or a batch, on the joints' device (CPU workers or the GPU).

    Args:
        joints: (..., J, 2) joint x, y in input pixels.
        labelled: (..., J) bool, joints that have coordinates (unlabelled ones give all-zero maps).
        out_hw: heatmap height and width (input size / stride).
        stride: input pixels per heatmap cell.
        sigma: Gaussian sigma in input pixels.

    Returns:
        (..., J + 1, H, W) float32: one map per joint, then the background map.
    """
    joints = torch.as_tensor(joints, dtype=torch.float32)
    labelled = torch.as_tensor(labelled, dtype=torch.bool, device=joints.device)
    h, w = out_hw
    two_s2 = 2.0 * sigma * sigma
    xs = torch.from_numpy(grid_centers(w, stride)).float().to(joints.device)
    ys = torch.from_numpy(grid_centers(h, stride)).float().to(joints.device)
    x = torch.where(labelled, joints[..., 0], torch.zeros_like(joints[..., 0]))
    y = torch.where(labelled, joints[..., 1], torch.zeros_like(joints[..., 1]))
    # exp(-(dx^2 + dy^2) / 2 sigma^2) is separable: an outer product of two 1-D Gaussians per joint
    gx = torch.exp(-((xs - x[..., None]) ** 2 / two_s2).clamp(max=50.0))
    gy = torch.exp(-((ys - y[..., None]) ** 2 / two_s2).clamp(max=50.0))
    maps = gy[..., :, None] * gx[..., None, :]
    maps = torch.where(maps < math.exp(-GAUSSIAN_CUTOFF), torch.zeros_like(maps), maps).clamp(max=1.0)
    maps = maps * labelled[..., None, None]
    background = 1.0 - (maps.amax(dim=-3, keepdim=True) if maps.shape[-3] else torch.zeros_like(maps[..., :1, :, :]))
    return torch.cat([maps, background], dim=-3)


def encode_people_heatmaps(people: Tensor | np.ndarray, out_hw: tuple[int, int], stride: int,
                           sigma: float = 7.0, num_joints: int | None = None) -> Tensor:
    """(J + 1, H, W) targets for every person of an image (P, J, 2), NaN = unlabelled: one peak per person."""
    people = torch.as_tensor(people, dtype=torch.float32)
    if people.shape[0] == 0:
        people = torch.full((1, num_joints or 0, 2), float("nan"))
    labelled = torch.isfinite(people).all(dim=-1)
    maps = encode_heatmaps(torch.nan_to_num(people), labelled, out_hw, stride, sigma)
    if maps.shape[0] == 1:
        return maps[0]
    joint_maps = maps[:, :-1].amax(dim=0)
    return torch.cat([joint_maps, 1.0 - joint_maps.amax(dim=0, keepdim=True)])


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
    # float32 whatever the maps' dtype: bfloat16 has 8 bits of mantissa, so x = 301 would read 300
    ys = torch.div(index, w, rounding_mode="floor").to(torch.float32)
    xs = (index % w).to(torch.float32)
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
        coords (B, J, 2) in input pixels and scores (B, J) (the blurred maxima), float32.

    Always float32, also when called under autocast (which would run the blur's convolutions in
    bfloat16: flat tops then tie and the first maximum wins, an up-left bias of about a pixel).
    """
    with torch.autocast(heatmaps.device.type, enabled=False):
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

