"""The prediction fast path computes what the model computes, for every preset, on both CPU forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mula_cli.bench.predict import agreement, trained_like
from mula_cli.inference.fastpath import FastMuLA, onednn_fusion_available, prediction_model
from mula_cli.model.presets import PRESET_FIELDS, build_model
from mula_cli.ops import dynamic_depthwise_conv2d, dynamic_depthwise_conv2d_grouped
from mula_cli.ops.dynconv import set_dispatch_mode

ONEDNN = [False, True] if onednn_fusion_available() else [False]
FORMS = [(o, 1) for o in ONEDNN] + [(ONEDNN[-1], 2)]  # (oneDNN, workers): also the batch split over threads


def _small(preset: str) -> torch.nn.Module:
    width = 64 if preset.startswith("vgg") else 16
    return trained_like(build_model(preset, width=width, input_size=128), seed=1).eval()


@pytest.mark.parametrize(("onednn", "workers"), FORMS, ids=lambda v: str(v))
@pytest.mark.parametrize("preset", sorted(PRESET_FIELDS))
def test_fast_model_matches_the_model(preset: str, onednn: bool, workers: int) -> None:
    model = _small(preset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = FastMuLA(model, onednn=onednn, workers=workers).eval()
    x = torch.randint(0, 256, (3, 3, 128, 128), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        want, got = model(x), fast(x)
    _assert_outputs_agree(want, got, preset)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left alone


def _assert_outputs_agree(want, got, what: str) -> None:
    """Every stage's heatmaps, logits and (partition branch) offsets within 1e-5 of their scale; same labels."""
    assert len(want.offsets) == len(got.offsets)
    for a, b in zip(want.pose + want.parsing + want.offsets, got.pose + got.parsing + got.offsets):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-5 * max(float(a.abs().max()), 1.0), what
    assert torch.equal(want.parsing[-1].argmax(1), got.parsing[-1].argmax(1))


@pytest.mark.parametrize(("onednn", "workers"), FORMS, ids=lambda v: str(v))
@pytest.mark.parametrize("preset", ["hg-tiny", "hg-2s-adapt-s1", "hg-1s-concat"])
def test_fast_model_matches_the_model_with_the_partition_branch(preset: str, onednn: bool, workers: int) -> None:
    """Multi-person models: the offsets the grouping reads come through the fast path too."""
    from mula_cli.model.presets import dataset_overrides
    from mula_cli.utils.manifests import load_manifest

    overrides = dataset_overrides(load_manifest("pascal_person_part"))
    model = trained_like(build_model(preset, width=16, input_size=128, **overrides), seed=3).eval()
    fast = FastMuLA(model, onednn=onednn, workers=workers).eval()
    x = torch.randint(0, 256, (3, 3, 128, 128), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        want, got = model(x), fast(x)
    assert want.offsets and float(want.offsets[-1].abs().max()) > 0
    _assert_outputs_agree(want, got, preset)


@pytest.mark.parametrize("onednn", ONEDNN, ids=lambda v: f"onednn={v}")
def test_fast_model_matches_the_model_at_other_input_sizes(onednn: bool) -> None:
    """More input shapes than a FusedConv keeps packed weights for, and one seen again after eviction."""
    model = _small("hg-2s-adapt-s1")
    fast = FastMuLA(model, onednn=onednn, workers=2).eval()
    for side in (128, 192, 64, 320, 256, 128):
        x = torch.randint(0, 256, (2, 3, side, side), generator=torch.Generator().manual_seed(side), dtype=torch.uint8)
        with torch.no_grad():
            want, got = model(x), fast(x)
        for a, b in zip(want.pose + want.parsing, got.pose + got.parsing):
            assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5 * max(float(a.abs().max()), 1.0), side


def test_per_sample_dynconv_equals_the_grouped_one_and_runs_for_channels_last() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 11, 13, generator=generator)
    weight = torch.randn(3, 8, 5, 5, generator=generator)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    want = dynamic_depthwise_conv2d_grouped(x, weight)
    got = dynamic_depthwise_conv2d(channels_last, weight)
    assert torch.allclose(got, want, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the per-sample form ran
    assert dynamic_depthwise_conv2d(x, weight).is_contiguous()  # NCHW keeps the grouped form
    set_dispatch_mode("grouped")  # MULA_DYNCONV is read once; this is how a process changes it
    try:
        assert not dynamic_depthwise_conv2d(channels_last, weight).is_contiguous(memory_format=torch.channels_last)
    finally:
        set_dispatch_mode()


def _pictures(count: int) -> list[tuple[Image.Image, tuple[int, int]]]:
    rng = np.random.default_rng(0)
    pictures = []
    for i in range(count):
        h, w = 90 + 7 * i, 120 - 5 * i
        pictures.append((Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)), (h, w)))
    return pictures


