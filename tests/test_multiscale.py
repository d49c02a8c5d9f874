"""Multi-scale testing (the picture resized per scale, maps fused in the base window) against a
hand-computed reference, and that nearby scales really change what the model sees."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mula_cli.inference.batch import PAPER_SCALES, InferenceOptions, ScaleViews, parse_scales, predict_batch
from mula_cli.model.mula import MulaOutput
from mula_cli.transforms.affine import eval_affine, invert_affine, letterbox, scale_views
from mula_cli.utils.manifests import load_manifest

LIP = load_manifest("lip")
SIZE, STRIDE = 64, 4


class Probe(torch.nn.Module):
    """A stand-in model whose heatmaps and logits are plain functions of the window's pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_joints=LIP.num_joints, stride=STRIDE, input_size=SIZE)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device for evaluate_model

    def forward(self, x: torch.Tensor) -> MulaOutput:
        pooled = F.avg_pool2d(x.float(), STRIDE) / 255.0
        r, g, b = pooled[:, :1], pooled[:, 1:2], pooled[:, 2:3]
        pose = torch.cat([r * (j + 1) - g * j + b * (j % 3) for j in range(LIP.num_joints + 1)], dim=1)
        parsing = torch.cat([(r, g, b)[k % 3] * (k + 1) - (r, g, b)[(k + 1) % 3] * k for k in range(LIP.num_classes)], 1)
        return MulaOutput([pose], [parsing])


def _picture(height: int = 90, width: int = 50) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    g = 255 * np.exp(-((x - 30) ** 2 + (y - 40) ** 2) / 300.0)
    b = 255 * (x + y) / (height + width)
    return Image.fromarray(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))


def _views(img: Image.Image, scales: tuple[float, ...]) -> tuple[torch.Tensor, ScaleViews]:
    base, m = letterbox(img, SIZE)
    windows, affines = scale_views(img, SIZE, scales)
    images = torch.from_numpy(windows.transpose(0, 3, 1, 2).copy())[None]
    return torch.from_numpy(base.transpose(2, 0, 1).copy())[None], ScaleViews(images, affines[None], m[None])


def _bilinear(grid: np.ndarray, u: float, v: float) -> np.ndarray:
    """Bilinear value of (C, h, w) at column u, row v, coordinates clamped to the map (border)."""
    h, w = grid.shape[1:]
    u, v = min(max(u, 0.0), w - 1.0), min(max(v, 0.0), h - 1.0)
    x0, y0 = int(np.floor(u)), int(np.floor(v))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    a, c = u - x0, v - y0
    return ((1 - a) * (1 - c) * grid[:, y0, x0] + a * (1 - c) * grid[:, y0, x1]
            + (1 - a) * c * grid[:, y1, x0] + a * c * grid[:, y1, x1])


