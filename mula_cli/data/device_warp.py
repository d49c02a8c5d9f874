"""Training augmentation's resampling on the training device, a batch at a time.

With ``SampleConfig(defer_warp=True)`` a DataLoader worker only decodes the image and label map
and places them on a fixed-size canvas (box-reduced first when larger), draws the random geometry
and makes the targets that depend only on it (joints, heatmaps). :func:`warp_sources` then
resamples the whole batch with one ``grid_sample`` per tensor on the GPU, where it costs next to
nothing, instead of one PIL warp per image on a CPU core (the most expensive part of a sample).
Same geometry, same random draws, same targets as the CPU path; only the bilinear implementation
differs (PyTorch's instead of PIL's).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def canvas_side(input_size: int) -> int:
    """Canvas side for an input size: twice it (larger sources are box-reduced to fit)."""
    return 2 * input_size


def place_on_canvas(img: Image.Image, label: np.ndarray | None, side: int,
                    image_pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image (3, side, side) and label (side, side) on canvases, and the original-to-canvas matrix.

    The image canvas is filled with the padding grey and the label canvas with 0 outside the
    picture, and labels are stored +1 so that 0 marks "outside" after resampling.
    """
    factor = max(1, math.ceil(max(img.width, img.height) / side))
    if factor > 1:  # box filter: the warp itself does not anti-alias
        img = img.reduce(factor)
        label = None if label is None else label[factor // 2::factor, factor // 2::factor]
    pixels = np.full((side, side, 3), image_pad, np.uint8)
    pixels[: img.height, : img.width] = np.asarray(img)
    labels = np.zeros((side, side), np.int16)
    if label is not None:
        h, w = min(label.shape[0], side), min(label.shape[1], side)
        labels[:h, :w] = label[:h, :w].astype(np.int16) + 1
    # reduced pixel centre x_r sits at original x = factor * (x_r + 0.5) - 0.5
    to_canvas = np.array([[1.0 / factor, 0.0, 0.5 / factor - 0.5], [0.0, 1.0 / factor, 0.5 / factor - 0.5]])
    return pixels.transpose(2, 0, 1).copy(), labels, to_canvas


def grid_theta(canvas_to_input: np.ndarray, side: int, size: int) -> np.ndarray:
    """``affine_grid``'s theta (output normalised -> source normalised, align_corners=False)."""
    def normaliser(n: int) -> np.ndarray:  # pixel centre x -> (2x + 1) / n - 1
        return np.array([[2.0 / n, 0.0, 1.0 / n - 1.0], [0.0, 2.0 / n, 1.0 / n - 1.0], [0.0, 0.0, 1.0]])

    full = np.vstack([canvas_to_input, [0.0, 0.0, 1.0]])
    theta = normaliser(side) @ np.linalg.inv(full) @ np.linalg.inv(normaliser(size))
    return theta[:2].astype(np.float32)


def warp_sources(source: Tensor, source_parsing: Tensor, theta: Tensor, flipped: Tensor, has_parsing: Tensor,
                 flip_lut: Tensor, size: int, image_pad: int = 128, label_pad: int = 0,
                 ignore_label: int = 255) -> tuple[Tensor, Tensor]:
    """Resample a batch of canvases into network inputs and parsing targets.

    Args:
        source: (B, 3, C, C) uint8 image canvases.
        source_parsing: (B, C, C) int16 label canvases (class id + 1; 0 = outside the picture).
        theta: (B, 2, 3) sampling matrices from :func:`grid_theta`.
        flipped: (B,) bool, samples whose matrix mirrors (left/right classes swap).
        has_parsing: (B,) bool, samples with a usable label map (the others become all ignore).
        flip_lut: (256,) int64 left/right class swap.
        size: network input side.

    Returns:
        images (B, 3, S, S) float in 0..255 and parsing (B, S, S) uint8.
    """
    b = source.shape[0]
    grid = F.affine_grid(theta.float(), [b, 3, size, size], align_corners=False)
    images = F.grid_sample(source.float() - image_pad, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False) + image_pad
    labels = F.grid_sample(source_parsing[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[:, 0].long()
    labels = torch.where(labels == 0, torch.full_like(labels, label_pad), labels - 1)
    labels = torch.where(flipped[:, None, None], flip_lut[labels.clamp(0, 255)], labels)
    labels = torch.where(has_parsing[:, None, None], labels, torch.full_like(labels, ignore_label))
    return images.clamp(0, 255), labels.to(torch.uint8)
