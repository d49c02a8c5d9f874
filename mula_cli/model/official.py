"""Import of the authors' checkpoints (NieXC/pytorch-mula: ``mula_lip.pth.tar`` and friends).

Their files are ``torch.save({"epoch", "state_dict", "best_pck", "pck_avg_list", "pck_all_list",
"best_miou", "miou_all_list"})`` with state-dict keys prefixed ``module.front_end_net.``
(DataParallel around their init wrapper); ``pck_all_list`` and ``miou_all_list`` hold NumPy arrays,
the best scores NumPy scalars. We load them with ``weights_only=True`` and allow only NumPy's array
and scalar reconstruction with numeric dtypes besides tensors, so a checkpoint can never run code.
Every tensor the authors' forward pass uses is mapped onto our modules; the tensors their modules
build but never use (1x1 skip projections where widths match, the VGG variant's BN without batch
norm) are reported and dropped.

Joint order: the authors' pose heads do not emit LIP/MPII order. Their loader reorders the
annotations to head-top, upper-neck, right arm, left arm, right leg, left leg, thorax, pelvis
(``AUTHORS_JOINT_ORDER``), and their evaluation maps back. The importer permutes the pose head's
output rows and the next stage's pose remap input columns so that the converted model emits
heatmaps in the manifest's joint order; the background map stays last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mula_cli.model.config import HOURGLASS, MULA, VGG16, MulaConfig
from mula_cli.model.mula import MuLA, model_from_config
from mula_cli.model.vgg import VGG16_LAYOUT
from mula_cli.model.weights import describe_load_error
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import DatasetManifest

# The authors' pose channel order, by joint name (their utils/joint_transformation.py).
AUTHORS_JOINT_ORDER = (
    *("head-top", "upper-neck"),
    *("R-shoulder", "R-elbow", "R-wrist", "L-shoulder", "L-elbow", "L-wrist"),
    *("R-hip", "R-knee", "R-ankle", "L-hip", "L-knee", "L-ankle"),
    *("thorax", "pelvis"),
)
TASKS = ("pose", "parsing")
_PREFIXES = ("module.", "front_end_net.")
_STATE_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Which convs / BNs of the authors' residual Sequentials our named layers are.
_PRE_RES = {
    "bn1": "res_block.0",
    "conv1": "res_block.2",
    "bn2": "res_block.3",
    "conv2": "res_block.5",
    "bn3": "res_block.6",
    "conv3": "res_block.8",
    "skip.bn": "conv1x1.0",
    "skip.conv": "conv1x1.2",
}
_POST_RES = {
    "conv1": "res_block.0",
    "bn1": "res_block.1",
    "conv2": "res_block.3",
    "bn2": "res_block.4",
    "conv3": "res_block.6",
    "bn3": "res_block.7",
    "skip.conv": "conv1x1.0",
    "skip.bn": "conv1x1.1",
}
_BOTTLENECK = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4", "conv3": "6"}
_ADAPTER = {"conv1": "0", "conv2": "2", "conv3": "4"}
_UNUSED_SKIPS = re.compile(r"^(pose|parsing)_encoder\.hg_list\.\d+\.srb\d+\.\d+\.conv1x1\.")
_UNUSED_VGG_BN = re.compile(r"^(pose|parsing)_bn\.")
UNEXPECTED = "not part of the authors' model"
_KNOWN_UNUSED = (
    (_UNUSED_SKIPS, "1x1 skip projections of hourglass residuals (built although in == out; never run)"),
    (_UNUSED_VGG_BN, "BN after V of the VGG variant without batch norm (never run)"),
)


@dataclass(frozen=True)
class OfficialArchitecture:
    """What a checkpoint's keys and shapes say about the authors' model that wrote it."""

    encoder: str
    stages: int
    width: int
    hourglass_depth: int
    num_joints: int
    num_classes: int
    vgg_batch_norm: bool = False

    def describe(self) -> str:
        if self.encoder == HOURGLASS:
            return f"Hourglass MuLA, {self.stages} stage(s), width {self.width}"
        return f"VGG16-FCN MuLA, width {self.width}" + (", batch norm" if self.vgg_batch_norm else "")


@dataclass
class ImportReport:
    """The outcome of mapping an official state dict onto our model."""

    architecture: OfficialArchitecture
    model: MuLA
    mapped: dict[str, str]  # our key -> official key
    unused: dict[str, list[str]]  # reason -> official keys
    missing: dict[str, str]  # our key -> the official key it needs
    permuted: list[str] = field(default_factory=list)  # our keys whose joint channels were reordered

    @property
    def tolerated_missing(self) -> list[str]:
        """Missing keys that do not matter: PyTorch 0.2 files have no BN ``num_batches_tracked``."""
        return [k for k in self.missing if k.endswith("num_batches_tracked")]

    def problem(self) -> str | None:
        """Why the checkpoint cannot be converted, or None when every used tensor was mapped."""
        hard = [theirs for ours, theirs in self.missing.items() if ours not in self.tolerated_missing]
        if hard:
            return f"lacks {len(hard)} tensors of the authors' model (e.g. {hard[0]}); it is incomplete"
        unexpected = self.unused.get(UNEXPECTED, [])
        if unexpected:
            return (
                f"has {len(unexpected)} tensors the authors' {self.architecture.encoder} MuLA does not have "
                f"(e.g. {unexpected[0]}); it matches neither architecture"
            )
        return None


# NumPy dtypes a checkpoint's metric arrays and scalars may have: booleans, integers and floats.
# Object, string, structured and datetime dtypes stay refused (an object array pickles arbitrary objects).
_NUMPY_DTYPE_CODES = "?bBhHiIlLqQefdg"


def _numpy_safe_globals() -> list[Any]:
    """Exactly what NumPy needs to unpickle numeric arrays and scalars, and nothing more.

    The authors' script stores per-validation PCKh tables and per-class IoU/accuracy vectors as
    ``numpy.ndarray`` (``pck_all_list``, ``miou_all_list``) and best scores as NumPy scalars. A pickled
    array is ``_reconstruct(ndarray, (0,), b"b")`` followed by ``ndarray.__setstate__`` with a dtype
    built by ``numpy.dtype(...)`` and its ``__setstate__``; a scalar is ``scalar(dtype, bytes)``. The
    reconstructors are allowed under both module paths NumPy has pickled them with (``numpy.core``
    before 2.0, ``numpy._core`` since), without importing the deprecated alias. None of these runs
    code named by the file; anything else (another NumPy function, an object array) is refused.
    """
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list[Any] = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"), (multiarray._reconstruct, f"{module}._reconstruct")]
    allowed += [np.ndarray, np.dtype]
    # Unpickling builds each dtype as an instance of its own class (numpy.dtypes.Float64DType, ...),
    # which must be allowed too for its __setstate__ to run.
    allowed += sorted({type(np.dtype(code)) for code in _NUMPY_DTYPE_CODES}, key=lambda t: t.__name__)
    return allowed


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key


def load_official_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The prefix-stripped state dict and the plain metadata (epoch, best PCKh / mIoU) of ``path``."""
    if not path.is_file():
        raise MulaError(f"checkpoint {path} does not exist; check the path")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types for damaged or unsafe files
        raise MulaError(
            f"checkpoint {path} cannot be loaded safely ({describe_load_error(exc)}); "
            "only the authors' released MuLA files are supported"
        ) from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        state, meta = raw["state_dict"], {k: v for k, v in raw.items() if k != "state_dict"}
    elif isinstance(raw, dict) and raw and all(isinstance(v, Tensor) for v in raw.values()):
        state, meta = raw, {}
    else:
        raise MulaError(f"checkpoint {path} holds no state dict; is it one of the authors' MuLA files?")
    stripped: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise MulaError(f"checkpoint {path} has a state-dict entry {key!r} that is not a named tensor")
        short = _strip(key)
        if short in stripped:
            raise MulaError(f"checkpoint {path} has the key {short!r} twice once prefixes are stripped")
        stripped[short] = value
    return stripped, _plain_metadata(meta)


