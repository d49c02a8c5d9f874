"""``--protocol authors``: each step of the authors' test code where it differs from the default,
against hand-computed answers (NieXC/pytorch-mula, utils/eval_util.py and data_augmentation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_multiscale import SIZE, Probe, _picture

from mula_cli.inference.authors_predict import _fuse_pose, _labels_to_original, predict_originals
from mula_cli.transforms.affine import letterbox
from mula_cli.transforms.authors_views import Window, cut_window, resize_bicubic
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli

LIP = load_manifest("lip")


def test_placement_is_their_crop_one_pixel_short() -> None:
    # H 100, W 60, window 64: base = 0.64, resized 64 x 38 (38.4 rounds down), centre int(19.2) = 19,
    # int(32.0) = 32; columns 0..36 of the resized picture land at 13..49, its last column (37) and
    # last row (63) are never copied: their crop end is min(end, size - 1), used as exclusive.
    pixels = np.full((100, 60, 3), 200, np.uint8)
    window, placed = cut_window(pixels, SIZE, 1.0)
    assert placed.resized == (64, 38) and placed.crop == (0, 0, 37, 63) and placed.store == (13, 0, 50, 63)
    assert (window[:63, 13:50] == 200).all()
    assert (window[63] == 128).all() and (window[:, 50] == 128).all() and (window[:, 12] == 128).all()
    ours = letterbox(Image.fromarray(pixels), SIZE)[0]  # the default places all 38 columns and 64 rows
    assert (ours[:, 13:51] == 200).all() and (ours[63, 13:51] == 200).all()
    _, at_scale = cut_window(pixels, SIZE, 1.3)  # 83 x 50 (49.92): window rows 9..72, centre int(41.6)
    assert at_scale.resized == (83, 50) and at_scale.crop[1] == 9 and at_scale.store[1] == 0


def test_bicubic_resize_is_opencvs() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(resize_bicubic(pixels, 1.0), pixels)  # exact copy at scale 1
    assert resize_bicubic(np.full((5, 6, 3), 77, np.uint8), 1.7).min() == 77 == resize_bicubic(
        np.full((5, 6, 3), 77, np.uint8), 1.7).max()
    out = resize_bicubic(pixels, 2.0)
    assert out.shape == (14, 18, 3)  # round(W * f), as cv2.resize(None, fx, fy)
    # every output pixel by hand: source x = (dst + 0.5) / 2 - 0.5, four taps clamped at the edges (Keys, A = -0.75)
    def keys(t: float) -> list[float]:
        a = -0.75
        w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
             ((a + 2) * t - (a + 3)) * t * t + 1, ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1]
        return w + [1 - sum(w)]

    def taps(d: int, n: int) -> list[tuple[int, float]]:
        src = (d + 0.5) / 2.0 - 0.5
        start = int(np.floor(src))
        return [(min(max(start - 1 + k, 0), n - 1), w) for k, w in enumerate(keys(src - start))]

    expected = np.array([[[sum(wy * wx * float(pixels[y, x, c]) for y, wy in taps(r, 7) for x, wx in taps(q, 9))
                           for c in range(3)] for q in range(18)] for r in range(14)])
    diff = np.abs(out.astype(np.float64) - np.clip(np.round(expected), 0, 255))
    assert diff.max() <= 1 and diff.mean() < 0.1  # fixed-point rounding only
    default = np.asarray(Image.fromarray(pixels).resize((18, 14), Image.Resampling.BICUBIC))
    assert not np.array_equal(out, default)  # PIL's bicubic (A = -0.5) is another filter


def test_heatmaps_outside_the_picture_are_cut_before_fusing() -> None:
    heat = np.zeros((1, 2, SIZE, SIZE))
    heat[0, :, 30, 5] = 9.0  # a peak in the padding, left of the picture
    heat[0, :, 20, 30] = 1.0  # the person
    placed = Window(0.64, (0, 0, 37, 63), (13, 0, 50, 63), (64, 38))
    fused = _fuse_pose(heat, [placed], (1.0,), SIZE)
    assert fused[0, 30, 5] == 0.0 and fused[0, 20, 30] == 1.0 and fused[0, 63].max() == 0.0
    # two scales: the half-size window's picture part is resized by 1 / 0.5 and pasted centred
    half = np.zeros((1, 1, SIZE, SIZE))
    half[0, 0, 10:20, 20:30] = 1.0
    small = Window(0.32, (0, 0, 19, 32), (20, 16, 39, 48), (32, 19))
    two = _fuse_pose(np.concatenate([np.zeros((1, 1, SIZE, SIZE)), half]), [placed, small], (1.0, 0.5), SIZE)
    # window rows 16..19, columns 20..29 are part rows 0..3, columns 0..9; resized by 2 (64 x 38) they
    # cover rows 0..7, columns 0..19 pasted at int((64 - 38) / 2) = 13; two scales: halved
    assert two.shape == (1, SIZE, SIZE) and two[0, :, :13].max() == 0.0
    assert two[0, 2, 20] == pytest.approx(0.5) and two[0, 12, 20] == 0.0 and two[0, 2, 40] == 0.0


def test_coordinates_map_back_without_half_pixels_and_are_truncated() -> None:
    model = Probe()
    img = _picture(100, 60)
    window, placed = cut_window(np.asarray(img), SIZE, 1.0)
    views = torch.from_numpy(window.transpose(2, 0, 1).copy())[None, None]
    found = predict_originals(model, views, placed.to_array()[None, None], [(100, 60)], LIP, (1.0,))[0]
    assert np.array_equal(found.joints, np.trunc(found.joints))
    # recompute one joint: argmax of the blurred fused map, then (pos - store + crop) / base
    from mula_cli.codecs.heatmaps import flip_heatmaps, gaussian_blur
    from mula_cli.inference.authors_predict import _fuse_pose as fuse

    x = views[:, 0]
    up = torch.nn.functional.interpolate(
        torch.cat([model(x).pose[-1], flip_heatmaps(model(x.flip(-1)).pose[-1], LIP.joint_flip_index())])[:, :16],
        size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    heat = ((up[:1] + up[1:]) * 0.5).double().numpy()
    blurred = gaussian_blur(torch.from_numpy(fuse(heat, [placed], (1.0,), SIZE))[None], 3.0)[0].numpy()
    py, px = np.unravel_index(blurred[0].argmax(), blurred[0].shape)
    assert found.joints[0, 0] == int((px - 13 + 0) / 0.64) and found.joints[0, 1] == int((py - 0 + 0) / 0.64)


def test_parsing_goes_back_through_the_resized_picture_with_opencv_nearest() -> None:
    argmax = np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 7 + 1  # no background inside the window
    placed = Window(0.64, (0, 0, 37, 63), (13, 0, 50, 63), (64, 38))
    labels = _labels_to_original(argmax, placed, (100, 60))
    assert labels.shape == (100, 60)
    # row r of the picture reads resized row floor(r * 64 / 100); column c reads floor(c * 38 / 60)
    for r, c in ((0, 0), (57, 31), (98, 58), (99, 59), (40, 59)):
        rr, cc = int(np.floor(r * 64 / 100)), int(np.floor(c * 38 / 60))
        expected = 0 if rr == 63 or cc == 37 else argmax[rr, cc + 13]
        assert labels[r, c] == expected
    assert (labels[99] == 0).all() and (labels[:, 59] == 0).all()  # their one-pixel-short crop: background


def test_evaluate_with_the_authors_protocol(tiny_weights: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OpenCV (forced here; tests/test_authors_reference.py runs it with OpenCV) the steps are
    emulated, and evaluate says so once and records it."""
    import mula_cli.transforms.authors_views as authors
    from mula_cli.data.prepare import prepare_dataset

    from trees import build_lip_tree

    build_lip_tree(tmp_path / "LIP", counts={"train": 1, "val": 3}, seed=2)
    cache = tmp_path / "lip.h5"
    prepare_dataset(LIP, tmp_path / "LIP", cache)
    monkeypatch.setattr(authors, "opencv", lambda: None)
    result = run_cli("evaluate", tiny_weights, "--data", cache, "--protocol", "authors", "--scales", "0.85,1",
                     "--workers", "0", "--save-dir", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert result.output.count("emulates it") == 1 and "mula[authors]" in result.output
    doc = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert doc["protocol"]["name"] == "authors" and doc["protocol"]["parsing_scales"] == [1.0]
    assert doc["protocol"]["opencv"] is None
    assert doc["images"] == 3 and doc["pose"]["images"] + doc["pose"]["excluded_images"] == 3
    for bad in (["--flip"], ["--scales", "0.9"], ["--protocol-x"]):
        args = ["--protocol", "authors"] if bad[0] != "--protocol-x" else ["--protocol", "theirs"]
        out = run_cli("evaluate", tiny_weights, "--data", cache, *args, *[b for b in bad if b != "--protocol-x"])
        assert out.exit_code == 2, out.output


@pytest.mark.parametrize("scales", [(1.0,), (0.7, 1.0, 1.3)])
def test_authors_predictions_have_the_pictures_size(scales: tuple[float, ...]) -> None:
    from mula_cli.transforms.authors_views import authors_views

    img = _picture(80, 45)
    sample = authors_views(img, SIZE, scales)
    views = torch.from_numpy(sample["views"])[None]
    found = predict_originals(Probe(), views, sample["windows"][None], [(80, 45)], LIP, scales)[0]
    assert found.labels.shape == (80, 45) and found.joints.shape == (16, 2) and np.isfinite(found.scores).all()


def test_every_step_switched_off_is_the_default_protocol() -> None:
    from mula_cli.inference.batch import predict_batch, to_original
    from mula_cli.transforms.affine import apply_affine, invert_affine
    from mula_cli.transforms.authors_views import AuthorsSteps, authors_views

    model, img = Probe(), _picture(90, 50)
    off = AuthorsSteps(placement=False, crop_heatmaps=False, integer_coordinates=False, parsing_map_back=False)
    sample = authors_views(img, SIZE, (1.0,), off)
    theirs = predict_originals(model, torch.from_numpy(sample["views"])[None], sample["windows"][None], [(90, 50)],
                               LIP, (1.0,), steps=off)[0]
    pixels, m = letterbox(img, SIZE)
    ours = predict_batch(model, torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None], LIP)
    joints = apply_affine(ours.joints[0].double().numpy(), invert_affine(m))
    np.testing.assert_allclose(theirs.joints, joints, atol=1e-4)
    assert torch.equal(theirs.labels, to_original(ours.labels[0], m, (90, 50)))
    full = predict_originals(model, torch.from_numpy(authors_views(img, SIZE, (1.0,))["views"])[None],
                             authors_views(img, SIZE, (1.0,))["windows"][None], [(90, 50)], LIP, (1.0,))[0]
    assert not np.array_equal(full.joints, theirs.joints) or not torch.equal(full.labels, theirs.labels)