@pytest.fixture(scope="module")
def trained_like_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mula_cli.bench.predict import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("w") / "tiny.pt", "hg-tiny", seed=2)


def test_predictor_fast_path_is_the_default_and_agrees_with_eager(trained_like_weights: Path) -> None:
    """The stated tolerance: labels equal on at least 99.9% of pixels, joints within 1 px."""
    from mula_cli.inference.predictor import Predictor

    fast = Predictor(trained_like_weights, "cpu", precision="fp32")
    eager = Predictor(trained_like_weights, "cpu", fast=False, precision="fp32")
    assert fast.path.startswith("fast float32: BatchNorm folded, channels_last")
    assert eager.path.startswith("eager float32")
    pictures = _pictures(3)
    a = agreement(eager.predict_decoded(pictures), fast.predict_decoded(pictures))
    assert a["label_agreement"] >= 0.999 and a["joint_max_px"] <= 1.0, a


def test_multiscale_prediction_on_the_fast_path_agrees_with_eager(trained_like_weights: Path) -> None:
    """Multi-scale testing (every scale's window, flips for both tasks) keeps the fast path's tolerance."""
    from mula_cli.inference.predictor import Predictor

    options = {"scales": (0.7, 1.0, 1.3), "flip": True}
    fast = Predictor(trained_like_weights, "cpu", precision="fp32", **options)
    eager = Predictor(trained_like_weights, "cpu", fast=False, precision="fp32", **options)
    assert fast.path.startswith("fast float32")
    fast.model.workers = 2  # the tests run one thread: split the batch (pictures, mirrors) all the same
    pictures = _pictures(3)
    a = agreement(eager.predict_decoded(pictures), fast.predict_decoded(pictures))
    assert a["label_agreement"] >= 0.999 and a["joint_max_px"] <= 1.0, a


def test_bf16_prediction_runs_on_the_cpu_within_its_tolerance(trained_like_weights: Path) -> None:
    """bfloat16 keeps 8 bits of mantissa: labels equal on at least 95% of pixels, joints mostly in place."""
    from mula_cli.inference.predictor import Predictor

    fp32 = Predictor(trained_like_weights, "cpu", precision="fp32")
    bf16 = Predictor(trained_like_weights, "cpu", precision="bf16")
    assert "bfloat16" in bf16.path
    pictures = _pictures(3)
    reference, lowered = fp32.predict_decoded(pictures), bf16.predict_decoded(pictures)
    assert all(r.joints.dtype == np.float64 and np.isfinite(r.scores).all() for r in lowered)
    a = agreement(reference, lowered)
    assert a["label_agreement"] >= 0.95, a
    assert a["score_max_abs_diff"] > 1e-5  # the network did run in bfloat16


def test_prediction_model_on_the_eager_path_is_the_model_itself() -> None:
    model = _small("hg-tiny")
    runner, description = prediction_model(model, fast=False)
    assert runner is model and description.startswith("eager float32")
    runner, description = prediction_model(model, fast=True, bf16=True)
    # on the CPU the fast path holds bfloat16 weights itself: oneDNN packing and the batch split stay
    assert description.startswith("fast bfloat16") and isinstance(runner, FastMuLA)
    assert runner.dtype == torch.bfloat16 and runner.onednn == onednn_fusion_available(torch.bfloat16)
    runner, description = prediction_model(model, fast=False, bf16=True)
    assert description.startswith("eager bfloat16 autocast") and runner.model is model


