"""The MuLA model family: every preset runs and trains, parameter anchors, the dynamic conv op,
input sizes, normalisation, initialisation and export (TorchScript trace, ONNX)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mula_cli.model.adaptation import (
    AdaptiveResidual,
    NoInteraction,
    ParameterAdapter,
    StaticResidual,
    adaptive_average_by_matrices,
)
from mula_cli.model.config import HOURGLASS, MTL
from mula_cli.model.mula import MuLA, MulaOutput, MultiPersonOutput, count_parameters, model_from_config
from mula_cli.model.presets import PRESETS, build_model, preset_config
from mula_cli.ops import dynamic_depthwise_conv2d

TINY_WIDTH = 16


def tiny(name: str, **overrides: object) -> MuLA:
    """``name`` shrunk for a CPU test: width 16, a 2-level hourglass, the smallest usable input."""
    cfg = preset_config(name)
    size = 64 if cfg.encoder == HOURGLASS else 128
    fields = {"width": TINY_WIDTH, "hourglass_depth": 2, "input_size": size, **overrides}
    return build_model(name, **fields)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_and_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name).train()
    cfg = model.config
    size = cfg.input_size
    out = model(images(2, size))
    assert isinstance(out, MultiPersonOutput if cfg.partition else MulaOutput)
    assert len(out.pose) == len(out.parsing) == cfg.stages
    side = size // cfg.stride
    for pose, parsing in zip(out.pose, out.parsing):
        assert pose.shape == (2, cfg.num_joints + 1, side, side)
        assert parsing.shape == (2, cfg.num_classes, side, side)
        assert torch.isfinite(pose).all() and torch.isfinite(parsing).all()
    assert len(out.offsets) == (cfg.stages if cfg.partition else 0)
    for offsets in out.offsets:
        assert offsets.shape == (2, 2 * cfg.num_joints, side, side)
    total = sum(p.sum() for p in out.pose) + sum(p.sum() for p in out.parsing) + sum(p.sum() for p in out.offsets)
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"{name}: parameters without gradient: {unused[:5]}"


def test_vgg_with_batch_norm_has_bn_after_v_and_uses_every_parameter() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        preset_config("vgg16-fcn-mula", width=TINY_WIDTH, input_size=128), vgg_batch_norm=True
    )
    model = model_from_config(cfg).train()
    assert isinstance(model.stages[0].pose_interaction.bn, torch.nn.BatchNorm2d)
    assert isinstance(model.pose_stem.convs[0].bn, torch.nn.BatchNorm2d)
    out = model(images(2, 128))
    (sum(p.sum() for p in out.pose) + sum(p.sum() for p in out.parsing)).backward()
    assert all(p.grad is not None for p in model.parameters())
    without = model_from_config(dataclasses.replace(cfg, vgg_batch_norm=False))
    assert isinstance(without.stages[0].pose_interaction.bn, torch.nn.Identity)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("hg-5s", 40_270_009), ("hg-1s", 8_503_333), ("vgg16-fcn-mula", 44_657_829)],
)
def test_parameter_anchors_of_the_authors_models(name: str, expected: int) -> None:
    # The parameters that take part in the authors' forward pass (architecture.md, "Size anchors").
    with torch.device("meta"):
        model = build_model(name, num_classes=20, num_joints=16)
    assert count_parameters(model) == expected


def test_interactions_follow_the_variant_and_the_stage_switch() -> None:
    def kinds(name: str) -> list[tuple[str, str]]:
        model = tiny(name)
        return [
            (type(s.pose_interaction).__name__, type(s.parsing_interaction).__name__) for s in model.stages
        ]

    adaptive, none, static = AdaptiveResidual.__name__, NoInteraction.__name__, StaticResidual.__name__
    assert kinds("hg-2s") == [(adaptive, adaptive)] * 2
    assert kinds("hg-1s-la-pose") == [(adaptive, none)]
    assert kinds("hg-1s-la-parsing") == [(none, adaptive)]
    assert kinds("hg-1s-self") == [(static, static)]
    assert kinds("hg-2x1u") == [(none, none)] * 2
    assert kinds("hg-2s-adapt-s1") == [(adaptive, adaptive), (none, none)]
    assert kinds("hg-2s-adapt-s2") == [(none, none), (adaptive, adaptive)]
    # The last stage builds no mapping to a next stage (the authors' unused convs are not reproduced).
    model = tiny("hg-2s")
    assert hasattr(model.stages[0], "pose_mapping") and not hasattr(model.stages[1], "pose_mapping")
    shared = tiny("hg-1s-mtl")
    assert (
        shared.config.variant == MTL and not hasattr(shared, "pose_stem") and hasattr(shared, "shared_stem")
    )


def _loop_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    pad = weight.shape[-1] // 2
    rows = [
        F.conv2d(x[b : b + 1], weight[b].unsqueeze(1), padding=pad, groups=x.shape[1])
        for b in range(x.shape[0])
    ]
    return torch.cat(rows)


@pytest.mark.parametrize("kernel", [1, 3, 7])
def test_dynamic_depthwise_conv_matches_a_per_sample_loop(kernel: int) -> None:
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(3, 5, 9, 11, generator=g, requires_grad=True)
    w = torch.randn(3, 5, kernel, kernel, generator=g, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = w.detach().clone().requires_grad_(True)
    out, ref = dynamic_depthwise_conv2d(x, w), _loop_reference(x_ref, w_ref)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


def test_dynamic_depthwise_conv_gradcheck_fp64() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dynamic_depthwise_conv2d, (x, w))


@pytest.mark.parametrize(("feature_side", "kernel"), [(64, 7), (32, 3)])
def test_adapter_pool_is_an_identity_at_the_papers_input(feature_side: int, kernel: int) -> None:
    # 256 x 256 input: stride-4 Hourglass maps (64) give 7 x 7, stride-8 VGG maps (32) give 3 x 3.
    torch.manual_seed(0)
    adapter = ParameterAdapter(8, kernel)
    feature = torch.randn(2, 8, feature_side, feature_side)
    unpooled = adapter.unpooled(feature)
    assert unpooled.shape[-1] == kernel
    assert torch.equal(adapter(feature), unpooled)


@pytest.mark.parametrize(("side", "kernel"), [(1, 3), (9, 7), (19, 7), (5, 3), (7, 7)])
def test_exportable_pool_equals_the_adaptive_pool(side: int, kernel: int) -> None:
    x = torch.randn(2, 3, side, side, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, kernel)
    torch.testing.assert_close(adaptive_average_by_matrices(x, kernel), expected, rtol=1e-12, atol=1e-12)


def test_other_input_sizes_keep_the_kernel_size() -> None:
    torch.manual_seed(0)
    model = tiny("hg-1s", hourglass_depth=4, input_size=320).eval()
    residual = model.stages[0].pose_interaction
    feature = torch.randn(1, TINY_WIDTH, 80, 80)
    assert residual.adapter.unpooled(feature).shape[-1] == 9  # what the authors' adapter would give
    assert residual.adapter(feature).shape[-2:] == (7, 7)
    with torch.no_grad():
        out = model(images(1, 320))
    assert out.pose[0].shape[-2:] == (80, 80) and torch.isfinite(out.parsing[0]).all()


def test_normalisation_is_the_authors_and_takes_uint8_or_float() -> None:
    model = tiny("hg-tiny").eval()
    rgb = images(2, 64)
    expected = rgb.flip(1).float() / 255 - 0.5  # BGR order, x / 255 - 0.5
    assert torch.equal(model.normalise(rgb), expected)
    assert not any("pixel_" in key for key in model.state_dict())  # buffers are not persistent
    with torch.no_grad():
        a, b = model(rgb), model(rgb.float())
    assert all(torch.equal(x, y) for x, y in zip(a.pose + a.parsing, b.pose + b.parsing))


def test_channels_last_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = tiny("hg-tiny").eval()
    x = images(2, 64).float()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref.pose + ref.parsing, out.pose + out.parsing):
        assert_close_to_scale(b, a)  # other conv algorithms, other summation order


def test_msra_initialisation() -> None:
    # the authors' initialisation everywhere (the default differs in the prediction heads only:
    # tests/test_training_start.py)
    torch.manual_seed(0)
    model = build_model("hg-1s", width=64, hourglass_depth=1, input_size=64, authors_init=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
        elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    conv = model.stages[0].pose_interaction.adapter.conv2  # 64 x 64 x 3 x 3: fan_in 576
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_compiles_as_one_graph() -> None:
    # fullgraph=True fails on any graph break: no data-dependent control flow, no host syncs.
    torch.manual_seed(0)
    model = tiny("hg-tiny", hourglass_depth=1).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    try:
        out = compiled(images(2, 64))
    finally:
        torch._dynamo.reset()
    assert len(out.pose) == model.config.stages


def _flat(out: MulaOutput) -> list[torch.Tensor]:
    return [*out.pose, *out.parsing]


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Max difference within ``rel`` of the output's magnitude: an untrained model in eval mode (BN
    statistics at their defaults) amplifies activations stage by stage, so absolute errors grow too."""
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= rel * expected.abs().max()