def test_views_are_fused_as_they_come_with_the_same_sums() -> None:
    """m15: five scales of a batch are fused into float64 canvases as each scale is predicted, not
    held as a float64 (B, n, J, S, S) array first; joints and scores are bit for bit those of the
    float64 array fused picture by picture."""
    import tracemalloc

    from scipy.ndimage import gaussian_filter

    from mula_cli.inference.authors_predict import _flip_average
    from mula_cli.transforms.authors_views import authors_views

    model, scales = Probe(), (0.7, 0.85, 1.0, 1.15, 1.3)
    imgs = [_picture(80 + 7 * i, 45 + 5 * i) for i in range(4)]
    samples = [authors_views(img, SIZE, scales) for img in imgs]
    views = torch.from_numpy(np.stack([s["views"] for s in samples]))
    windows = np.stack([s["windows"] for s in samples])
    sizes = [(img.height, img.width) for img in imgs]
    tracemalloc.start()
    try:
        found = predict_originals(model, views, windows, sizes, LIP, scales)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_view = len(imgs) * LIP.num_joints * SIZE * SIZE * 8  # one scale's maps of the batch in float64
    assert peak < 3 * one_view, f"peak {peak / one_view:.1f} x one scale's float64 maps"

    heat = np.zeros((len(imgs), len(scales), LIP.num_joints, SIZE, SIZE))
    for k in range(len(scales)):
        x = views[:, k]
        heat[:, k] = _flip_average(model(x).pose[-1], model(x.flip(-1)).pose[-1], LIP.joint_flip_index(),
                                   LIP.num_joints, SIZE)
    for i, got in enumerate(found):
        fused = _fuse_pose(heat[i], [Window.from_array(a) for a in windows[i]], scales, SIZE)
        blurred = np.stack([gaussian_filter(m, sigma=3.0) for m in fused]).reshape(LIP.num_joints, -1)
        assert np.array_equal(got.scores, blurred.max(axis=1)), i
        py, px = np.divmod(blurred.argmax(axis=1), SIZE)
        at_1 = Window.from_array(windows[i][scales.index(1.0)])  # factor = base at scale 1
        xs, ys = (px - at_1.store[0] + at_1.crop[0]) / at_1.factor, (py - at_1.store[1] + at_1.crop[1]) / at_1.factor
        assert np.array_equal(got.joints, np.trunc(np.stack([xs, ys], axis=1))), i


