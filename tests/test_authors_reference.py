"""``mula evaluate --protocol authors`` against the authors' LIP test steps, run picture by picture as
their code runs them.

The steps below are written from NieXC/pytorch-mula (``main.py``'s test mode, ``utils/eval_util.py``,
``utils/data_augmentation.py``, ``utils/calc_pckh.py``, ``utils/calc_miou.py``) in the order and with the
library calls theirs make: ``cv2.imread``, ``cv2.resize`` (bicubic for the picture, bilinear for the
heatmaps), their crop with grey 128 padding, the mirrored pass averaged joint by joint, the multi-scale
paste, ``scipy``'s Gaussian filter, ``int()`` into the CSV, the parsing map pasted into the resized
picture and brought back with ``cv2.INTER_NEAREST``; then their PCKh and mIoU on what they wrote.
The network is the same model in both; only the test-time processing around it is compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_authors_protocol import _their_pckh

from mula_cli.model.loss import upsample_logits
from mula_cli.model.weights import load_weights
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

cv2 = pytest.importorskip("cv2", reason="the authors' steps need OpenCV: pip install 'mula[authors]'")
from scipy.ndimage import gaussian_filter  # noqa: E402

LIP = load_manifest("lip")
# tall, wide, square, larger than the window, very wide: every placement case of their crop
SIZES = [(97, 61), (150, 233), (128, 128), (301, 123), (45, 200)]


def _their_crop(im: np.ndarray, center: tuple[float, float], crop: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """augmentation_cropped with no centre jitter: a float window of 128, the picture copied in with
    their exclusive end min(end, size - 1); the 8 crop parameters in their order."""
    window = np.zeros((crop, crop, 3)) + 128
    ox, oy = int(center[0] - crop / 2.0), int(center[1] - crop / 2.0)
    x0, y0, sx0, sy0 = max(ox, 0), max(oy, 0), max(-ox, 0), max(-oy, 0)
    x1 = min(int(center[0] + crop / 2.0), im.shape[1] - 1)
    y1 = min(int(center[1] + crop / 2.0), im.shape[0] - 1)
    sx1, sy1 = sx0 + (x1 - x0), sy0 + (y1 - y0)
    window[sy0:sy1, sx0:sx1, :] = im[y0:y1, x0:x1, :]
    return window, (x0, y0, sx0, sy0, x1, y1, sx1, sy1)


def _net(model, windows: list[np.ndarray], crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Their ``net(batch)``: final-stage heatmaps and parsing scores at the window's size (their network
    upsamples parsing inside). Their BGR float windows hold whole grey levels; mula's model reads RGB."""
    x = torch.from_numpy(np.stack(windows)[..., ::-1].round().astype(np.uint8).copy()).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(x)
    return out.pose[-1].float().numpy(), upsample_logits(out.parsing[-1].float(), (crop, crop)).numpy()


def their_pose(model, im: np.ndarray, crop: int, scales: list[float]) -> np.ndarray:
    """single_image_testing_for_pose_on_lip_dataset: (J, 2) joints in the original picture."""
    h, w = im.shape[:2]
    base = 1.0 / (max(h, w) * 1.0 / crop)
    windows, params = [], []
    for sm in scales:
        resized = cv2.resize(im, None, fx=base * sm, fy=base * sm, interpolation=cv2.INTER_CUBIC)
        window, param = _their_crop(resized, (int(w / 2.0 * base * sm), int(h / 2.0 * base * sm)), crop)
        windows.append(window)
        params.append(param)
    pose, _ = _net(model, windows, crop)
    flipped, _ = _net(model, [cv2.flip(wd, 1) for wd in windows], crop)
    joints, flip_index = LIP.num_joints, LIP.joint_flip_index()  # their flipped_idx, in this model's order
    fused = np.zeros((len(scales), joints, crop, crop))
    for k in range(len(scales)):
        for j in range(joints):
            heat = cv2.resize(pose[k, j].copy(), (crop, crop), interpolation=cv2.INTER_LINEAR)
            twin = cv2.resize(flipped[k, flip_index[j]].copy(), (crop, crop), interpolation=cv2.INTER_LINEAR)
            heat += cv2.flip(twin, 1)
            heat *= 0.5
            fused[k, j] = heat
    canvas = np.zeros((joints, crop, crop))
    for k, sm in enumerate(scales):
        x0, y0, sx0, sy0, _, _, sx1, sy1 = params[k]
        part = fused[k][:, sy0:sy1, sx0:sx1].transpose((1, 2, 0))
        part = cv2.resize(part, None, fx=1.0 / sm, fy=1.0 / sm, interpolation=cv2.INTER_LINEAR).transpose((2, 0, 1))
        ul_x, ul_y = int((crop - part.shape[2]) / 2.0), int((crop - part.shape[1]) / 2.0)
        canvas[:, ul_y:ul_y + part.shape[1], ul_x:ul_x + part.shape[2]] += part
    canvas = canvas / len(scales)
    x0, y0, sx0, sy0 = params[scales.index(1)][:4]
    out = np.zeros((joints, 2))
    for j in range(joints):
        heat = gaussian_filter(canvas[j], sigma=3)
        py, px = np.unravel_index(heat.argmax(), heat.shape)
        out[j] = ((px - sx0 + x0) / base, (py - sy0 + y0) / base)
    return out