def _plain_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Epoch and best scores as plain numbers (NumPy scalars converted); lists and others dropped."""
    plain: dict[str, Any] = {}
    for key in ("epoch", "best_pck", "best_miou"):
        value = meta.get(key)
        try:
            plain[key] = int(value) if key == "epoch" else float(value)
        except (TypeError, ValueError):
            continue
    return plain


def _stage_count(state: dict[str, Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def detect_architecture(state: dict[str, Tensor], arch: str = "auto") -> OfficialArchitecture:
    """Recognise the authors' Hourglass (any stage count) or VGG16 MuLA from keys and shapes."""
    is_hg = any(k.startswith("pose_encoder.hg_list.") for k in state)
    is_vgg = any(k.startswith("pose_encoder.model.") for k in state)
    wanted = {"auto": None, "hg": HOURGLASS, "vgg": VGG16}[arch]
    encoder = HOURGLASS if is_hg else VGG16 if is_vgg else None
    if encoder is None or (wanted is not None and wanted != encoder):
        what = "the authors' Hourglass or VGG16 MuLA" if wanted is None else f"the authors' {arch} MuLA"
        raise MulaError(
            f"the checkpoint's keys match neither {what}; is it a MuLA checkpoint of NieXC/pytorch-mula?"
        )
    try:
        if encoder == HOURGLASS:
            levels = {
                int(m.group(1)) for k in state if (m := re.match(r"pose_encoder\.hg_list\.0\.srb(\d+)\.", k))
            }
            return OfficialArchitecture(
                encoder=HOURGLASS,
                stages=_stage_count(state, r"pose_encoder\.hg_list\.(\d+)\."),
                width=state["pose_encoder.conv1x1_1_list.0.weight"].shape[0],
                hourglass_depth=(len(levels) - 1) // 2,
                num_joints=state["pose_encoder.conv_pred_list.0.weight"].shape[0] - 1,
                num_classes=state["parsing_encoder.conv_pred_list.0.weight"].shape[0],
            )
        return OfficialArchitecture(
            encoder=VGG16,
            stages=1,
            width=state["pose_classifier.weight"].shape[1],
            hourglass_depth=4,
            num_joints=state["pose_classifier.weight"].shape[0] - 1,
            num_classes=state["parsing_classifier.weight"].shape[0],
            vgg_batch_norm=any(re.match(r"pose_encoder\.model\.\d+\.running_mean$", k) for k in state),
        )
    except (KeyError, IndexError) as exc:
        raise MulaError(
            f"the checkpoint lacks {exc} that the authors' {encoder} MuLA has; it is incomplete"
        ) from None