def test_their_reader_sets_negative_and_nan_coordinates_to_1_each_on_its_own() -> None:
    """Issue 21: utils/calc_pckh.py read_data reads "nan" as -1, then data[data<0] = 1 on the
    (images, joints, 2) prediction array: x and y separately, never the whole joint."""
    from mula_cli.evaluation.authors_protocol import as_their_reader_reads
    from mula_cli.evaluation.metrics import PoseMetrics

    pred = np.array([[-37.0, 0.0], [20.0, -3.0], [np.nan, np.nan], [np.nan, 12.0], [-0.0, 5.0], [7.0, 8.0]])
    read = as_their_reader_reads(pred)
    np.testing.assert_array_equal(read, [[1, 0], [20, 1], [1, 1], [1, 12], [0, 5], [7, 8]])
    assert np.isnan(pred[2]).all() and pred[0, 0] == -37.0  # a copy: the saved predictions keep theirs

    # scored: a joint read as (1, 1) hits ground truth near the corner; head size 20, threshold 10
    gt = np.full((16, 2), np.nan)
    gt[8], gt[9] = (10.0, 5.0), (10.0, 25.0)
    gt[0], gt[1], gt[2] = (4.0, 4.0), (20.0, 3.0), (9.0, 40.0)
    joints = np.full((16, 2), 500.0)
    joints[8], joints[9] = gt[8], gt[9]
    joints[0], joints[1], joints[2] = (np.nan, np.nan), (20.0, -30.0), (-50.0, 40.0)
    for rule, hits in ((as_their_reader_reads, [100.0, 100.0, 100.0]), (np.asarray, [0.0, 0.0, 0.0])):
        metrics = PoseMetrics(LIP)
        metrics.update(rule(joints), gt)
        assert metrics.compute()["joint_pckh"][:3] == hits, rule

    # where negatives come from: every heatmap <= 0 over the picture (Probe: -255 j on pure green), so
    # the first maximum is the fused canvas' zero corner, left of the picture: x = (0 - 15 + 0) / base
    green = np.zeros((90, 50, 3), np.uint8)
    green[..., 1] = 255
    from mula_cli.transforms.authors_views import authors_views

    sample = authors_views(Image.fromarray(green), SIZE, (1.0,))
    found = predict_originals(Probe(), torch.from_numpy(sample["views"])[None], sample["windows"][None],
                              [(90, 50)], LIP, (1.0,))[0]
    assert (found.joints == (-21.0, 0.0)).all()  # int(-15 / 0.711); their CSV holds -21, 0
    assert (as_their_reader_reads(found.joints) == (1.0, 0.0)).all()


