"""The authors' test-time processing, step for step (``--protocol authors``).

``NieXC/pytorch-mula`` tests LIP pictures with OpenCV and NumPy (``utils/eval_util.py``); their
numbers come out of these steps, which differ from ``mula``'s default protocol
(:mod:`mula_cli.inference`) in small ways that each move PCKh or mIoU a little. ``docs/fidelity.md``
lists every difference and its measured effect. Per picture (H x W, long edge L, window S):

1. Placement: ``base = 1 / (L / S)``; for each test scale s the picture is resized by
   ``f = base * s`` (bicubic, OpenCV's: Keys a = -0.75, no anti-aliasing, size ``round(W f)``),
   the window centre is ``int(W / 2 * f)``, ``int(H / 2 * f)`` and the S x S window is cut
   around it with grey 128 padding. Their crop stops one pixel short of the resized picture's
   last row and column (``min(end, size - 1)`` as an exclusive bound), so those stay grey.
2. Pose: final-stage heatmaps of the window and of its mirror (channels swapped back) resized to
   S (bilinear) and averaged; per scale the part of the window that holds the picture is cut out,
   resized by ``1 / s`` and added into an S x S canvas of zeros at ``int((S - size) / 2)``; the
   sum is divided by the number of scales (scale 1 must be among them). Gaussian blur (sigma 3),
   argmax, and ``(argmax - store_start + crop_start) / base`` with scale 1's window (no
   half-pixel terms). Their CSV holds ``int()`` of that, which is what their PCKh scores.
3. Parsing: scale 1, one pass, no flip: argmax of the logits upsampled to S, pasted into a zero
   (background) map of the resized picture's size, resized to H x W with OpenCV's nearest
   neighbour (``src = floor(dst * src_size / dst_size)``).
4. Scoring: their PCKh reads the predictions back from that CSV (``utils/calc_pckh.py``,
   ``read_data``), which turns the text ``nan`` into -1 and then every negative coordinate into 1,
   x and y each on its own (:func:`as_their_reader_reads`). Their step 2 writes a negative
   coordinate whenever the argmax lies left of or above the picture, e.g. a joint whose fused
   heatmap is <= 0 over the whole picture (the first maximum is then the canvas' zero corner).

Their code reads, resizes and flips with OpenCV. With OpenCV installed (the ``authors`` extra,
``opencv-python-headless``) every one of those calls is OpenCV's own, with the arguments theirs
pass, so the numbers are theirs to the last grey level. Without it the steps are emulated
(:data:`EMULATION_NOTE` says in what they can differ): stock OpenCV wheels resize uint8 pictures
bicubically with Intel IPP, whose rounding no portable code reproduces.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from mula_cli.devices import autocast
from mula_cli.errors import MulaError
from mula_cli.heatmaps import flip_heatmaps
from mula_cli.inference import OriginalPrediction, to_original
from mula_cli.manifests import DatasetManifest
from mula_cli.model.loss import upsample_logits

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
EMULATION_NOTE = ("OpenCV is not installed, so --protocol authors emulates it: pictures decoded by Pillow, "
                  "bicubic resizing without Intel IPP (stock OpenCV uses IPP, whose results differ by one grey "
                  "level on a few % of pixels, which can move a joint or a label). For the authors' numbers "
                  "exactly: pip install 'mula[authors]'")


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


def _linear_matrix(size_in: int, size_out: int, src_per_dst: float) -> np.ndarray:
    """(size_out, size_in) float weights of OpenCV's / PyTorch's bilinear resize (half-pixel centres,
    edges replicated)."""
    src = (np.arange(size_out) + 0.5) * src_per_dst - 0.5
    start = np.floor(src)
    t = src - start
    start = start.astype(np.int64)
    t = np.where(start < 0, 0.0, t)
    start = np.maximum(start, 0)
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), np.clip(start, 0, size_in - 1)), 1.0 - t)
    np.add.at(matrix, (np.arange(size_out), np.clip(start + 1, 0, size_in - 1)), t)
    return matrix


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
    """mula's default window (:func:`mula_cli.data.transforms.letterbox`) described as a :class:`Window`."""
    from mula_cli.data.transforms import eval_affine, letterbox

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
    _check_scales(scales)
    if steps.placement:
        pixels = decode_picture(raw) if raw is not None else None
        if pixels is None or pixels.shape[:2] != (img.height, img.width):
            pixels = np.asarray(img.convert("RGB"))
        cut = [cut_window(pixels, input_size, s) for s in scales]
    else:
        cut = [letterbox_window(img.convert("RGB"), input_size, s) for s in scales]
    return {"views": np.stack([c[0].transpose(2, 0, 1) for c in cut]),
            "windows": np.stack([c[1].to_array() for c in cut])}


def _fuse_pose(heat: np.ndarray, windows: list[Window], scales: tuple[float, ...], size: int,
               crop: bool = True) -> np.ndarray:
    """Their multi-scale fusion of flip-averaged (n, J, S, S) heatmaps into one (J, S, S) canvas
    (``crop=False``: whole windows, padding included)."""
    canvas = np.zeros(heat.shape[1:], np.float64)
    for maps, window, s in zip(heat, windows, scales):
        _add_view(canvas, maps, window, s, size, crop)
    return canvas / len(scales)