def _hourglass_modules(arch: OfficialArchitecture) -> dict[str, list[str]]:
    """Our module path -> the authors' module path(s) (the first present one is used)."""
    modules: dict[str, list[str]] = {}
    d = arch.hourglass_depth
    for task in TASKS:
        enc = f"{task}_encoder"
        modules[f"{task}_stem.conv"] = [f"{enc}.basic_block.0"]
        modules[f"{task}_stem.bn"] = [f"{enc}.basic_block.1"]
        for ours, theirs in _POST_RES.items():
            modules[f"{task}_stem.post_res.{ours}"] = [f"{enc}.basic_block.3.{theirs}"]
        for ours, theirs in _BOTTLENECK.items():
            modules[f"{task}_stem.bottleneck.{ours}"] = [f"{enc}.res_block.{theirs}"]
        for ours, theirs in _PRE_RES.items():
            modules[f"{task}_stem.pre_res.{ours}"] = [f"{enc}.res_pre_act.{theirs}"]
        for t in range(arch.stages):
            ours_stage, hg = f"stages.{t}", f"{enc}.hg_list.{t}"
            # srb1..srb{d} go down, srb{d+1} is the bottom, srb{d+2}.. come back up.
            levels = [f"down.{i}" for i in range(d)] + ["bottom"] + [f"up.{i}" for i in range(d)]
            for level, name in enumerate(levels, start=1):
                for ours, theirs in _PRE_RES.items():
                    if not ours.startswith("skip."):
                        modules[f"{ours_stage}.{task}_features.hourglass.{name}.{ours}"] = [
                            f"{hg}.srb{level}.0.{theirs}"
                        ]
            modules[f"{ours_stage}.{task}_features.hourglass.bn"] = [f"{hg}.bn"]
            modules[f"{ours_stage}.{task}_features.conv"] = [f"{enc}.conv1x1_1_list.{t}"]
            modules[f"{ours_stage}.{task}_features.bn"] = [f"{enc}.bn.{t}"]
            modules[f"{ours_stage}.{task}_head"] = [f"{enc}.conv_pred_list.{t}", f"{task}_classifier.{t}"]
            modules[f"{ours_stage}.{task}_mapping.features"] = [f"{enc}.conv1x1_2_list.{t}"]
            modules[f"{ours_stage}.{task}_mapping.predictions.0"] = [f"{enc}.conv_remap_list.{t}"]
            for ours, theirs in _ADAPTER.items():
                modules[f"{ours_stage}.{task}_interaction.adapter.{ours}"] = [
                    f"{task}_param_adapter_list.{t}.{theirs}"
                ]
            modules[f"{ours_stage}.{task}_interaction.u"] = [f"{task}_conv1x1_U_list.{t}"]
            modules[f"{ours_stage}.{task}_interaction.v"] = [f"{task}_conv1x1_V_list.{t}"]
            modules[f"{ours_stage}.{task}_interaction.bn"] = [f"{task}_bn_list.{t}"]
    return modules


