"""Named models: the authors' MuLA models and the ablations of the paper's Tables 1 (VGG16-FCN) and 2 (Hourglass).

``PRESETS`` maps each name to its build function; ``build_model(name, **overrides)`` calls it.
Classes and joints default to the LIP manifest's; pass a dataset's counts and names to override
(see :func:`dataset_overrides`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from mula_cli.model.config import (
    ADD,
    CONCAT,
    HOURGLASS,
    INDEPENDENT,
    LA_PARSING,
    LA_POSE,
    MTL,
    MULA,
    MULTI,
    SELF,
    VGG16,
    MulaConfig,
)
from mula_cli.model.mula import MuLA, model_from_config
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest, load_manifest

DEFAULT_PRESET = "hg-5s"
DEFAULT_DATASET = "lip"

_HOURGLASS = {"encoder": HOURGLASS, "width": 256, "hourglass_depth": 4, "kernel_size": 7}
_VGG = {"encoder": VGG16, "width": 512, "stages": 1, "kernel_size": 3}


def _preset_fields() -> dict[str, dict[str, Any]]:
    """Name -> the config fields that define it (everything else takes the MulaConfig default)."""
    fields: dict[str, dict[str, Any]] = {}
    # Table 2: HG-ms-1u-MuLA, m = 1..5 (hg-5s is the authors' released model).
    for m in range(1, 6):
        fields[f"hg-{m}s"] = {**_HOURGLASS, "stages": m, "variant": MULA}
    # Table 2's HG-0s-1u-MuLA: one hourglass per task, no interaction.
    fields["hg-0s"] = {**_HOURGLASS, "stages": 1, "variant": INDEPENDENT}
    # HG-k x 1u: an ordinary stacked hourglass per task, k stages, no adaptation (Table 2 has HG-2x1u;
    # HG-5x1u is the baseline of Fig. 4 and Table 6).
    for k in range(2, 6):
        fields[f"hg-{k}x1u"] = {**_HOURGLASS, "stages": k, "variant": INDEPENDENT}
    # Table 1's interactions on the one-stage Hourglass: mula's own, not in the paper (its Table 1 is VGG16-FCN).
    for variant in (ADD, MULTI, CONCAT, MTL, SELF, LA_POSE, LA_PARSING):
        fields[f"hg-1s-{variant}"] = {**_HOURGLASS, "stages": 1, "variant": variant}
    # One-directional adaptation on the full model (not in the paper).
    for variant in (LA_POSE, LA_PARSING):
        fields[f"hg-5s-{variant}"] = {**_HOURGLASS, "stages": 5, "variant": variant}
    # Table 2's per-stage switch: adaptation only in stage 1 or only in stage 2 of two stages.
    fields["hg-2s-adapt-s1"] = {**_HOURGLASS, "stages": 2, "variant": MULA, "adapt_stages": (True, False)}
    fields["hg-2s-adapt-s2"] = {**_HOURGLASS, "stages": 2, "variant": MULA, "adapt_stages": (False, True)}
    # Table 1, VGG16-FCN: the independent baseline and every interaction on top of it.
    fields["vgg16-fcn"] = {**_VGG, "variant": INDEPENDENT}
    for variant in (ADD, MULTI, CONCAT, MTL, SELF, LA_POSE, LA_PARSING, MULA):
        fields[f"vgg16-fcn-{variant}"] = {**_VGG, "variant": variant}
    # The paper's multi-person pair on PASCAL-Person-Part (Fig. 4, Table 6): MuLA HG-5s and the HG-5x1u
    # baseline, both with the partition branch. Training on a multi-person dataset switches the branch
    # on for any Hourglass preset; these names say so explicitly.
    fields["hg-5s-pascal"] = {**_HOURGLASS, "stages": 5, "variant": MULA, "partition": True}
    fields["hg-5x1u-pascal"] = {**_HOURGLASS, "stages": 5, "variant": INDEPENDENT, "partition": True}
    # A tiny model for tests and the demo: fast on a CPU, same structure as hg-2s.
    fields["hg-tiny"] = {
        **_HOURGLASS,
        "stages": 2,
        "variant": MULA,
        "width": 32,
        "hourglass_depth": 2,
        "kernel_size": 3,
        "input_size": 128,
    }
    return fields


PRESET_FIELDS = _preset_fields()


def dataset_overrides(manifest: DatasetManifest) -> dict[str, Any]:
    """The build_model keyword arguments that size a model for ``manifest``'s classes and joints."""
    return {
        "num_classes": manifest.num_classes,
        "num_joints": manifest.num_joints,
        "class_names": manifest.classes,
        "joint_names": manifest.joints,
        "partition": manifest.multi_person,
    }