def their_parsing(model, im: np.ndarray, crop: int) -> np.ndarray:
    """single_image_testing_for_parsing_on_lip_dataset: (H, W) class ids."""
    h, w = im.shape[:2]
    scale = 1 / (max(h, w) * 1.0 / crop)
    resized = cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    window, (x0, y0, sx0, sy0, x1, y1, sx1, sy1) = _their_crop(resized, (int(w / 2.0 * scale), int(h / 2.0 * scale)),
                                                               crop)
    _, logits = _net(model, [window], crop)
    argmax = logits[0].argmax(0)
    parsing = np.zeros(resized.shape[:2])
    parsing[y0:y1, x0:x1] = argmax[sy0:sy1, sx0:sx1]
    return cv2.resize(parsing, dsize=(w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def their_miou(preds: list[np.ndarray], gts: list[np.ndarray], n: int) -> float:
    """calc_miou_lip_dataset's mean IoU (percent): one histogram over every picture, NaN classes skipped."""
    hist = np.zeros((n, n))
    for pred, gt in zip(preds, gts):
        k = (gt >= 0) & (gt < n)
        hist += np.bincount(n * gt[k].astype(int) + pred[k], minlength=n ** 2).reshape(n, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    return 100.0 * float(np.nanmean(iou))


@pytest.mark.parametrize("scales", [[1], [0.7, 0.85, 1, 1.15, 1.3]], ids=["one-scale", "five-scales"])
def test_evaluate_gives_the_authors_joints_labels_and_scores(tiny_weights: Path, tmp_path: Path,
                                                            scales: list[float]) -> None:
    from mula_cli.data.prepare import prepare_dataset

    from trees import build_lip_tree, csv_row, lip_paths, png_bytes

    build_lip_tree(tmp_path / "LIP", counts={"train": 1, "val": len(SIZES)}, seed=5, sizes=SIZES)
    paths = lip_paths(tmp_path / "LIP", "official", "val")
    ids = paths["ids"].read_text().split()
    model = load_weights(tiny_weights)[0].eval()
    crop = model.config.input_size
    pictures = [cv2.imread(str(paths["images"] / f"{sid}.jpg"), 1) for sid in ids]
    joints = [their_pose(model, im, crop, scales) for im in pictures]
    labels = [their_parsing(model, im, crop) for im in pictures]

    # Ground truth that makes the scores mean something: every other joint where they put it (where
    # that is inside the picture), the others random; the first two label maps theirs, the rest random.
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for k, (sid, pred, im) in enumerate(zip(ids, joints, pictures)):
        h, w = im.shape[:2]
        gt = np.stack([rng.uniform(0, w - 1, len(pred)), rng.uniform(0, h - 1, len(pred))], axis=1).round()
        keep = (np.arange(len(pred)) % 2 == 0) & (pred >= 0).all(axis=1) & (pred[:, 0] < w) & (pred[:, 1] < h)
        keep[[8, 9]] = False  # the head stays random, so each picture has a head size
        gt[keep] = np.trunc(pred[keep])
        rows.append(csv_row(sid, gt))
        truth.append(labels[k].astype(np.uint8) if k < 2 else rng.integers(0, LIP.num_classes, (h, w), dtype=np.uint8))
        (paths["labels"] / f"{sid}.png").write_bytes(png_bytes(truth[-1]))
    paths["csv"].write_text("\n".join(rows) + "\n")
    cache = tmp_path / "lip.h5"
    prepare_dataset(LIP, tmp_path / "LIP", cache)

    result = run_cli("evaluate", tiny_weights, "--data", cache, "--protocol", "authors", "--scales",
                     ",".join(map(str, scales)), "--workers", "0", "--save-dir", tmp_path / "ours")
    assert result.exit_code == 0, result.output
    their_rows = [[f"{sid}.jpg", *[str(int(v)) for v in pred.ravel()]] for sid, pred in zip(ids, joints)]
    ours = (tmp_path / "ours" / "pred_keypoints_lip.csv").read_text().split()
    assert ours == [",".join(row) for row in their_rows]  # the same joints, to the pixel
    for sid, theirs in zip(ids, labels):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "ours" / "parsing" / f"{sid}.png")), theirs), sid

    doc = json.loads((tmp_path / "ours" / "metrics.json").read_text())
    pckh, miou = _their_pckh(their_rows, paths["csv"]), their_miou(labels, truth, LIP.num_classes)
    assert 0 < pckh < 100 and 0 < miou < 100  # neither score is trivial
    assert doc["pose"]["pckh"] == pytest.approx(pckh, abs=1e-9)
    assert doc["parsing"]["miou"] == pytest.approx(miou, abs=1e-9)
    assert f"{pckh:.2f}" in result.output and f"{miou:.2f}" in result.output  # the printed numbers too
    assert doc["protocol"]["opencv"] == cv2.__version__