def _their_pckh(pred_rows: list[list[str]], gt_csv: Path) -> float:
    """Their PCKh@0.5 Avg, re-done from NieXC/pytorch-mula utils/calc_pckh.py (read_data,
    get_head_size, get_norm_dist, compute_pck): the prediction rows and the ground-truth CSV as text."""
    def read(rows: list[list[str]], gt: bool) -> np.ndarray:
        data = np.array([[-1.0 if v == "nan" else float(v) for v in row[1:]] for row in rows])
        data = data.reshape(len(rows), -1, 3 if gt else 2)[:, :, :2]
        if not gt:
            data[data < 0] = 1
        return data

    pred = read(pred_rows, gt=False)
    gt = read([line.split(",") for line in gt_csv.read_text().split()], gt=True)
    head = np.linalg.norm(gt[:, 9] - gt[:, 8], axis=1)
    head[(gt[:, 8, 0] < 0) | (gt[:, 9, 0] < 0)] = 0
    dist = np.full(gt.shape[:2], -1.0)
    for n in range(len(gt)):
        if head[n] != 0:
            dist[n] = np.linalg.norm(gt[n] - pred[n], axis=1) / head[n]
            dist[n, (gt[n, :, 0] < 0) | (gt[n, :, 1] < 0)] = -1
    d = dist[:, list(range(0, 6)) + list(range(8, 16))]
    return 100.0 * float(np.mean(d[d >= 0] <= 0.5))