def _add_view(canvas: np.ndarray, maps: np.ndarray, window: Window, s: float, size: int, crop: bool) -> None:
    """Add one view's (J, S, S) heatmaps, resized back by ``1 / s``, into a float64 (J, S, S) canvas:
    one term of :func:`_fuse_pose`'s sum (the views are added in the order of the scales)."""
    x0, y0, x1, y1 = window.store if crop else (0, 0, size, size)
    part = maps[:, y0:y1, x0:x1].astype(np.float64)  # the heatmaps of the window's picture, padding cut away
    cv2 = opencv()
    if cv2 is not None:  # theirs: one multi-channel (H, W, J) float64 resize by fx = fy = 1 / s
        scaled = cv2.resize(np.ascontiguousarray(part.transpose(1, 2, 0)), None, fx=1.0 / s, fy=1.0 / s,
                            interpolation=cv2.INTER_LINEAR)
        scaled = scaled.reshape(*scaled.shape[:2], -1).transpose(2, 0, 1)
        oh, ow = scaled.shape[1:]
    else:
        ph, pw = part.shape[1:]
        oh, ow = max(1, round(ph / s)), max(1, round(pw / s))
        wy, wx = _linear_matrix(ph, oh, s), _linear_matrix(pw, ow, s)
        scaled = wy @ part @ wx.T  # (J, size / s, size / s)
    top, left = int((size - oh) / 2.0), int((size - ow) / 2.0)
    # their code would fail where the part overhangs the canvas; keep the overlap instead
    y0c, y1c, x0c, x1c = max(top, 0), min(top + oh, size), max(left, 0), min(left + ow, size)
    canvas[:, y0c:y1c, x0c:x1c] += scaled[:, y0c - top: y1c - top, x0c - left: x1c - left]