def _reference(model: Probe, img: Image.Image, scales: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Fused joint heatmaps (J, h, w) and logits (K, S, S), computed point by point from the definitions."""
    h, w = img.height, img.width
    base = eval_affine(h, w, SIZE)[0]
    to_picture = invert_affine(base)
    cells = SIZE // STRIDE
    heat_sum, heat_n = np.zeros((LIP.num_joints, cells, cells)), np.zeros((cells, cells))
    logit_sum, logit_n = np.zeros((LIP.num_classes, SIZE, SIZE)), np.zeros((SIZE, SIZE))
    for s in scales:
        window, m = letterbox(img, SIZE, scale=s)
        out = model(torch.from_numpy(window.transpose(2, 0, 1).copy())[None])
        heat = out.pose[0][0, : LIP.num_joints].double().numpy()
        logits = out.parsing[0][0].double().numpy()
        for cy in range(cells):
            for cx in range(cells):
                p = np.array([STRIDE * cx + STRIDE / 2 - 0.5, STRIDE * cy + STRIDE / 2 - 0.5])
                q = m[:, :2] @ (to_picture[:, :2] @ p + to_picture[:, 2]) + m[:, 2]  # base -> picture -> view
                if (-0.5 <= q).all() and (q <= SIZE - 0.5).all():
                    heat_sum[:, cy, cx] += _bilinear(heat, (q[0] - (STRIDE / 2 - 0.5)) / STRIDE,
                                                     (q[1] - (STRIDE / 2 - 0.5)) / STRIDE)
                    heat_n[cy, cx] += 1
        ratio = (cells - 1) / (SIZE - 1)  # logits spread over pixel centres 0..S-1 (align_corners=True)
        for py in range(SIZE):
            for px in range(SIZE):
                p = np.array([px, py], np.float64)
                q = m[:, :2] @ (to_picture[:, :2] @ p + to_picture[:, 2]) + m[:, 2]
                if (q >= 0).all() and (q <= SIZE - 1).all():
                    logit_sum[:, py, px] += _bilinear(logits, q[0] * ratio, q[1] * ratio)
                    logit_n[py, px] += 1
    return heat_sum / np.maximum(heat_n, 1), logit_sum / np.maximum(logit_n, 1)


def test_multiscale_fusion_matches_the_hand_computed_reference() -> None:
    model, img = Probe(), _picture()
    scales = (0.6, 1.0, 1.45)
    base, views = _views(img, scales)
    options = InferenceOptions(pose_flip=False, scales=scales)
    pred = predict_batch(model, base, LIP, options, views=views)
    heat, logits = _reference(model, img, scales)
    np.testing.assert_allclose(pred.heatmaps[0].double().numpy(), heat, atol=1e-5)
    fused = torch.log(pred.probabilities[0].double())  # softmax of the fused logits
    np.testing.assert_allclose((fused - fused[:1]).numpy(), logits - logits[:1], atol=1e-4)
    assert (pred.labels[0].numpy() == logits.argmax(axis=0)).mean() > 0.999


def test_scale_one_views_give_exactly_the_single_scale_result() -> None:
    model, img = Probe(), _picture()
    base, views = _views(img, (1.0,))
    plain = predict_batch(model, base, LIP, InferenceOptions())
    viewed = predict_batch(model, base, LIP, InferenceOptions(), views=views)
    assert torch.equal(plain.heatmaps, viewed.heatmaps) and torch.equal(plain.labels, viewed.labels)
    with pytest.raises(ValueError, match="views"):
        predict_batch(model, base, LIP, InferenceOptions(scales=(0.9, 1.1)))


def test_nearby_scales_resize_the_picture_and_change_the_result() -> None:
    model, img = Probe(), _picture(120, 70)
    windows, affines = scale_views(img, SIZE, (0.9, 1.0, 1.1))
    assert [round(a[1, 1] * 120) for a in affines] == [58, 64, 70]  # the picture's long edge per scale
    assert not np.array_equal(windows[0], windows[1]) and not np.array_equal(windows[1], windows[2])
    results = []
    for s in (0.9, 1.0, 1.1):
        base, views = _views(img, (s,))
        results.append(predict_batch(model, base, LIP, InferenceOptions(scales=(s,)), views=views).heatmaps)
    assert not torch.allclose(results[0], results[1]) and not torch.allclose(results[2], results[1])


def test_scales_option() -> None:
    assert parse_scales("paper") == PAPER_SCALES == (0.7, 0.85, 1.0, 1.15, 1.3)
    assert parse_scales("0.9, 1.1") == (0.9, 1.1)
    for bad in ("", "big", "0.1"):
        with pytest.raises(Exception, match="--scales"):
            parse_scales(bad)


def test_predictor_tests_at_several_scales(tiny_weights) -> None:
    from mula_cli import Predictor

    img = _picture(150, 90)
    one = Predictor(tiny_weights, device="cpu")(img)
    several = Predictor(tiny_weights, device="cpu", scales=(0.8, 1.2))(img)
    assert several.labels.shape == one.labels.shape == (150, 90) and several.joints.shape == (16, 2)
    assert not (np.array_equal(several.joints, one.joints) and np.array_equal(several.labels, one.labels))
