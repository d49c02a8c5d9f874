"""Presets, the model config and ``mula models``."""

from __future__ import annotations

import json

import pytest
import torch

from mula_cli.model.config import VARIANTS, MulaConfig
from mula_cli.model.mula import model_from_config
from mula_cli.model.presets import PRESETS, build_model, dataset_overrides, preset_config
from mula_cli.model.summary import model_flops, summarise, uncached_model_flops
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest

from conftest import run_cli


def test_presets_cover_the_papers_models_and_ablations() -> None:
    names = set(PRESETS)
    assert {f"hg-{m}s" for m in range(1, 6)} | {"hg-0s", "hg-tiny"} <= names
    assert {f"hg-{k}x1u" for k in range(2, 6)} <= names
    assert {"hg-5s-la-pose", "hg-5s-la-parsing", "hg-2s-adapt-s1", "hg-2s-adapt-s2"} <= names
    assert {f"hg-1s-{v}" for v in ("add", "multi", "concat", "mtl", "self", "la-pose", "la-parsing")} <= names
    assert {"vgg16-fcn"} | {f"vgg16-fcn-{v}" for v in VARIANTS if v != "independent"} <= names
    tiny = preset_config("hg-tiny")
    assert (tiny.stages, tiny.width, tiny.hourglass_depth, tiny.variant) == (2, 32, 2, "mula")
    default = preset_config("hg-5s")
    assert (default.encoder, default.stride, default.kernel_size, default.bgr) == ("hourglass", 4, 7, True)
    vgg = preset_config("vgg16-fcn-mula")
    assert (vgg.encoder, vgg.stride, vgg.kernel_size, vgg.width, vgg.vgg_batch_norm) == (
        "vgg16",
        8,
        3,
        512,
        False,
    )


def test_classes_and_joints_default_to_lip_and_follow_a_manifest() -> None:
    lip = load_manifest("lip")
    cfg = preset_config("hg-5s")
    assert (cfg.num_classes, cfg.num_joints) == (lip.num_classes, lip.num_joints)
    assert cfg.class_names == lip.classes and cfg.joint_names == lip.joints
    pascal = load_manifest("pascal_person_part")
    model = build_model("hg-tiny", **dataset_overrides(pascal))
    assert model.config.num_classes == pascal.num_classes and model.config.joint_names == pascal.joints
    assert model.stages[-1].pose_head.out_channels == pascal.num_joints + 1
    assert model.stages[-1].parsing_head.out_channels == pascal.num_classes


def test_build_model_overrides() -> None:
    model = build_model("hg-5s", num_classes=7, num_joints=14, width=16, stages=3, hourglass_depth=2,
                        variant="la-pose", input_size=128, adapt_stages=(True, False, True))  # fmt: skip
    cfg = model.config
    assert (cfg.stages, cfg.width, cfg.variant, cfg.adapt_stages) == (3, 16, "la-pose", (True, False, True))
    assert (cfg.preset, cfg.num_classes, cfg.num_joints, cfg.input_size) == ("hg-5s", 7, 14, 128)
    # A per-stage switch belongs to its preset's stage count: overriding stages resets it.
    assert (
        build_model("hg-2s-adapt-s1", stages=3, width=16, hourglass_depth=1).config.adapt_stages
        == (True,) * 3
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variant": "fancy"}, "variant"),
        ({"stages": 0}, "stages"),
        ({"width": 12}, "width"),
        ({"input_size": 100}, "input_size"),
        ({"adapt_stages": (True,)}, "adapt_stages"),
        ({"variant": "independent", "adapt_stages": (True,) * 5}, "no interaction"),
    ],
)
def test_invalid_configs_are_refused_with_a_clear_message(overrides: dict, message: str) -> None:
    with pytest.raises(MulaError, match=message):
        preset_config("hg-5s", **overrides)


def test_unknown_preset_and_vgg_stage_count_are_refused() -> None:
    with pytest.raises(MulaError, match="hg-99s"):
        build_model("hg-99s")
    with pytest.raises(MulaError, match="one stage"):
        preset_config("vgg16-fcn", stages=2)


def test_config_round_trips_through_plain_values() -> None:
    cfg = preset_config("hg-2s-adapt-s2", width=64)
    raw = cfg.to_dict()
    assert json.loads(json.dumps(raw)) == raw  # plain JSON types only
    assert MulaConfig.from_dict(raw) == cfg
    assert isinstance(MulaConfig.from_dict(raw).adapt_stages, tuple)
    with pytest.raises(MulaError, match="unknown fields"):
        MulaConfig.from_dict({**raw, "colour": "blue"})


def test_cached_flop_count_equals_a_plain_forward_count() -> None:
    cache: dict = {}
    for name in ("hg-tiny", "hg-1s-mtl", "vgg16-fcn-concat", "hg-2s-adapt-s2"):
        cfg = preset_config(name, width=16, hourglass_depth=2)
        with torch.device("meta"):
            model = model_from_config(cfg)
        size = 128
        assert model_flops(model, size, cache) == uncached_model_flops(model, size) > 0


def test_official_model_costs_about_92_gflops() -> None:
    summary = summarise(preset_config("hg-5s"))
    assert summary.parameters == 40_270_009
    assert summary.gflops == pytest.approx(92.1, abs=0.1)  # architecture.md: "about 92 GFLOPs"


def test_models_command_lists_every_preset() -> None:
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == set(PRESETS)
    assert rows["hg-5s"]["parameters"] == 40_270_009 and rows["vgg16-fcn-mula"]["parameters"] == 44_657_829
    assert all(row["parameters"] > 0 and row["gflops"] > 0 for row in rows.values())
    table = run_cli("models", "--dataset", "pascal_person_part")
    assert table.exit_code == 0, table.output
    assert "7 classes, 14 joints" in table.output
    assert all(name in table.output for name in PRESETS)


def test_flop_count_runs_the_stages_own_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """m16: the cached count runs MulaStage.forward itself (no copy of it to drift): a change to the
    stage's forward shows in both counts alike."""
    from mula_cli.model.mula import MulaStage

    forward = MulaStage.forward

    def heads_twice(self: MulaStage, x_pose: torch.Tensor, x_parsing: torch.Tensor):
        pose, parsing, offsets, x_pose, x_parsing = forward(self, x_pose, x_parsing)
        return pose + self.pose_head(torch.zeros_like(x_pose)), parsing, offsets, x_pose, x_parsing

    cfg = preset_config("hg-tiny", width=16, hourglass_depth=2)
    with torch.device("meta"):
        model = model_from_config(cfg)
    plain = model_flops(model, 64, {})
    monkeypatch.setattr(MulaStage, "forward", heads_twice)
    assert model_flops(model, 64, {}) == uncached_model_flops(model, 64) > plain
