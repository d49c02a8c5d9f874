"""The authors' test-time placement of a picture (``--protocol authors``, step 1), and OpenCV.

``NieXC/pytorch-mula`` tests LIP pictures with OpenCV and NumPy (``utils/eval_util.py``). This module
cuts their windows; :mod:`mula_cli.inference.authors_predict` runs the model on them and maps the
predictions back, and :mod:`mula_cli.evaluation.authors_protocol` describes the whole protocol and
scores as their scripts do. Per picture (H x W, long edge L, window S):

Placement: ``base = 1 / (L / S)``; for each test scale s the picture is resized by ``f = base * s``
(bicubic, OpenCV's: Keys a = -0.75, no anti-aliasing, size ``round(W f)``), the window centre is
``int(W / 2 * f)``, ``int(H / 2 * f)`` and the S x S window is cut around it with grey 128 padding.
Their crop stops one pixel short of the resized picture's last row and column (``min(end, size - 1)``
as an exclusive bound), so those stay grey.

With OpenCV installed (the ``authors`` extra) decoding and resizing are OpenCV's own calls, with the
arguments theirs pass; without it they are emulated (see ``EMULATION_NOTE`` in
:mod:`mula_cli.evaluation.authors_protocol`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from PIL import Image

from mula_cli.utils.errors import MulaError

PAD = 128


@dataclass(frozen=True)
class AuthorsSteps:
    """Which of the authors' steps to take; a step switched off is done mula's default way instead.

    All on is their protocol. Switching one off measures what that step alone moves
    (``benchmarks/protocol_fidelity.py``, docs/fidelity.md).
    """

    placement: bool = True  # OpenCV bicubic, centre int(W/2*f), crop one pixel short (off: mula's letterbox)
    crop_heatmaps: bool = True  # cut the padding out of the heatmaps before fusing (off: whole window)
    integer_coordinates: bool = True  # (pos - store + crop) / base, int() (off: pixel centres, no rounding)
    parsing_map_back: bool = True  # background map of the resized picture, OpenCV nearest (off: mula's)


ALL_STEPS = AuthorsSteps()


@functools.cache
def opencv() -> ModuleType | None:
    """OpenCV's ``cv2`` where the ``authors`` extra is installed, else None (the steps are emulated)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def decode_picture(raw: bytes) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) pixels of an encoded picture as their ``cv2.imread(path, 1)`` decodes it, or
    None without OpenCV (or where it cannot decode the file, which Pillow then does).

    EXIF orientation is not applied: the annotations are in the stored orientation (LIP's pictures
    carry none). Their BGR is turned into RGB, mula's order; resizing works per channel either way.
    """
    cv2 = opencv()
    if cv2 is None:
        return None
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])
# OpenCV's fixed-point resize (INTER_RESIZE_COEF_BITS = 11): coefficients are scaled by 2048 and
# rounded, both passes sum integers, the result is rounded once at the end.
_COEF_BITS = 11


def _keys_cubic(t: np.ndarray) -> np.ndarray:
    """OpenCV's four bicubic coefficients (A = -0.75) for fractional offsets ``t``, in float32."""
    a = np.float32(-0.75)
    t = t.astype(np.float32)
    c0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    c1 = ((a + 2) * t - (a + 3)) * t * t + 1
    c2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    c3 = np.float32(1) - c0 - c1 - c2
    return np.stack([c0, c1, c2, c3], axis=-1)


def _cubic_matrix(size_in: int, size_out: int, factor: float) -> np.ndarray:
    """(size_out, size_in) integer weights of OpenCV's bicubic resize by ``factor`` (edge taps clamped)."""
    dst = np.arange(size_out, dtype=np.float64)
    src = ((dst + 0.5) * (1.0 / factor) - 0.5).astype(np.float32)  # OpenCV computes it in float
    start = np.floor(src).astype(np.int64)
    coef = np.rint(_keys_cubic(src - start.astype(np.float32)) * (1 << _COEF_BITS)).astype(np.int64)
    matrix = np.zeros((size_out, size_in), np.int64)
    for k in range(4):
        np.add.at(matrix, (np.arange(size_out), np.clip(start - 1 + k, 0, size_in - 1)), coef[:, k])
    return matrix