def test_torchscript_trace_matches_eager() -> None:
    torch.manual_seed(0)
    model = tiny("hg-tiny").eval()
    x = images(2, 64).float()
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), strict=False)
        eager, scripted = model(x), traced(x)
    for a, b in zip(_flat(eager), [*scripted[0], *scripted[1]]):
        assert_close_to_scale(b, a)  # traced with the export formulation of the dynamic conv


def _export_onnx(model: MuLA, x: torch.Tensor, path: str, dynamic_batch: bool) -> list[str]:
    stages = model.config.stages
    names = [f"pose_s{t + 1}" for t in range(stages)] + [f"parsing_s{t + 1}" for t in range(stages)]
    axes = {name: {0: "batch"} for name in ["image", *names]} if dynamic_batch else None
    torch.onnx.export(
        model, (x,), path, opset_version=17, dynamo=False, input_names=["image"], output_names=names,
        dynamic_axes=axes,
    )  # fmt: skip
    return names


def test_onnx_export_matches_eager(tmp_path) -> None:
    pytest.importorskip("onnx", reason="onnx is an optional extra: pip install onnx onnxruntime")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra")
    torch.manual_seed(0)
    # At hg-tiny's own input size (128) the adapters end at h x h already: no pool in the graph.
    model = build_model("hg-tiny", width=TINY_WIDTH).eval()
    x = images(2, 128).float()
    path = str(tmp_path / "tiny.onnx")
    with torch.no_grad():
        _export_onnx(model, x, path, dynamic_batch=False)
        eager = _flat(model(x))
    results = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    for a, b in zip(eager, results):
        assert_close_to_scale(torch.from_numpy(b), a)


def test_onnx_export_with_a_dynamic_batch(tmp_path) -> None:
    pytest.importorskip("onnx", reason="onnx is an optional extra: pip install onnx onnxruntime")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra")
    torch.manual_seed(0)
    # At 64 x 64 the adapters end at 1 x 1 and pool up to 3 x 3: the exportable pool path.
    model = tiny("hg-tiny").eval()
    path = str(tmp_path / "tiny_dynamic.onnx")
    with torch.no_grad():
        _export_onnx(model, images(2, 64).float(), path, dynamic_batch=True)
        x = images(3, 64, seed=1).float()
        eager = _flat(model(x))
    results = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    for a, b in zip(eager, results):
        assert_close_to_scale(torch.from_numpy(b), a)
