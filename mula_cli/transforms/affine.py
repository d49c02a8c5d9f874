"""Geometric transforms for training and testing, each a single affine warp.

The authors scale, rotate, crop and flip in four resampling passes. The same geometry is one
2x3 matrix ``M`` mapping original pixels to network-input pixels (pixel-centre convention), so
an image is resampled once (sharper, and about four times cheaper) and joints are mapped with
the same matrix. Batches of such matrices can equally drive ``F.affine_grid`` on a GPU.

Training (the paper's recipe, defaults): rotation U(-40, 40) degrees, zoom U(0.8, 1.5) relative
to the zoom that makes the person ``target_dist * 200`` px tall at 256 input (1.171, the authors'
value), person centre shifted by U(-40, 40) px, horizontal flip with p = 0.5; padding grey 128 for
images and 0 for labels. Testing (official protocol): long edge resized to the input size,
centred, padded grey.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. Distances are in pixels at a 256 input and scale with the input size."""

    rotate: float = 40.0
    scale_min: float = 0.8
    scale_max: float = 1.5
    translate: float = 40.0
    flip_prob: float = 0.5
    target_dist: float = 1.171
    image_pad: int = 128
    label_pad: int = 0
    bicubic: bool = False  # the authors resample bicubic; bilinear is ~2x cheaper and trains the same
    # False: instead of a crop around the person, the whole picture letterboxed exactly as at test time
    # (then only ``flip_prob`` applies), so the training inputs are the ones evaluation sees
    crop_person: bool = True


NO_AUGMENT = AugmentConfig(rotate=0.0, scale_min=1.0, scale_max=1.0, translate=0.0, flip_prob=0.0)
TEST_VIEW = AugmentConfig(rotate=0.0, scale_min=1.0, scale_max=1.0, translate=0.0, flip_prob=0.0, crop_person=False)
# ``mula train --augment``: the paper's recipe; the test-time input, mirrored or not (e.g. to overfit a
# few pictures and score them as they were trained).
AUGMENTATIONS = {"full": AugmentConfig(), "flip": replace(TEST_VIEW, flip_prob=0.5), "none": TEST_VIEW}


def train_affine(center: np.ndarray, scale: float, input_size: int, rng: np.random.Generator,
                 cfg: AugmentConfig) -> tuple[np.ndarray, bool]:
    """Random original-to-input matrix around the person, and whether it mirrors.

    Args:
        center: person centre (x, y) in original pixels.
        scale: person size / 200 px (see ``mula_cli.data.samples``).
        input_size: network input side in pixels.
        rng: the sample's random generator.
        cfg: augmentation ranges.
    """
    unit = input_size / 256.0
    zoom = cfg.target_dist * unit / max(scale, 1e-3) * rng.uniform(cfg.scale_min, cfg.scale_max)
    angle = math.radians(rng.uniform(-cfg.rotate, cfg.rotate)) if cfg.rotate else 0.0
    shift = rng.uniform(-cfg.translate, cfg.translate, size=2) * unit if cfg.translate else np.zeros(2)
    flip = bool(cfg.flip_prob > 0 and rng.random() < cfg.flip_prob)
    cos, sin = math.cos(angle) * zoom, math.sin(angle) * zoom
    linear = np.array([[cos, sin], [-sin, cos]])
    offset = (input_size - 1) / 2.0 + shift - linear @ np.asarray(center, np.float64)
    m = np.concatenate([linear, offset[:, None]], axis=1)
    return (mirror_affine(m, input_size) if flip else m), flip


def mirror_affine(m: np.ndarray, input_size: int) -> np.ndarray:
    """``m`` followed by a horizontal mirror of the ``input_size`` wide input."""
    return np.array([[-1.0, 0.0, input_size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])


def eval_affine(height: int, width: int, input_size: int,
                scale: float = 1.0) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """The official test transform: long edge to ``scale * input_size``, centred in the window, padded.

    At ``scale`` 1 the picture fits the window (the official letterbox); above 1 the window cuts
    the centre of the larger picture (negative padding), below 1 more padding surrounds it.

    Returns:
        the 2x3 matrix, the resized (height, width), and the (top, left) padding.
    """
    zoom = scale * input_size / max(height, width)
    nh, nw = max(1, round(height * zoom)), max(1, round(width * zoom))
    top, left = (input_size - nh) // 2, (input_size - nw) // 2
    sy, sx = nh / height, nw / width
    # pixel centres: x_in = sx * (x + 0.5) - 0.5 + left
    m = np.array([[sx, 0.0, 0.5 * sx - 0.5 + left], [0.0, sy, 0.5 * sy - 0.5 + top]])
    return m, (nh, nw), (top, left)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Map (..., 2) points with a 2x3 matrix (NaN stays NaN)."""
    return points @ m[:, :2].T + m[:, 2]


def _pil_coefficients(m: np.ndarray) -> tuple[float, ...]:
    """PIL's AFFINE data (output->input, pixel-corner convention) for an input->output centre-convention matrix."""
    inv = invert_affine(m)
    a = inv[:, :2]
    t = inv[:, 2] + 0.5 - 0.5 * a.sum(axis=1)
    return (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])


