"""The model weights file: tensors plus a plain-dict config, loadable with ``weights_only=True``.

Layout (``torch.save`` of one dict)::

    {"format": "mula-weights", "format_version": 1,
     "config": MulaConfig.to_dict(),      # preset, variant, stages, classes/joints, normalisation...
     "state_dict": {name: tensor},        # learned tensors and BN statistics only
     "extra": {"mula_version": ..., ...}} # e.g. the dataset manifest JSON, training metrics

Everything but the tensors is a plain Python value, so loading never unpickles code and
predict / evaluate / export need nothing but this file.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mula_cli.model.config import MulaConfig
from mula_cli.model.hub import resolve_weights
from mula_cli.model.mula import MuLA
from mula_cli.utils.errors import MulaError
from mula_cli.utils.files import atomic_write
from mula_cli.utils.version import __version__

FORMAT = "mula-weights"
FORMAT_VERSION = 1
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back (NumPy scalars, objects)."""
    # Exact types: np.float64 subclasses float and a namedtuple subclasses tuple, but neither
    # unpickles without allowing its class.
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; weights files hold only plain values and tensors")


def describe_load_error(exc: BaseException) -> str:
    """One short clause for why ``torch.load(weights_only=True)`` refused a file (its messages run long)."""
    text = " ".join(str(exc).split())
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return f"it holds a pickled {unsafe.group(1)}, which is neither a tensor nor a plain value"
    unpickler = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    if unpickler and unpickler.group(1).strip():
        return f"not a PyTorch file: {unpickler.group(1).strip()[:80]}"
    first = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return first[:120] or type(exc).__name__


def _unwrap(model: nn.Module) -> MuLA:
    # torch.compile wraps the model in `_orig_mod`, DistributedDataParallel in `module`.
    for attribute in ("_orig_mod", "module"):
        model = getattr(model, attribute, model)
    if not isinstance(model, MuLA):
        raise TypeError(f"save_weights needs a MuLA model, got {type(model).__name__}")
    return model


def save_weights(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    extra: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (config + tensors) and ``extra`` atomically (temp file, then rename).

    ``training`` (optimiser state, run position; see mula_cli.train.checkpoint) makes the file a
    resumable checkpoint; readers of weights ignore it.

    Returns:
        The path written.
    """
    path = Path(path)
    mula = _unwrap(model)
    extra = {"mula_version": __version__, **(extra or {})}
    _check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": mula.config.to_dict(),
        "state_dict": {name: t.detach().cpu() for name, t in mula.state_dict().items()},
        "extra": extra,
    }
    if training is not None:
        payload["training"] = training
    return atomic_write(path, lambda temp: torch.save(payload, temp))


def read_weights_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """The raw payload of a weights file (or of a known name's cached one, such as ``authors-lip``),
    checked to be ours; MulaError (naming the file) if not."""
    path = resolve_weights(path)
    if path.is_dir():  # a run's folder: its weights are in weights/best.pt
        inside = next((p for p in (path / "weights" / "best.pt", path / "best.pt") if p.is_file()), None)
        hint = f"did you mean {inside}?" if inside else "pass the .pt file (a run's weights/best.pt)"
        raise MulaError(f"{path} is a folder, not a weights file; {hint}")
    if not path.is_file():
        raise MulaError(f"weights file {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # torch warns about files it then refuses (old pickle protocols)
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or unsafe pickles
        reason = describe_load_error(exc)
        raise MulaError(
            f"weights file {path} cannot be read ({reason}); is it a complete mula weights file?"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MulaError(
            f"{path} is not a mula weights file "
            f"(for the authors' checkpoints run `mula import-official {path}`)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MulaError(
            f"weights file {path} has format version {version!r}; this mula reads {FORMAT_VERSION}"
        )
    for key, kind in (("config", dict), ("state_dict", dict), ("extra", dict)):
        if not isinstance(payload.get(key), kind):
            raise MulaError(f"weights file {path} has no valid '{key}' entry; it is damaged")
    return payload


def load_weights(
    path: str | os.PathLike[str], map_location: Any = "cpu"
) -> tuple[MuLA, MulaConfig, dict[str, Any]]:
    """Rebuild the model stored in ``path`` (in eval mode, on ``map_location``).

    Returns:
        ``(model, config, extra)``.
    """
    payload = read_weights_file(path, map_location)
    try:
        config = MulaConfig.from_dict(payload["config"])
    except (MulaError, TypeError, ValueError) as exc:
        raise MulaError(f"weights file {path} has an invalid model config ({exc})") from None
    model = MuLA(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:200]
        raise MulaError(f"weights file {path} does not match its own model config ({detail})") from None
    model.to(map_location if map_location is not None else "cpu")
    return model.eval(), config, payload["extra"]
