"""Training augmentation's image resampling on the training device, a batch at a time.

With ``SampleConfig(defer_warp=True)`` a DataLoader worker only decodes the image, draws the random
geometry, makes the targets (label map, joints, heatmaps: exactly as the CPU path does; a
nearest-neighbour label warp is cheap) and cuts out the part of the picture the warp will read
(:func:`crop_footprint`). :func:`warp_images` then resamples the batch's crops with one
``grid_sample`` on the GPU, where it costs next to nothing, instead of one PIL warp per image on a CPU
core (the most expensive part of a sample).

The geometry is the CPU path's (``mula_cli.transforms.affine.warp_image``): the same matrix, and the
picture box-reduced first only when the warp itself shrinks it more than 2x, by the same factor.
Only the bilinear implementation differs (PyTorch's instead of PIL's). The crop is the warp's
source footprint, so a large photo with a small person moves only the pixels around the person to
the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mula_cli.transforms.affine import invert_affine, prereduce_factor

# Bilinear sampling at the footprint's edge reads one pixel further; one more for rounding.
_MARGIN = 2


def crop_footprint(img: Image.Image, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of the picture a warp by ``m`` to ``size`` x ``size`` reads, box-reduced as the CPU path would.

    Args:
        img: the RGB picture.
        m: the original-to-input matrix (2x3, pixel centres).
        size: the network input side.

    Returns:
        the crop (3, h, w) uint8 and the input-to-crop matrix (2x3): where each input pixel centre
        samples the crop.
    """
    f = prereduce_factor(m)
    width, height = (math.ceil(img.width / f), math.ceil(img.height / f))  # the reduced picture
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    inverse = invert_affine(m)
    reduced = (corners @ inverse[:, :2].T + inverse[:, 2] + 0.5) / f - 0.5
    x0 = int(np.clip(math.floor(reduced[:, 0].min()) - _MARGIN, 0, width - 1))
    y0 = int(np.clip(math.floor(reduced[:, 1].min()) - _MARGIN, 0, height - 1))
    x1 = int(np.clip(math.ceil(reduced[:, 0].max()) + _MARGIN + 1, x0 + 1, width))
    y1 = int(np.clip(math.ceil(reduced[:, 1].max()) + _MARGIN + 1, y0 + 1, height))
    box = (x0 * f, y0 * f, min(x1 * f, img.width), min(y1 * f, img.height))
    pixels = np.asarray(img.reduce(f, box=box) if f > 1 else img.crop(box))
    # crop pixel centre (x_c, y_c) is original (f * (x_c + x0 + 0.5) - 0.5, ...)
    crop_to_original = np.array([[f, 0.0, f * (x0 + 0.5) - 0.5], [0.0, f, f * (y0 + 0.5) - 0.5]])
    input_to_crop = invert_affine(crop_to_original) @ np.vstack([inverse, [0.0, 0.0, 1.0]])
    return pixels.transpose(2, 0, 1).copy(), input_to_crop


def _sampling_theta(input_to_crop: Tensor, canvas_hw: tuple[int, int], size: int) -> Tensor:
    """``affine_grid``'s theta (output normalised -> canvas normalised, align_corners=False)."""
    h, w = canvas_hw
    # pixel centre x -> normalised u = (2x + 1) / n - 1, and back: x = (n (u + 1) - 1) / 2
    to_norm = input_to_crop.new_tensor([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0],
                                        [0.0, 0.0, 1.0]])
    from_norm = input_to_crop.new_tensor([[size / 2.0, 0.0, (size - 1) / 2.0], [0.0, size / 2.0, (size - 1) / 2.0],
                                          [0.0, 0.0, 1.0]])
    last = input_to_crop.new_tensor([0.0, 0.0, 1.0]).expand(input_to_crop.shape[0], 1, 3)
    return (to_norm @ torch.cat([input_to_crop, last], dim=1) @ from_norm)[:, :2]


def warp_images(crops: Sequence[Tensor], input_to_crop: Tensor, size: int, image_pad: int = 128) -> Tensor:
    """Resample a batch of crops from :func:`crop_footprint` into network inputs.

    Args:
        crops: B crops (3, h_i, w_i) uint8 (a list, or a stacked tensor when all have one size).
        input_to_crop: (B, 2, 3) matrices from :func:`crop_footprint`.
        size: network input side.
        image_pad: the grey outside the picture.

    Returns:
        images (B, 3, S, S) float in 0..255.
    """
    b = len(crops)
    h = max(int(t.shape[-2]) for t in crops)
    w = max(int(t.shape[-1]) for t in crops)
    canvas = torch.full((b, 3, h, w), image_pad, dtype=torch.uint8, device=input_to_crop.device)
    for i, crop in enumerate(crops):  # beyond a crop (outside the picture) lies the padding grey
        canvas[i, :, : crop.shape[-2], : crop.shape[-1]] = crop
    theta = _sampling_theta(input_to_crop.double(), (h, w), size).float()
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    images = F.grid_sample(canvas.float() - image_pad, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False) + image_pad
    return images.clamp(0, 255)