def resize_picture(pixels: np.ndarray, factor: float) -> np.ndarray:
    """Their ``cv2.resize(im, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)``: OpenCV's
    own where installed, else :func:`resize_bicubic`."""
    cv2 = opencv()
    if cv2 is None:
        return resize_bicubic(pixels, factor)
    return cv2.resize(np.ascontiguousarray(pixels), None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def resize_bicubic(pixels: np.ndarray, factor: float) -> np.ndarray:
    """``cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)`` for uint8 (H, W, C).

    Same size rule (``round(W * factor)``), sampling positions, coefficients and fixed-point rounding
    as OpenCV's scalar code; its vectorised path rounds the second pass in float and may differ by
    one grey level.
    """
    h, w = pixels.shape[:2]
    out_h, out_w = max(1, round(h * factor)), max(1, round(w * factor))
    wx, wy = _cubic_matrix(w, out_w, factor), _cubic_matrix(h, out_h, factor)
    rows = np.einsum("xw,hwc->hxc", wx, pixels.astype(np.int64))
    both = np.einsum("yh,hxc->yxc", wy, rows)
    return np.clip((both + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Window:
    """Where one test scale put the picture (their ``cropped_param``), in resized-picture pixels."""

    factor: float  # base * s
    crop: tuple[int, int, int, int]  # x0, y0, x1, y1 in the resized picture (x1, y1 exclusive)
    store: tuple[int, int, int, int]  # x0, y0, x1, y1 in the window
    resized: tuple[int, int]  # height, width of the resized picture

    def to_array(self) -> np.ndarray:
        return np.array([self.factor, *self.crop, *self.store, *self.resized], np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> Window:
        v = [float(x) for x in a]
        ints = [round(x) for x in v[1:]]
        return cls(v[0], tuple(ints[0:4]), tuple(ints[4:8]), tuple(ints[8:10]))


def base_scale(height: int, width: int, input_size: int) -> float:
    """Their ``1 / (long_edge / crop_size)`` (computed the same way, to the last bit)."""
    return 1.0 / (max(height, width) * 1.0 / input_size)


def cut_window(pixels: np.ndarray, input_size: int, scale: float) -> tuple[np.ndarray, Window]:
    """The S x S test window of an RGB uint8 picture at one test scale, placed as their test code does."""
    h, w = pixels.shape[:2]
    factor = base_scale(h, w, input_size) * scale
    resized = resize_picture(pixels, factor)
    rh, rw = resized.shape[:2]
    cx, cy = int(w / 2.0 * factor), int(h / 2.0 * factor)
    ox, oy = int(cx - input_size / 2.0), int(cy - input_size / 2.0)
    x0, y0 = max(ox, 0), max(oy, 0)
    sx0, sy0 = max(-ox, 0), max(-oy, 0)
    x1, y1 = min(int(cx + input_size / 2.0), rw - 1), min(int(cy + input_size / 2.0), rh - 1)
    sx1, sy1 = sx0 + (x1 - x0), sy0 + (y1 - y0)
    window = np.full((input_size, input_size, 3), PAD, np.uint8)
    window[sy0:sy1, sx0:sx1] = resized[y0:y1, x0:x1]
    return window, Window(factor, (x0, y0, x1, y1), (sx0, sy0, sx1, sy1), (rh, rw))


def letterbox_window(img: Image.Image, input_size: int, scale: float) -> tuple[np.ndarray, Window]:
    """mula's default window (:func:`mula_cli.transforms.affine.letterbox`) described as a :class:`Window`."""
    from mula_cli.transforms.affine import eval_affine, letterbox

    h, w = img.height, img.width
    pixels, _ = letterbox(img, input_size, scale=scale)
    _, (nh, nw), (top, left) = eval_affine(h, w, input_size, scale)
    x0, y0 = max(-left, 0), max(-top, 0)
    sx0, sy0 = max(left, 0), max(top, 0)
    cw, ch = min(nw - x0, input_size - sx0), min(nh - y0, input_size - sy0)
    factor = base_scale(h, w, input_size) * scale
    return pixels, Window(factor, (x0, y0, x0 + cw, y0 + ch), (sx0, sy0, sx0 + cw, sy0 + ch), (nh, nw))


def authors_views(img: Image.Image, input_size: int, scales: tuple[float, ...],
                  steps: AuthorsSteps = ALL_STEPS, raw: bytes | None = None) -> dict[str, np.ndarray]:
    """Sample entries for :func:`predict_originals`: ``views`` (n, 3, S, S) uint8, ``windows`` (n, 11).

    ``raw``: the picture's file bytes, decoded by OpenCV as theirs are where it is installed (``img``,
    Pillow's decoding, serves otherwise).
    """
    check_scales(scales)
    if steps.placement:
        pixels = decode_picture(raw) if raw is not None else None
        if pixels is None or pixels.shape[:2] != (img.height, img.width):
            pixels = np.asarray(img.convert("RGB"))
        cut = [cut_window(pixels, input_size, s) for s in scales]
    else:
        cut = [letterbox_window(img.convert("RGB"), input_size, s) for s in scales]
    return {"views": np.stack([c[0].transpose(2, 0, 1) for c in cut]),
            "windows": np.stack([c[1].to_array() for c in cut])}


def check_scales(scales: tuple[float, ...]) -> None:
    """Their map-back goes through the scale-1 window, so scale 1 must be among the test scales."""
    if not any(abs(s - 1.0) < 1e-9 for s in scales):
        raise MulaError("--protocol authors needs scale 1 among --scales (their code maps joints back "
                        "through the scale-1 window)")
