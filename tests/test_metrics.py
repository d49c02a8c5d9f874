"""Metrics against hand-computed answers (metrics.md definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mula_cli.evaluation.metrics import ParsingMetrics, PoseMetrics
from mula_cli.utils.manifests import load_manifest

LIP = load_manifest("lip")


def test_confusion_metrics_by_hand() -> None:
    # 3 classes; ground truth and prediction of 8 pixels, plus two ignored pixels
    gt = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 255, 255])
    pr = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    m = ParsingMetrics(3)
    m.update(pr, gt)
    h = m.confusion.numpy()
    assert h.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    r = m.compute()
    assert r["pixel_acc"] == pytest.approx(100 * 5 / 8)
    acc = [2 / 3, 2 / 3, 1 / 2]
    assert r["mean_acc"] == pytest.approx(100 * np.mean(acc))
    iou = [2 / (3 + 3 - 2), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1)]
    assert r["miou"] == pytest.approx(100 * np.mean(iou))
    assert r["fwiou"] == pytest.approx(100 * (3 / 8 * iou[0] + 3 / 8 * iou[1] + 2 / 8 * iou[2]))
    assert r["pixels"] == 8


def test_absent_class_is_skipped_in_the_means() -> None:
    m = ParsingMetrics(4)  # class 3 never occurs in ground truth or prediction
    m.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 1]))
    r = m.compute()
    assert math.isnan(r["class_iou"][3]) and math.isnan(r["class_acc"][3])
    assert r["miou"] == pytest.approx(100 * np.mean([1, 1 / 2, 1 / 2]))
    assert r["mean_acc"] == pytest.approx(100 * np.mean([1, 1 / 2, 1]))


def test_perfect_prediction_scores_100_everywhere() -> None:
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 20, (64, 48)))
    parsing = ParsingMetrics(20)
    parsing.update(labels, labels)
    r = parsing.compute()
    assert r["pixel_acc"] == r["mean_acc"] == r["miou"] == pytest.approx(100.0)
    assert r["fwiou"] == pytest.approx(100.0)
    pose = PoseMetrics(LIP)
    for _ in range(5):
        gt = rng.uniform(0, 200, (16, 2))
        pose.update(gt, gt)
    p = pose.compute()
    assert p["pckh"] == 100.0 and all(v == 100.0 for v in p["joint_pckh"])
    assert all(v == 100.0 for v in p["groups"].values())
    assert p["pck_torso@0.2"] == 100.0 and p["curve"]["0.50"] == 100.0


def test_swapped_left_right_parts_reduce_their_iou() -> None:
    gt = np.zeros((20, 40), np.int64)
    gt[:, 5:15] = LIP.classes.index("Left-arm")
    gt[:, 25:35] = LIP.classes.index("Right-arm")
    gt[:2] = LIP.classes.index("Face")
    swapped = torch.from_numpy(LIP.class_flip_lut()[gt])
    good, bad = ParsingMetrics(20), ParsingMetrics(20)
    good.update(torch.from_numpy(gt), torch.from_numpy(gt))
    bad.update(swapped, torch.from_numpy(gt))
    left, right, face = (LIP.classes.index(n) for n in ("Left-arm", "Right-arm", "Face"))
    assert good.compute()["class_iou"][left] == 100.0
    assert bad.compute()["class_iou"][left] == 0.0 and bad.compute()["class_iou"][right] == 0.0
    assert bad.compute()["class_iou"][face] == 100.0
    assert bad.compute()["miou"] < good.compute()["miou"]


def _pose_gt() -> np.ndarray:
    gt = np.stack([np.arange(16) * 10.0, np.full(16, 50.0)], axis=1)
    gt[LIP.pckh.neck] = (100.0, 100.0)
    gt[LIP.pckh.head_top] = (100.0, 80.0)  # head size 20 -> threshold 10 px
    return gt


def test_pckh_by_hand_with_unlabelled_joints_and_an_excluded_image() -> None:
    pose = PoseMetrics(LIP)
    gt = _pose_gt()
    pred = gt.copy()
    pred[0] += (9.0, 0.0)  # R-ankle within 0.45 head -> hit
    pred[5] += (11.0, 0.0)  # L-ankle at 0.55 -> miss
    gt_missing = gt.copy()
    gt_missing[1] = np.nan  # R-knee unlabelled: not counted whatever the prediction
    pose.update(pred, gt_missing)
    headless = gt.copy()
    headless[LIP.pckh.head_top] = np.nan  # no head size: the whole image is excluded
    pose.update(gt + 1000, headless)
    r = pose.compute()
    assert r["images"] == 1 and r["excluded_images"] == 1
    per = r["joint_pckh"]
    assert per[0] == 100.0 and per[5] == 0.0 and math.isnan(per[1])
    assert r["groups"]["Ankle"] == 50.0
    assert math.isnan(r["groups"]["Knee"]) is False and r["groups"]["Knee"] == 100.0  # nan-mean of (nan, 100)
    # Avg pools joints 0-5 and 8-15 of this image: 13 counted (R-knee unlabelled), 12 hits
    assert r["pckh"] == pytest.approx(100 * 12 / 13)
    assert r["groups"]["Avg"] == r["pckh"]
    assert r["groups"]["U.Body"] == 100.0
    curve = list(r["curve"].values())
    assert curve == sorted(curve) and curve[-1] == r["pckh"]


def test_sums_from_two_shards_equal_one_pass() -> None:
    rng = np.random.default_rng(1)
    items = [(rng.uniform(0, 100, (16, 2)), _pose_gt() + rng.normal(0, 1, (16, 2))) for _ in range(6)]
    whole, a, b = PoseMetrics(LIP), PoseMetrics(LIP), PoseMetrics(LIP)
    for i, (p, g) in enumerate(items):
        whole.update(p, g)
        (a if i % 2 else b).update(p, g)
    a.state += b.state  # what all_reduce does across ranks
    assert a.compute() == whole.compute()
    with pytest.raises(ValueError, match=r"0\.5"):
        PoseMetrics(LIP, thresholds=(0.1, 0.2))


class _Collective:
    """A pretend process group: records the device of every tensor handed to all_reduce."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.devices: list[torch.device] = []
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 1)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a: 0)
        monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: self.devices.append(t.device))