def prereduce_factor(m: np.ndarray) -> int:
    """The box reduction a warp by ``m`` needs first: ``int(1 / zoom)`` when it shrinks more than 2x, else 1
    (an affine warp does not anti-alias). The CPU and the device resampling both follow it."""
    zoom = math.sqrt(abs(np.linalg.det(m[:, :2])))
    return int(1.0 / zoom) if zoom < 0.5 else 1


def _prereduce(img: Image.Image, m: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Box-filter the image first when the warp shrinks it more than 2x, adjusting the matrix to the
    reduced image."""
    factor = prereduce_factor(m)
    if factor < 2:
        return img, m
    reduced = img.reduce(factor)
    # reduced pixel centre x_r maps to original x = factor * (x_r + 0.5) - 0.5
    back = np.array([[factor, 0.0, 0.5 * factor - 0.5], [0.0, factor, 0.5 * factor - 0.5]])
    return reduced, m @ np.vstack([back, [0.0, 0.0, 1.0]])


def warp_image(img: Image.Image, m: np.ndarray, size: int, pad: int = 128, bicubic: bool = False) -> np.ndarray:
    """Resample an RGB image into a ``size`` x ``size`` uint8 array (H, W, 3), bilinear or bicubic."""
    img, m = _prereduce(img, m)
    resample = Image.Resampling.BICUBIC if bicubic else Image.Resampling.BILINEAR
    out = img.transform((size, size), Image.Transform.AFFINE, data=_pil_coefficients(m),
                        resample=resample, fillcolor=(pad, pad, pad))
    return np.asarray(out)


def warp_label(label: np.ndarray, m: np.ndarray, size: int, pad: int = 0) -> np.ndarray:
    """Resample a class-id map with nearest-neighbour interpolation into ``size`` x ``size`` uint8."""
    img = Image.fromarray(label, mode="L")
    out = img.transform((size, size), Image.Transform.AFFINE, data=_pil_coefficients(m),
                        resample=Image.Resampling.NEAREST, fillcolor=pad)
    return np.array(out)


def letterbox(img: Image.Image, input_size: int, pad: int = 128,
              orig_hw: tuple[int, int] | None = None, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Official test input: bicubic resize of the long edge to ``scale * input_size`` (anti-aliased),
    centred in the ``input_size`` window on grey (see :func:`eval_affine`).

    Args:
        img: the RGB image (possibly already reduced while decoding, see ``orig_hw``).
        input_size: the network input side.
        pad: grey level of the padding.
        orig_hw: the original (height, width) when ``img`` is a reduced decode of a larger image;
            the matrix then maps original pixels.
        scale: test scale (multi-scale testing); 1 is the official letterbox.

    Returns:
        the (S, S, 3) uint8 input and the original-to-input matrix.
    """
    height, width = orig_hw if orig_hw is not None else (img.height, img.width)
    m, (nh, nw), (top, left) = eval_affine(height, width, input_size, scale)
    target = int(2 * input_size * scale)
    if max(img.width, img.height) > 2 * target:  # huge photos: cheap box reduction first
        img = img.reduce(max(img.width, img.height) // target)
    resized = img.resize((nw, nh), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (input_size, input_size), (pad, pad, pad))
    canvas.paste(resized, (left, top))  # negative offsets (scale > 1) crop the centre
    return np.asarray(canvas), m


def scale_views(img: Image.Image, input_size: int, scales: tuple[float, ...], pad: int = 128,
                orig_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The picture at every test scale, each in its own ``input_size`` window (multi-scale testing).

    Returns:
        (n, S, S, 3) uint8 windows and their (n, 2, 3) original-to-window matrices.
    """
    views = [letterbox(img, input_size, pad, orig_hw, scale) for scale in scales]
    return np.stack([v[0] for v in views]), np.stack([v[1] for v in views])