def test_bf16_fast_path_splits_the_batch_and_returns_float32(trained_like_weights: Path) -> None:
    """The bfloat16 fast path runs a picture and its mirror as two shards, like float32, and hands
    back float32 outputs close to the float32 fast path's."""
    from mula_cli.model.weights import load_weights

    model, _, _ = load_weights(trained_like_weights)
    fp32, bf16 = FastMuLA(model).eval(), FastMuLA(model, dtype=torch.bfloat16, workers=2).eval()
    image = torch.randint(0, 255, (2, 3, model.config.input_size, model.config.input_size), dtype=torch.uint8)
    with torch.no_grad():
        want, got = fp32(image), bf16(image)
    assert bf16._pool is not None  # the batch was split over the shard threads
    for a, b in zip(want.pose + want.parsing, got.pose + got.parsing):
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert torch.allclose(a, b, atol=0.1 * float(a.abs().max()) + 1e-3), float((a - b).abs().max())
    assert any(not torch.equal(a, b) for a, b in zip(want.pose, got.pose))  # it did run in bfloat16


def test_benchmark_predict_times_both_paths_and_saves_json(tmp_path: Path) -> None:
    import json

    from conftest import run_cli

    out = tmp_path / "bench.json"
    result = run_cli("benchmark", "predict", "--model", "hg-tiny", "--batches", "1,2", "--repeats", "2",
                     "--precision", "bf16", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["preset"] == "hg-tiny" and set(report["paths"]) == {"eager", "fast", "fast_bf16"}
    assert report["default_path"] == "fast_bf16" and "(the default path)" in result.output
    assert [row["batch"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        assert len(row["eager_ms"]) == len(row["fast_ms"]) == len(row["speedups"]) == 2
        assert row["speedup_median"] > 0 and row["fast_vs_eager"]["label_agreement"] >= 0.999
        assert "fast_bf16_speedup_median" in row
    assert "speed-up" in result.output
    bad = run_cli("benchmark", "predict", "--batches", "1,x", "--out", out)
    assert bad.exit_code == 2 and "--batches" in bad.output



@pytest.mark.skipif(not onednn_fusion_available(), reason="oneDNN's fused convolutions are not available")
def test_packed_weight_cache_is_safe_under_two_shard_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shard threads on one FusedConv with more batch shapes than it keeps packed (m3): every
    result right, no error from the cache, and never more packed copies than it keeps."""
    import sys
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mula_cli.inference import fastpath

    reorder = torch.ops.mkldnn._reorder_convolution_weight

    def slow_reorder(*args):  # packing a real layer's weights takes a while: widen the window
        time.sleep(2e-4)
        return reorder(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_convolution_weight", slow_reorder)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    fused = fastpath.FusedConv(conv, onednn=True)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, 4, 5, 5, generator=generator).contiguous(memory_format=torch.channels_last)
              for n in range(1, 9)]
    with torch.no_grad():
        wants = [conv(x) for x in inputs]
    start = threading.Barrier(2)

    def hammer(order: list[int]) -> None:
        start.wait()
        with torch.no_grad():
            for _ in range(40):
                for i in order:
                    got = fused(inputs[i])
                    if not torch.allclose(got, wants[i], atol=1e-5, rtol=1e-5):
                        raise AssertionError(f"wrong result for a batch of {i + 1}")
                    if len(fused._packed) > fastpath._PACKED_SHAPES:
                        raise AssertionError(f"{len(fused._packed)} packed copies kept")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(hammer, order) for order in (list(range(8)), list(range(7, -1, -1)))]
            for run in runs:
                run.result()  # raises what the thread raised
    finally:
        sys.setswitchinterval(interval)
