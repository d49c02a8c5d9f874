"""The training configuration: one flat dataclass, the learning-rate schedules, and config files.

Defaults are the paper's recipe: Hourglass MuLA with 5 stages at 256x256, RMSprop, batch 24,
250 epochs, every stage supervised, lr 2.5e-3 halved at epochs 150, 170, 200 and 230 (Sec. 4.1).
The paper gives one rate; VGG16-FCN (no BN, trained from scratch) does not train at it, and the
authors' README gives 1e-4 for their VGG model ("0.0001 for VGG based model", the ``--lr`` help of
NieXC/pytorch-mula), so every schedule starts VGG16-FCN at 1e-4. The authors' released script is
the ``official`` schedule: lr 1.5e-3 (1e-4 for VGG16) times 0.5, 0.25, 0.1, 0.05 at the same
epochs. Milestones are given for 250 epochs and scale with ``--epochs`` so that short runs keep
the same shape.

A config file (TOML, or YAML when PyYAML is installed) sets any field; command-line flags win.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from mula_cli.utils.devices import AMP_MODES, check_device_option
from mula_cli.utils.errors import MulaError

SCHEDULES: dict[str, dict[str, Any]] = {
    "paper": {"lr": 2.5e-3, "lr_vgg": 1e-4, "milestones": (150, 170, 200, 230), "factors": (0.5, 0.25, 0.125, 0.0625)},
    "official": {"lr": 1.5e-3, "lr_vgg": 1e-4, "milestones": (150, 170, 200, 230), "factors": (0.5, 0.25, 0.1, 0.05)},
    "constant": {"lr": 2.5e-3, "lr_vgg": 1e-4, "milestones": (), "factors": ()},
}
REFERENCE_EPOCHS = 250
AUGMENT_MODES = ("full", "flip", "none")  # see mula_cli.transforms.affine.AUGMENTATIONS


@dataclass(frozen=True)
class TrainConfig:
    """Every ``mula train`` option. ``None`` means "the model preset's / schedule's default"."""

    # data
    data: str = "lip"
    augment: str = "full"
    workers: int = 8
    val_every: int = 5
    val_limit: Optional[int] = None
    # model
    model: str = "hg-5s"
    stages: Optional[int] = None
    variant: Optional[str] = None
    width: Optional[int] = None
    input_size: Optional[int] = None
    authors_init: bool = False  # MSRA-initialised prediction heads, as the authors' script (default: near zero)
    paper_mapping: bool = False  # the paper's mapping to the next stage (adapted features), not the release's
    # optimisation
    epochs: int = 250
    batch_size: int = 24
    lr: Optional[float] = None
    schedule: str = "paper"
    beta: float = 0.01
    lovasz: float = 0.0  # weight of a Lovasz-softmax term in the parsing loss (0: the paper's cross-entropy only)
    offset_weight: float = 1.0  # multi-person: weight of the partition branch's offset loss (per stage)
    seed: int = 0
    # hardware
    device: str = "auto"
    amp: str = "auto"
    sync_bn: bool = False
    compile: bool = False
    deterministic: bool = False
    device_augment: Optional[bool] = None  # resample augmentations on the device (default: on CUDA)
    # output
    project: str = "runs/train"
    name: Optional[str] = None
    log_every: int = 20
    vis_images: int = 4

    def __post_init__(self) -> None:
        def bad(msg: str) -> MulaError:
            return MulaError(msg)

        if self.schedule not in SCHEDULES:
            raise bad(f"--schedule {self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
        if self.augment not in AUGMENT_MODES:
            raise bad(f"--augment {self.augment!r} is unknown; use one of {', '.join(AUGMENT_MODES)}")
        if self.amp not in AMP_MODES:
            raise bad(f"--amp {self.amp!r} is unknown; use one of {', '.join(AMP_MODES)}")
        check_device_option(self.device)
        for name in ("epochs", "batch_size", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise bad(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.workers < 0 or self.vis_images < 0:
            raise bad("--workers and vis_images must not be negative")
        if self.lr is not None and not self.lr > 0:
            raise bad(f"--lr must be positive, not {self.lr}")
        if self.beta < 0:
            raise bad(f"--beta must not be negative, not {self.beta}")
        if self.lovasz < 0:
            raise bad(f"--lovasz must not be negative, not {self.lovasz}")
        if self.offset_weight < 0:
            raise bad(f"--offset-weight must not be negative, not {self.offset_weight}")

    def base_lr(self, encoder: str) -> float:
        """The initial learning rate: ``--lr`` or the schedule's default for the encoder."""
        if self.lr is not None:
            return self.lr
        s = SCHEDULES[self.schedule]
        return s["lr_vgg"] if encoder == "vgg16" else s["lr"]

    def lr_at(self, epoch: int, encoder: str) -> float:
        """Learning rate of (0-based) ``epoch``.

        As the authors' script, a factor applies from the epoch whose 1-based number reaches its
        milestone; milestones are scaled from 250 epochs to ``epochs`` (exactly theirs at 250).
        """
        s = SCHEDULES[self.schedule]
        factor = 1.0
        for milestone, f in zip(s["milestones"], s["factors"]):
            if epoch + 1 >= milestone * self.epochs / REFERENCE_EPOCHS:
                factor = f
        return self.base_lr(encoder) * factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat dict of TrainConfig fields (dashes allowed in keys)."""
    path = Path(path)
    if not path.is_file():
        raise MulaError(f"config file {path} does not exist")
    try:  # utf-8-sig: Windows editors start UTF-8 files with a byte-order mark, which TOML and JSON refuse
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MulaError(f"config file {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}); "
                        "save it as UTF-8") from None
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MulaError(f"config file {path} is not valid TOML ({exc})") from None
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MulaError(f"reading {path} needs PyYAML (`pip install pyyaml`); or write the config as TOML") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise MulaError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    elif path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MulaError(f"config file {path} is not valid JSON ({exc})") from None
    else:
        raise MulaError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    if not isinstance(raw, dict):
        raise MulaError(f"config file {path} must hold a table of option = value pairs")
    known = set(field_names())
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise MulaError(f"config file {path}: unknown option '{key}' (known: {', '.join(sorted(known))})")
        out[name] = value
    return out


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check a config-file value against the field's type (ints are accepted for floats)."""
    kind = {f.name: str(f.type) for f in fields(TrainConfig)}[name]
    optional = kind.startswith("Optional[")
    base = _TYPES[kind[9:-1] if optional else kind]
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise MulaError(f"{where}: option '{name}' must be {'an' if base is int else 'a'} {base.__name__}, not {value!r}")


def resolve_config(flags: dict[str, Any], config_file: Optional[Path]) -> TrainConfig:
    """Defaults, then the config file, then the flags the user actually gave (not None)."""
    values: dict[str, Any] = {}
    given = {k: v for k, v in flags.items() if v is not None}
    if config_file:
        values = {k: _coerce(k, v, str(config_file)) for k, v in read_config_file(config_file).items()}
        try:  # a value the file sets (and no flag overrides) is the file's error: name the file
            TrainConfig(**{k: v for k, v in values.items() if k not in given})
        except MulaError as exc:
            raise MulaError(f"config file {config_file}: {exc}") from None
    values.update(given)
    return TrainConfig(**values)