def preset_config(
    preset: str,
    *,
    num_classes: int | None = None,
    num_joints: int | None = None,
    width: int | None = None,
    stages: int | None = None,
    variant: str | None = None,
    input_size: int | None = None,
    hourglass_depth: int | None = None,
    adapt_stages: tuple[bool, ...] | None = None,
    kernel_size: int | None = None,
    paper_mapping: bool | None = None,
    partition: bool | None = None,
    class_names: tuple[str, ...] = (),
    joint_names: tuple[str, ...] = (),
) -> MulaConfig:
    """The config of ``preset`` with the given fields replaced (None keeps the preset's value).

    Without ``num_classes`` / ``num_joints`` the model is sized (and named) for LIP.
    """
    if preset not in PRESET_FIELDS:
        raise MulaError(
            f"unknown model preset '{preset}'; `mula models` lists them: {', '.join(PRESET_FIELDS)}"
        )
    fields = dict(PRESET_FIELDS[preset])
    if num_classes is None or num_joints is None:
        lip = dataset_overrides(load_manifest(DEFAULT_DATASET))
        if num_classes is None:
            num_classes, class_names = lip["num_classes"], class_names or lip["class_names"]
        if num_joints is None:
            num_joints, joint_names = lip["num_joints"], joint_names or lip["joint_names"]
    overrides = {
        "width": width,
        "stages": stages,
        "variant": variant,
        "input_size": input_size,
        "hourglass_depth": hourglass_depth,
        "adapt_stages": adapt_stages,
        "kernel_size": kernel_size,
        "paper_mapping": paper_mapping,
        "partition": partition,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields.get("encoder") != HOURGLASS:
        # VGG16-FCN has no partition branch: on a multi-person dataset it learns parsing and single maps
        fields["partition"] = False
    if stages is not None and adapt_stages is None:
        fields.pop("adapt_stages", None)  # a per-stage switch only fits the preset's own stage count
    return MulaConfig(
        preset=preset,
        num_classes=num_classes,
        num_joints=num_joints,
        class_names=tuple(class_names),
        joint_names=tuple(joint_names),
        **fields,
    )


def _build(preset: str, *, authors_init: bool = False, **overrides: Any) -> MuLA:
    return model_from_config(preset_config(preset, **overrides), authors_init=authors_init)


# Plain dict: preset name -> its build function (keyword overrides as in preset_config).
PRESETS: dict[str, Callable[..., MuLA]] = {name: partial(_build, name) for name in PRESET_FIELDS}


def build_model(preset: str = DEFAULT_PRESET, **overrides: Any) -> MuLA:
    """Build a preset, e.g. ``build_model("hg-5s", num_classes=20, num_joints=16)``.

    ``authors_init=True`` keeps the authors' MSRA initialisation of the prediction heads (see
    :func:`mula_cli.model.mula.init_heads`); the other keywords are :func:`preset_config`'s.
    """
    if preset not in PRESETS:
        raise MulaError(f"unknown model preset '{preset}'; `mula models` lists them: {', '.join(PRESETS)}")
    return PRESETS[preset](**overrides)


__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "PRESET_FIELDS",
    "build_model",
    "dataset_overrides",
    "model_from_config",
    "preset_config",
]