def test_evaluate_scores_negative_and_nan_joints_as_their_reader(tiny_weights: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21: under --protocol authors, PCKh is what their CSV reader + PCKh script make of the
    predictions, negative and NaN coordinates included."""
    import mula_cli.evaluation.runner as evaluation
    from mula_cli.data.prepare import prepare_dataset

    from trees import build_lip_tree, csv_row, lip_paths

    truth = build_lip_tree(tmp_path / "LIP", counts={"train": 1, "val": 3}, seed=2)["val"]
    rows = []
    for sid, (_, _, joints) in truth.items():  # both head joints labelled (head 20), joints 0-4 near the corner
        joints[8], joints[9] = (10, 5), (10, 25)
        joints[0], joints[1], joints[2], joints[3], joints[4] = (4, 4), (20, 3), (3, 30), (25, 35), (2, 36)
        rows.append(csv_row(sid, joints))
    gt_csv = lip_paths(tmp_path / "LIP", "official", "val")["csv"]
    gt_csv.write_text("\n".join(rows) + "\n")
    cache = tmp_path / "lip.h5"
    prepare_dataset(LIP, tmp_path / "LIP", cache)

    ids, predicted = list(truth), []
    real = evaluation.predict_authors

    def planted(*args, **kwargs):
        found = real(*args, **kwargs)
        for f in found:  # (1, 1) after their reader: hits; old scoring: misses
            f.joints[0] = (np.nan, np.nan)  # read as (1, 1): 4.2 from (4, 4)
            f.joints[1] = (20, -30)  # (20, 1): x and y each on its own, a hit; per joint (1, 1) would miss
            f.joints[2] = (-40, 30)  # (1, 30): a hit
            f.joints[3] = (np.nan, -2)  # (1, 1): a miss either way
            f.joints[4] = (-1, 36)  # (1, 36): a hit both ways
            predicted.append([f"{ids[len(predicted)]}.jpg", *[str(v).lower() for v in f.joints.ravel()]])
        return found

    monkeypatch.setattr(evaluation, "predict_authors", planted)
    monkeypatch.chdir(tmp_path)
    result = run_cli("evaluate", tiny_weights, "--data", cache, "--protocol", "authors", "--workers", "0")
    assert result.exit_code == 0, result.output
    doc = json.loads(next((tmp_path / "runs" / "evaluate").glob("*/metrics.json")).read_text())
    assert len(predicted) == 3 and doc["pose"]["images"] == 3
    expected = _their_pckh(predicted, gt_csv)
    assert doc["pose"]["pckh"] == pytest.approx(expected, abs=1e-9)
    assert doc["pose"]["groups"]["Avg"] == pytest.approx(expected, abs=1e-9)
    assert f"{expected:.2f}" in result.output
    joint = doc["pose"]["joint_pckh"]
    assert joint[0] == joint[1] == joint[2] == 100.0 and joint[3] == 0.0 and joint[4] == 100.0
