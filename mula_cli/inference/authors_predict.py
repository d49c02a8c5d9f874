"""The authors' test-time prediction (``--protocol authors``, steps 2 and 3): the network on the
windows of :mod:`mula_cli.transforms.authors_views`, their flip averaging, multi-scale fusion and
map-back to the original picture.

Steps 2 (pose: flip average, multi-scale fusion, blur, argmax, their integer map-back) and 3 (parsing:
scale 1, no flip, OpenCV-nearest map-back) are described once, in
:mod:`mula_cli.evaluation.authors_protocol`.

Every resize and flip is OpenCV's own where the ``authors`` extra is installed, else emulated.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from mula_cli.codecs.heatmaps import flip_heatmaps
from mula_cli.inference.batch import OriginalPrediction, to_original
from mula_cli.model.loss import upsample_logits
from mula_cli.transforms import authors_views as views
from mula_cli.transforms.authors_views import ALL_STEPS, AuthorsSteps, Window, base_scale
from mula_cli.utils.devices import autocast
from mula_cli.utils.manifests import DatasetManifest


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
    cv2 = views.opencv()  # through the module: one switch for every step
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
    cv2 = views.opencv()  # through the module: one switch for every step
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
    cv2 = views.opencv()  # through the module: one switch for every step
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


