"""The multi-stage joint model: two task streams (or one shared stream) and their interactions.

Stage t (architecture.md, "One MuLA stage"): each task encodes its input X_t into F_t, the
interaction refines F_t into R_t using the other task's feature, a 1x1 head predicts from R_t at
stride s, and (t < T) ``X_{t+1} = X_t + Conv1x1(F_t) + Conv1x1(pred_t)`` with the un-adapted F_t,
as the authors' release does (``paper_mapping`` uses R_t, as the paper's text says).
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch
from torch import Tensor, nn

from mula_cli.model.adaptation import (
    AdaptiveResidual,
    AddFusion,
    ConcatFusion,
    MultiplyFusion,
    NoInteraction,
    StaticResidual,
)
from mula_cli.model.blocks import conv1x1, msra_init
from mula_cli.model.config import (
    ADD,
    CONCAT,
    HOURGLASS,
    LA_PARSING,
    LA_POSE,
    MTL,
    MULA,
    MULTI,
    SELF,
    MulaConfig,
)
from mula_cli.model.hourglass import HourglassStageEncoder, HourglassStem
from mula_cli.model.vgg import Vgg16Encoder

POSE = "pose"
PARSING = "parsing"


class MulaOutput(NamedTuple):
    """One entry per stage: pose heatmaps (B, J+1, H/s, W/s) and parsing logits (B, P, H/s, W/s)."""

    pose: list[Tensor]
    parsing: list[Tensor]

    @property
    def offsets(self) -> list[Tensor]:
        """No partition branch: no offsets. (Not a field: tracers and ONNX cannot type an empty list.)"""
        return []


class MultiPersonOutput(NamedTuple):
    """:class:`MulaOutput` of a model with the partition branch: also the centroid offsets (B, 2J, H/s, W/s)."""

    pose: list[Tensor]
    parsing: list[Tensor]
    offsets: list[Tensor]


ModelOutput = Union[MulaOutput, MultiPersonOutput]


def model_output(pose: list[Tensor], parsing: list[Tensor], offsets: list[Tensor]) -> ModelOutput:
    """The output tuple of a model: :class:`MultiPersonOutput` when there are offsets, else :class:`MulaOutput`."""
    return MultiPersonOutput(pose, parsing, offsets) if offsets else MulaOutput(pose, parsing)


def _make_stem(cfg: MulaConfig) -> nn.Module:
    """Image to X_1: the Hourglass stem, or the whole VGG16 encoder (its single stage adds nothing)."""
    if cfg.encoder == HOURGLASS:
        return HourglassStem(cfg.width)
    return Vgg16Encoder(cfg.width, batch_norm=cfg.vgg_batch_norm)


def _make_stage_encoder(cfg: MulaConfig) -> nn.Module:
    if cfg.encoder == HOURGLASS:
        return HourglassStageEncoder(cfg.width, cfg.hourglass_depth)
    return nn.Identity()


def _residual_batch_norm(cfg: MulaConfig) -> bool:
    # The authors' VGG variant has BN after V only when its encoder uses BN.
    return cfg.encoder == HOURGLASS or cfg.vgg_batch_norm


def _make_interaction(cfg: MulaConfig, task: str, stage: int) -> nn.Module:
    """The module that refines ``task``'s feature with the other task's in ``stage``."""
    variant = cfg.variant
    if not cfg.adapt_stages[stage]:
        return NoInteraction()
    if variant == ADD:
        return AddFusion()
    if variant == MULTI:
        return MultiplyFusion()
    if variant == CONCAT:
        return ConcatFusion(cfg.width)
    if variant == SELF:
        return StaticResidual(cfg.width, cfg.kernel_size, batch_norm=_residual_batch_norm(cfg))
    adapted = {MULA: (POSE, PARSING), LA_POSE: (POSE,), LA_PARSING: (PARSING,)}.get(variant, ())
    if task in adapted:
        return AdaptiveResidual(cfg.width, cfg.kernel_size, batch_norm=_residual_batch_norm(cfg))
    return NoInteraction()


class NextStageMapping(nn.Module):
    """``X_{t+1} = X_t + Conv1x1(F_t) + sum_k Conv1x1(pred_k)`` (all with bias)."""

    def __init__(self, width: int, prediction_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.features = conv1x1(width, width, bias=True)
        self.predictions = nn.ModuleList(conv1x1(k, width, bias=True) for k in prediction_channels)

    def forward(self, x: Tensor, feature: Tensor, predictions: list[Tensor]) -> Tensor:
        x = x + self.features(feature)
        for remap, prediction in zip(self.predictions, predictions):
            x = x + remap(prediction)
        return x


class MulaStage(nn.Module):
    """Both tasks' part of one stage. With ``mtl`` one shared encoder feeds both heads."""

    def __init__(self, cfg: MulaConfig, index: int) -> None:
        super().__init__()
        self.shared = cfg.variant == MTL
        self.last = index == cfg.stages - 1
        self.paper_mapping = cfg.paper_mapping
        pose_maps, parsing_maps = cfg.num_joints + 1, cfg.num_classes
        if self.shared:
            self.shared_features = _make_stage_encoder(cfg)
        else:
            self.pose_features = _make_stage_encoder(cfg)
            self.parsing_features = _make_stage_encoder(cfg)
        self.pose_interaction = _make_interaction(cfg, POSE, index)
        self.parsing_interaction = _make_interaction(cfg, PARSING, index)
        self.pose_head = conv1x1(cfg.width, pose_maps, bias=True)
        self.parsing_head = conv1x1(cfg.width, parsing_maps, bias=True)
        # The partition branch reads the same adapted pose feature R_t as the heatmap head, so the
        # kernels predicted from the parsing feature shape the offsets too (docs/multi_person.md).
        offset_maps = (2 * cfg.num_joints,) if cfg.partition else ()
        self.offset_head = conv1x1(cfg.width, *offset_maps, bias=True) if cfg.partition else None
        if self.last:
            return  # the authors build mapping convs for the last stage too, but never run them
        if self.shared:
            self.mapping = NextStageMapping(cfg.width, (pose_maps, parsing_maps, *offset_maps))
        else:
            self.pose_mapping = NextStageMapping(cfg.width, (pose_maps, *offset_maps))
            self.parsing_mapping = NextStageMapping(cfg.width, (parsing_maps,))

    def forward(self, x_pose: Tensor, x_parsing: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """Returns (pose heatmaps, parsing logits, offsets or None, next pose input, next parsing input)."""
        if self.shared:
            f_pose = f_parsing = self.shared_features(x_pose)
        else:
            f_pose = self.pose_features(x_pose)
            f_parsing = self.parsing_features(x_parsing)
        r_pose = self.pose_interaction(f_pose, f_parsing)
        r_parsing = self.parsing_interaction(f_parsing, f_pose)
        pose, parsing = self.pose_head(r_pose), self.parsing_head(r_parsing)
        offsets = self.offset_head(r_pose) if self.offset_head is not None else None
        if self.last:
            return pose, parsing, offsets, x_pose, x_parsing
        if self.paper_mapping:  # the paper maps the adapted features R_t to the next stage
            f_pose, f_parsing = r_pose, r_parsing
        # the offsets are fed forward with the heatmaps, as every prediction of a stage is
        extra = [] if offsets is None else [offsets]
        if self.shared:
            x_next = self.mapping(x_pose, f_pose, [pose, parsing, *extra])
            return pose, parsing, offsets, x_next, x_next
        x_pose = self.pose_mapping(x_pose, f_pose, [pose, *extra])
        x_parsing = self.parsing_mapping(x_parsing, f_parsing, [parsing])
        return pose, parsing, offsets, x_pose, x_parsing


class MuLA(nn.Module):
    """The joint parsing and pose model of every variant; see :class:`MulaConfig`.

    ``forward(image)`` takes RGB images (B, 3, H, W), uint8 or float in 0..255, normalises them
    inside (the config's mean/std, then BGR order for the authors' weights) and returns a
    :class:`MulaOutput` with one pose and one parsing tensor per stage, both at stride s (a
    :class:`MultiPersonOutput`, with the offsets too, for models with the partition branch).
    """

    def __init__(self, config: MulaConfig) -> None:
        super().__init__()
        self.config = config
        self.shared = config.variant == MTL
        # Normalise as torchvision's ToTensor + Normalize do (x / 255, then mean/std in 0..1 units),
        # which reproduces the authors' input bit for bit. Not persistent: the config holds them.
        mean = torch.tensor(config.pixel_mean, dtype=torch.float32).reshape(1, 3, 1, 1) / 255.0
        std = torch.tensor(config.pixel_std, dtype=torch.float32).reshape(1, 3, 1, 1) / 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        if self.shared:
            self.shared_stem = _make_stem(config)
        else:
            self.pose_stem = _make_stem(config)
            self.parsing_stem = _make_stem(config)
        self.stages = nn.ModuleList(MulaStage(config, t) for t in range(config.stages))

    def normalise(self, image: Tensor) -> Tensor:
        """RGB 0..255 to the network's input (channel order and scale of the config)."""
        x = (image.to(self.pixel_mean.dtype) / 255.0 - self.pixel_mean) / self.pixel_std
        return x.flip(1) if self.config.bgr else x

    def forward(self, image: Tensor) -> ModelOutput:
        x = self.normalise(image)
        if self.shared:
            x_pose = x_parsing = self.shared_stem(x)
        else:
            x_pose = self.pose_stem(x)
            x_parsing = self.parsing_stem(x)
        poses: list[Tensor] = []
        parsings: list[Tensor] = []
        offsets: list[Tensor] = []
        for stage in self.stages:
            pose, parsing, offset, x_pose, x_parsing = stage(x_pose, x_parsing)
            poses.append(pose)
            parsings.append(parsing)
            if offset is not None:
                offsets.append(offset)
        return model_output(poses, parsings, offsets)


HEAD_INIT_STD = 1e-3


def model_from_config(cfg: MulaConfig, *, authors_init: bool = False) -> MuLA:
    """Build the model of ``cfg`` (on the current default device), initialised for training.

    Every layer gets the authors' MSRA initialisation; then, unless ``authors_init``, the
    prediction heads start from the blank answer (see :func:`init_heads`).
    """
    model = MuLA(cfg)
    msra_init(model)
    if not authors_init:
        init_heads(model)
    return model


def init_heads(model: MuLA) -> None:
    """Start every stage's predictions at the blank answer: joint maps 0, background map 1, uniform parsing.

    With MSRA-initialised 1x1 heads (the authors') every stage first predicts heatmaps of unit
    size noise, a hundred times the squared error of a blank prediction, and the pose branch spends
    its early training unlearning that noise; on small budgets it never leaves the average pose.
    Near-zero head weights (std 1e-3, as the pose heads of SimpleBaseline and HRNet) and a
    background bias of 1 remove that phase; an 8-picture overfit goes from PCKh 13 to 58 in the
    same 200 steps.
    """
    for stage in model.stages:
        heads = (stage.pose_head, stage.parsing_head) + ((stage.offset_head,) if stage.offset_head is not None else ())
        for head in heads:  # offsets start at 0: every pixel votes for itself
            nn.init.normal_(head.weight, std=HEAD_INIT_STD)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            stage.pose_head.bias[-1] = 1.0  # the background map (1 - max over joints) is 1 almost everywhere


def count_parameters(model: nn.Module) -> int:
    """Number of learned scalars (BN affine included, running statistics not)."""
    return sum(p.numel() for p in model.parameters())