def _vgg_modules(arch: OfficialArchitecture) -> dict[str, list[str]]:
    modules: dict[str, list[str]] = {}
    for task in TASKS:
        index, conv = 0, 0  # position in the authors' nn.Sequential, our conv counter
        for step in VGG16_LAYOUT:
            if step == 0:  # max-pool
                index += 1
                continue
            modules[f"{task}_stem.convs.{conv}.conv"] = [f"{task}_encoder.model.{index}"]
            if arch.vgg_batch_norm:
                modules[f"{task}_stem.convs.{conv}.bn"] = [f"{task}_encoder.model.{index + 1}"]
            index += 3 if arch.vgg_batch_norm else 2
            conv += 1
        modules[f"stages.0.{task}_head"] = [f"{task}_classifier"]
        for ours, theirs in _ADAPTER.items():
            modules[f"stages.0.{task}_interaction.adapter.{ours}"] = [f"{task}_param_adapter.{theirs}"]
        modules[f"stages.0.{task}_interaction.u"] = [f"{task}_conv1x1_U"]
        modules[f"stages.0.{task}_interaction.v"] = [f"{task}_conv1x1_V"]
        if arch.vgg_batch_norm:
            modules[f"stages.0.{task}_interaction.bn"] = [f"{task}_bn"]
    return modules


def official_config(arch: OfficialArchitecture, manifest: DatasetManifest) -> MulaConfig:
    """Our config for the authors' model: MuLA variant, their kernel size, official normalisation."""
    if (arch.num_classes, arch.num_joints) != (manifest.num_classes, manifest.num_joints):
        raise MulaError(
            f"the checkpoint predicts {arch.num_classes} classes and {arch.num_joints} joints, but the "
            f"'{manifest.name}' manifest has {manifest.num_classes} and {manifest.num_joints}"
        )
    hourglass = arch.encoder == HOURGLASS
    return MulaConfig(
        preset=f"hg-{arch.stages}s" if hourglass else "vgg16-fcn-mula",
        encoder=arch.encoder,
        variant=MULA,
        stages=arch.stages,
        width=arch.width,
        hourglass_depth=arch.hourglass_depth,
        num_classes=manifest.num_classes,
        num_joints=manifest.num_joints,
        input_size=256,
        kernel_size=7 if hourglass else 3,  # hard-wired in the authors' code for 256 x 256 inputs
        vgg_batch_norm=arch.vgg_batch_norm,
        class_names=manifest.classes,
        joint_names=manifest.joints,
    )