def test_pose_counts_live_and_reduce_on_the_given_device(monkeypatch: pytest.MonkeyPatch) -> None:
    collective = _Collective(monkeypatch)
    pose = PoseMetrics(LIP, device="meta")  # any device but the CPU: meta holds no data
    gt = np.zeros((LIP.num_joints, 2))
    gt[LIP.pckh.neck], gt[LIP.pckh.head_top] = (10, 10), (10, 0)
    pose.update(gt + 1, gt)
    pose.all_reduce()
    ParsingMetrics(3, device="meta").all_reduce()
    assert collective.devices == [torch.device("meta")] * 2


def test_validation_reduces_every_sum_on_the_models_device(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import mula_cli.evaluation.runner as evaluation
    from mula_cli.data.prepare import prepare_dataset
    from mula_cli.model.presets import build_model

    from trees import build_lip_tree

    build_lip_tree(tmp_path / "LIP", counts={"val": 2}, seed=1)
    prepare_dataset(LIP, tmp_path / "LIP", tmp_path / "lip.h5")
    model = build_model("hg-tiny", num_classes=20, num_joints=16, width=16)
    placed = []
    for name in ("ParsingMetrics", "PoseMetrics"):  # the device each accumulator is made for
        cls = getattr(evaluation, name)
        monkeypatch.setattr(evaluation, name, lambda *a, cls=cls, **k: placed.append(k.get("device")) or cls(*a, **k))
    collective = _Collective(monkeypatch)
    loader = evaluation.eval_loader(tmp_path / "lip.h5", "val", 128, 4, batch_size=2, workers=0)
    evaluation.evaluate_model(model, loader, LIP)
    model_device = next(model.parameters()).device
    assert placed == [model_device, model_device]
    assert len(collective.devices) == 3 and set(collective.devices) == {model_device}  # confusion, PCK, count


def test_the_cuda_process_group_can_reduce_cpu_tensors_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from mula_cli.train import distributed

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: calls.update(kwargs))
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    world = distributed.setup_world("auto")
    assert world.device == torch.device("cuda", 1)
    assert calls["backend"] == "cpu:gloo,cuda:nccl" and calls["device_id"] == torch.device("cuda", 1)


def test_missing_pose_predictions_count_as_misses() -> None:
    # 20 images, every joint predicted within the threshold except 10% of them, which are missing (NaN)
    rng = np.random.default_rng(0)
    metric = PoseMetrics(LIP)
    missing = 0
    for n in range(20):
        gt = rng.uniform(50, 150, (LIP.num_joints, 2))
        gt[LIP.pckh.neck] = gt[LIP.pckh.head_top] + [0.0, 40.0]  # head size 40
        pred = gt + rng.uniform(-5, 5, gt.shape)
        gone = rng.choice(LIP.num_joints, size=2 if n % 2 else 1, replace=False)  # 1.5 of 16 per image
        pred[gone] = np.nan
        missing += int(np.isin(gone, LIP.pckh.average).sum())
        metric.update(pred, gt)
    r = metric.compute()
    counted = 20 * len(LIP.pckh.average)
    assert r["pckh"] == pytest.approx(100.0 * (counted - missing) / counted)
    assert r["images"] == 20 and r["pckh"] < 95
