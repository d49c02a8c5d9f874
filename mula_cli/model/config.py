"""The configuration of one MuLA model: a flat dataclass of plain values, stored in weights files."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from mula_cli.utils.errors import MulaError

HOURGLASS = "hourglass"
VGG16 = "vgg16"
ENCODERS = (HOURGLASS, VGG16)

# How the two tasks talk to each other inside a stage (architecture.md, "Ablation variants").
INDEPENDENT = "independent"  # no interaction (HG-0s, HG-k x 1u, VGG16-FCN)
ADD = "add"  # F_task + F_other
MULTI = "multi"  # F_task * F_other
CONCAT = "concat"  # Conv1x1([F_task, F_other])
MTL = "mtl"  # one shared encoder, two heads
SELF = "self"  # U -> static depthwise h x h -> V residual, no interaction
LA_POSE = "la-pose"  # pose adapted by kernels predicted from the parsing feature
LA_PARSING = "la-parsing"  # parsing adapted by kernels predicted from the pose feature
MULA = "mula"  # both directions
VARIANTS = (INDEPENDENT, ADD, MULTI, CONCAT, MTL, SELF, LA_POSE, LA_PARSING, MULA)

# Variants without any per-stage interaction module: their adaptation switch is always off.
NON_INTERACTING = (INDEPENDENT, MTL)

# The authors' normalisation: BGR channel order, x / 255 - 0.5 (std 1), written in 0..255 units.
OFFICIAL_PIXEL_MEAN = (127.5, 127.5, 127.5)
OFFICIAL_PIXEL_STD = (255.0, 255.0, 255.0)


def _tuple_fields() -> frozenset[str]:
    return frozenset({"adapt_stages", "pixel_mean", "pixel_std", "class_names", "joint_names"})


@dataclass(frozen=True)
class MulaConfig:
    """Everything needed to rebuild a MuLA model (weights aside).

    ``adapt_stages`` switches the interaction of each stage on or off; an empty tuple means
    "on everywhere" (off everywhere for the non-interacting variants ``independent`` and ``mtl``).
    ``pixel_mean`` / ``pixel_std`` are per input channel in R, G, B order, in 0..255 units; ``bgr``
    reorders the normalised image to B, G, R before the first convolution, as the authors' models
    expect. ``kernel_size`` is the side ``h`` of the predicted depthwise kernels; the adapters pool
    to ``h x h`` so the input size only has to be a multiple of 64 (Hourglass) or 8 (VGG).
    ``paper_mapping`` feeds the next stage from the adapted feature R_t, as the paper's text says
    (Sec. 3.2, "Classification Module"), instead of the un-adapted F_t of the authors' release
    (the default, which their checkpoints need); see docs/fidelity.md.
    ``partition`` adds the multi-person partition branch to the pose side of every stage: 2J maps
    of offsets from each joint's neighbourhood to its person's centroid (see mula_cli.codecs.partition).
    """

    preset: str = "hg-5s"
    encoder: str = HOURGLASS
    variant: str = MULA
    stages: int = 5
    adapt_stages: tuple[bool, ...] = ()
    width: int = 256
    hourglass_depth: int = 4
    num_classes: int = 20
    num_joints: int = 16
    input_size: int = 256
    kernel_size: int = 7
    vgg_batch_norm: bool = False
    pixel_mean: tuple[float, float, float] = OFFICIAL_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = OFFICIAL_PIXEL_STD
    bgr: bool = True
    paper_mapping: bool = False
    partition: bool = False
    class_names: tuple[str, ...] = ()
    joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Normalise list inputs (JSON, CLI) to tuples so configs compare and hash by value.
        for name in _tuple_fields():
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.adapt_stages:
            on = self.variant not in NON_INTERACTING
            object.__setattr__(self, "adapt_stages", (on,) * self.stages)
        object.__setattr__(self, "adapt_stages", tuple(bool(a) for a in self.adapt_stages))
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> MulaError:
            return MulaError(f"model config '{self.preset}': {msg}")

        if self.encoder not in ENCODERS:
            raise bad(f"encoder must be one of {', '.join(ENCODERS)}, not {self.encoder!r}")
        if self.variant not in VARIANTS:
            raise bad(f"variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        if self.stages < 1:
            raise bad(f"stages must be at least 1, not {self.stages}")
        if self.encoder == VGG16 and self.stages != 1:
            raise bad(f"the VGG16-FCN encoder has exactly one stage, not {self.stages}")
        if len(self.adapt_stages) != self.stages:
            raise bad(f"adapt_stages has {len(self.adapt_stages)} entries for {self.stages} stages")
        if self.variant in NON_INTERACTING and any(self.adapt_stages):
            raise bad(f"variant {self.variant} has no interaction to switch on; leave adapt_stages empty")
        if self.width < 8 or self.width % 8:
            raise bad(f"width must be a positive multiple of 8, not {self.width}")
        if not 1 <= self.hourglass_depth <= 6:
            raise bad(f"hourglass_depth must be 1..6, not {self.hourglass_depth}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise bad(f"kernel_size must be odd and positive, not {self.kernel_size}")
        if self.num_classes < 2 or self.num_joints < 1:
            raise bad(f"needs at least 2 classes and 1 joint, got {self.num_classes} and {self.num_joints}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise bad(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.joint_names and len(self.joint_names) != self.num_joints:
            raise bad(f"{len(self.joint_names)} joint names for {self.num_joints} joints")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise bad("pixel_mean and pixel_std need 3 values each, std positive")
        if self.partition and self.encoder != HOURGLASS:
            raise bad("the partition branch (multi-person pose) is built for the Hourglass presets only")
        if self.input_size % self.input_multiple or self.input_size < self.min_input_size:
            raise bad(
                f"input_size must be a multiple of {self.input_multiple} and at least "
                f"{self.min_input_size}, not {self.input_size}"
            )

    @property
    def stride(self) -> int:
        """Output stride of the heatmaps and parsing logits (4 Hourglass, 8 VGG16-FCN)."""
        return 4 if self.encoder == HOURGLASS else 8

    @property
    def input_multiple(self) -> int:
        """Input sides must be a multiple of this (the hourglass halves the stride-4 map depth times)."""
        return self.stride * 2**self.hourglass_depth if self.encoder == HOURGLASS else self.stride

    @property
    def min_input_size(self) -> int:
        """Smallest input side the parameter adapter accepts (it needs a stride-s map of at least 9)."""
        size = self.input_multiple
        while size // self.stride < 9:
            size += self.input_multiple
        return size

    @property
    def adapted(self) -> bool:
        """Whether any stage has an interaction module."""
        return any(self.adapt_stages)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        raw = asdict(self)
        for name in _tuple_fields():
            raw[name] = list(raw[name])
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MulaConfig:
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown fields are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MulaError(f"model config has unknown fields {unknown}; was it written by a newer mula?")
        return cls(**raw)