def joint_permutation(manifest: DatasetManifest) -> list[int]:
    """``ours[m] = authors[perm[m]]`` for the manifest's joints, looked up by name."""
    missing = [name for name in manifest.joints if name not in AUTHORS_JOINT_ORDER]
    if missing or len(manifest.joints) != len(AUTHORS_JOINT_ORDER):
        raise MulaError(
            f"the '{manifest.name}' manifest's joints {missing or manifest.joints} do not match the authors' "
            f"16 LIP joints; the released checkpoints are for LIP"
        )
    return [AUTHORS_JOINT_ORDER.index(name) for name in manifest.joints]


def _permute_joints(ours: dict[str, Tensor], perm: list[int], stages: int) -> list[str]:
    """Reorder the joint channels (background last) of every pose head and pose remap conv."""
    order = torch.tensor([*perm, len(perm)])
    changed = []
    for t in range(stages):
        for key in (f"stages.{t}.pose_head.weight", f"stages.{t}.pose_head.bias"):
            ours[key] = ours[key][order].clone()
            changed.append(key)
        remap = f"stages.{t}.pose_mapping.predictions.0.weight"
        if remap in ours:
            ours[remap] = ours[remap][:, order].clone()
            changed.append(remap)
    return changed


def convert_official(
    state: dict[str, Tensor], arch: OfficialArchitecture, manifest: DatasetManifest
) -> ImportReport:
    """Map an official state dict onto a freshly built model of ``arch``.

    The report's model holds the converted weights when ``report.problem()`` is None. Shape
    mismatches and inconsistent aliases raise MulaError at once.
    """
    config = official_config(arch, manifest)
    perm = joint_permutation(manifest)
    model = model_from_config(config)
    modules = _hourglass_modules(arch) if arch.encoder == HOURGLASS else _vgg_modules(arch)
    target = model.state_dict()
    converted: dict[str, Tensor] = {}
    report = ImportReport(arch, model, mapped={}, unused={}, missing={})
    consumed: set[str] = set()
    for key, ours in target.items():
        module, _, suffix = key.rpartition(".")
        if module not in modules or suffix not in _STATE_SUFFIXES:
            raise RuntimeError(f"no official source known for {key}")  # a bug of ours, not the user's
        sources = [f"{m}.{suffix}" for m in modules[module]]
        present = [s for s in sources if s in state]
        consumed.update(present)
        if not present:
            report.missing[key] = sources[0]
            converted[key] = ours  # only kept when tolerated (num_batches_tracked)
            continue
        value = state[present[0]]
        if any(not torch.equal(state[s], value) for s in present[1:]):
            raise MulaError(
                f"the checkpoint's aliases {present} differ; the authors' files hold one tensor there"
            )
        if value.shape != ours.shape:
            raise MulaError(
                f"the checkpoint's {present[0]} has shape {tuple(value.shape)}, expected {tuple(ours.shape)}"
            )
        converted[key] = value.to(ours.dtype)
        report.mapped[key] = present[0]
    for key in sorted(set(state) - consumed):
        reason = next((why for pattern, why in _KNOWN_UNUSED if pattern.match(key)), UNEXPECTED)
        report.unused.setdefault(reason, []).append(key)
    if report.problem() is None:
        report.permuted = _permute_joints(converted, perm, arch.stages)
        model.load_state_dict(converted, strict=True)
    return report