def _labels_to_original(argmax: np.ndarray, window: Window, orig_hw: tuple[int, int]) -> np.ndarray:
    """Paste the window's labels into a background map of the resized picture, then OpenCV-nearest to H x W."""
    rh, rw = window.resized
    x0, y0, x1, y1 = window.crop
    sx0, sy0, sx1, sy1 = window.store
    resized = np.zeros((rh, rw), np.int64)
    resized[y0:y1, x0:x1] = argmax[sy0:sy1, sx0:sx1]
    h, w = orig_hw
    cv2 = opencv()
    if cv2 is not None:  # theirs: a float64 map, cv2.INTER_NEAREST to (W, H)
        return cv2.resize(resized.astype(np.float64), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    rows = np.minimum(np.floor(np.arange(h) * (rh / h)).astype(np.int64), rh - 1)
    cols = np.minimum(np.floor(np.arange(w) * (rw / w)).astype(np.int64), rw - 1)
    return resized[rows[:, None], cols[None, :]]


def _window_affine(window: Window, orig_hw: tuple[int, int]) -> np.ndarray:
    """The original-to-window matrix of a placement (pixel centres), for mula's map-back."""
    fy, fx = window.resized[0] / orig_hw[0], window.resized[1] / orig_hw[1]
    shift_x, shift_y = window.store[0] - window.crop[0], window.store[1] - window.crop[1]
    return np.array([[fx, 0.0, 0.5 * fx - 0.5 + shift_x], [0.0, fy, 0.5 * fy - 0.5 + shift_y]])


def _flip_average(direct: torch.Tensor, mirrored: torch.Tensor, flip_index: list[int], joints: int,
                  size: int) -> np.ndarray:
    """(B, J, S, S) float32: each joint's heatmap and its mirror twin's, resized to S x S (bilinear,
    half-pixel centres) and averaged, from the (B, >= J, h, w) maps of the picture and of its mirror."""
    cv2 = opencv()
    if cv2 is None:
        both = torch.cat([direct, flip_heatmaps(mirrored, flip_index)])[:, :joints]
        up = F.interpolate(both, size=(size, size), mode="bilinear", align_corners=False)
        return ((up[: len(direct)] + up[len(direct):]) * 0.5).cpu().numpy()
    # theirs, joint by joint: cv2.resize of the map, of its twin's mirrored map then cv2.flip, += and *= 0.5
    d, m = direct.cpu().numpy(), mirrored.cpu().numpy()
    out = np.empty((len(d), joints, size, size), np.float32)
    for i in range(len(d)):
        for j in range(joints):
            heat = cv2.resize(np.ascontiguousarray(d[i, j]), (size, size), interpolation=cv2.INTER_LINEAR)
            twin = cv2.resize(np.ascontiguousarray(m[i, flip_index[j]]), (size, size), interpolation=cv2.INTER_LINEAR)
            heat += cv2.flip(twin, 1)
            heat *= 0.5
            out[i, j] = heat
    return out


@torch.no_grad()
def predict_originals(model: torch.nn.Module, views: torch.Tensor, windows: np.ndarray,
                      orig_sizes: list[tuple[int, int]], manifest: DatasetManifest, scales: tuple[float, ...],
                      blur_sigma: float = 3.0, steps: AuthorsSteps = ALL_STEPS,
                      amp_dtype: torch.dtype | None = None) -> list[OriginalPrediction]:
    """The authors' predictions for a batch, at each picture's original resolution.

    Args:
        model: a MuLA model in eval mode.
        views: (B, n, 3, S, S) windows from :func:`authors_views` on the model's device.
        windows: (B, n, 11) their placements (``Window.to_array``).
        orig_sizes: each picture's (height, width).
        manifest: mirror pairs for the flip.
        scales: the n test scales (1 among them).
        blur_sigma: the heatmap blur.
        steps: which of their steps to take (all: their protocol).
        amp_dtype: autocast dtype of the network's forward passes (None = full precision); the rest
            runs in float32/float64 either way.
    """
    b, n, _, size, _ = views.shape
    joints = model.config.num_joints
    one = next(k for k, s in enumerate(scales) if abs(s - 1.0) < 1e-9)
    placements = [[Window.from_array(a) for a in windows[i]] for i in range(b)]
    # Each view is fused into its picture's canvas as soon as it is predicted (their sum, in their
    # order), so only one scale's float32 maps are held besides the canvases: not a (B, n, J, S, S)
    # array. The canvases and the resizing stay float64, so the sums are the ones _fuse_pose makes.
    canvases = np.zeros((b, joints, size, size), np.float64)
    argmax = None
    for k in range(n):
        x = views[:, k]
        with autocast(x.device, amp_dtype):
            direct, mirrored = model(x), model(x.flip(-1))  # two passes, as theirs (BN in eval mode)
        heat = _flip_average(direct.pose[-1].float(), mirrored.pose[-1].float(), manifest.joint_flip_index(),
                             joints, size)
        for i in range(b):
            _add_view(canvases[i], heat[i], placements[i][k], scales[k], size, steps.crop_heatmaps)
        if k == one:
            logits = upsample_logits(direct.parsing[-1].float(), (size, size))
            argmax = logits.argmax(dim=1).cpu().numpy()
    results = []
    for i in range(b):
        placed = placements[i]
        fused = canvases[i] / len(scales)
        # theirs: scipy's filter on each joint's float64 map (mula's gaussian_blur is equal to rounding)
        blurred = np.stack([gaussian_filter(m, sigma=blur_sigma) for m in fused]) if blur_sigma > 0 else fused
        flat = blurred.reshape(joints, -1).argmax(axis=1)  # NumPy: the first maximum, as theirs
        py, px = np.divmod(flat, size)
        h, w = orig_sizes[i]
        base = base_scale(h, w, size)
        window = placed[one]
        if steps.integer_coordinates:
            xs = (px - window.store[0] + window.crop[0]) / base
            ys = (py - window.store[1] + window.crop[1]) / base
            coords = np.trunc(np.stack([xs, ys], axis=1))  # int() in their CSV writer
        else:  # pixel centres: window pixel p is resized pixel q = p - store + crop, at (q + 0.5) * W / w' - 0.5
            xs = (px - window.store[0] + window.crop[0] + 0.5) * w / window.resized[1] - 0.5
            ys = (py - window.store[1] + window.crop[1] + 0.5) * h / window.resized[0] - 0.5
            coords = np.stack([xs, ys], axis=1)
        scores = blurred.reshape(joints, -1)[np.arange(joints), flat]
        if steps.parsing_map_back:
            labels = torch.from_numpy(_labels_to_original(argmax[i], window, (h, w)))
        else:
            labels = to_original(torch.from_numpy(argmax[i]), _window_affine(window, (h, w)), (h, w))
        results.append(OriginalPrediction(labels, coords, scores))
    return results


def as_their_reader_reads(joints: np.ndarray) -> np.ndarray:
    """Predicted (..., 2) joints as their PCKh script scores them: each NaN or negative coordinate
    becomes 1, x and y separately (a copy, float64).

    ``utils/calc_pckh.py``, ``read_data``: the text ``nan`` is read as -1 and, for predictions (no
    visibility column), ``data[data<0] = 1`` on the (images, joints, 2) array. So (-37, 0) is scored
    as (1, 0), and a missing joint as (1, 1), which is a hit where the ground truth lies near the
    picture's corner. Ground truth is not touched by this rule (their reader keeps its -1).
    """
    out = np.array(joints, dtype=np.float64, copy=True)
    out[~(out >= 0)] = 1.0  # negative (-0.0 is not) and NaN
    return out


def _check_scales(scales: tuple[float, ...]) -> None:
    if not any(abs(s - 1.0) < 1e-9 for s in scales):
        raise MulaError("--protocol authors needs scale 1 among --scales (their code maps joints back "
                        "through the scale-1 window)")


def check_options(pose_flip: bool, parsing_flip: bool, scales: tuple[float, ...]) -> None:
    """The authors' protocol has fixed flips (pose always flip-averaged, parsing never) and needs scale 1."""
    if not pose_flip or parsing_flip:
        raise MulaError("--protocol authors always flip-averages pose and never parsing; drop --flip / "
                        "--no-pose-flip (or use the default protocol)")
    _check_scales(scales)

