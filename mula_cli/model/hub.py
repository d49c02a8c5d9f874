"""Trained weights known by name (``authors-lip``), cached under ``$MULA_HOME/weights``.

``resolve_weights`` is the one place a ``--weights`` value becomes a path: an existing file or folder is
itself; a known name is its cached ``$MULA_HOME/weights/<name>.pt`` (``mula weights get <name>`` fetches
it), or a one-line MulaError that says to fetch it; anything else is returned as a path for the caller
to report. ``mula_cli.model.weights.read_weights_file`` and the ``Predictor`` call it, so every command
that takes weights takes a known name too.

The rest serves ``mula weights get``: the authors' Google Drive folder is listed with ``gdown`` (the
``weights`` extra), one checkpoint in it is chosen by name (``KnownWeights.prefer``, first found wins),
downloaded, imported like ``mula import-official`` and recorded in ``<name>.json`` beside the ``.pt``:
where it came from, the SHA-256 of the downloaded checkpoint and of the imported weights file, and when.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mula_cli.utils.errors import MulaError
from mula_cli.utils.paths import mula_home

AUTHORS_FOLDER = "https://drive.google.com/drive/folders/1nhMQS6ZJyioJanKm73IozNOduvTZ61Ot"
CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".pkl")


@dataclass(frozen=True)
class KnownWeights:
    """Weights ``mula weights get`` can fetch: a checkpoint in a public folder, chosen by file name."""

    name: str
    title: str
    folder_url: str
    prefer: tuple[str, ...]  # file names in the folder, best first
    sha256: str | None = None  # of the checkpoint, once known: a download that differs is refused


KNOWN: dict[str, KnownWeights] = {
    "authors-lip": KnownWeights(
        name="authors-lip",
        title="the authors' MuLA trained on LIP (NieXC/pytorch-mula's released checkpoint)",
        folder_url=AUTHORS_FOLDER,
        # Their training script's snapshots: the latest (what their run_test.sh evaluates), then the
        # best-PCKh and the best-mIoU ones.
        prefer=("mula_lip.pth.tar", "mula_lip_pose_best.pth.tar", "mula_lip_parsing_best.pth.tar"),
    ),
}


def known(name: str) -> KnownWeights:
    """The entry for ``name``; MulaError listing the known names if there is none."""
    if name not in KNOWN:
        raise MulaError(f"no known weights are called {name!r}; known: {', '.join(KNOWN)}")
    return KNOWN[name]


def weights_dir() -> Path:
    """Folder of the weights fetched by name."""
    return mula_home() / "weights"


def cached_path(name: str) -> Path:
    return weights_dir() / f"{name}.pt"


def record_path(name: str) -> Path:
    """The JSON record beside the cached weights (source, file names, SHA-256s, date)."""
    return weights_dir() / f"{name}.json"


def resolve_weights(weights: str | os.PathLike[str]) -> Path:
    """The weights file ``weights`` names: a path as given, or a known name's cached file.

    A path that exists wins over a known name of the same spelling.

    Raises:
        MulaError: ``weights`` is a known name whose weights are not fetched yet.
    """
    path = Path(weights)
    name = os.fspath(weights)
    if name in KNOWN and not path.exists():
        cached = cached_path(name)
        if not cached.is_file():
            raise MulaError(f"the {name} weights are not downloaded yet; run `mula weights get {name}` first")
        return cached
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(name: str) -> dict[str, Any] | None:
    """The record of a cached name, or None when it is missing or unreadable."""
    try:
        record = json.loads(record_path(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# --- the download (gdown) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """A file of a shared folder: its path inside the folder and the URL that downloads it."""

    path: str
    url: str

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


class DownloadError(Exception):
    """The folder could not be listed or the file not downloaded (offline, refused, quota...)."""


def _gdown() -> Any:
    try:
        import gdown
    except ImportError:
        raise DownloadError("gdown is not installed: pip install 'mula[weights]'") from None
    return gdown


# What the errors of a machine without a connection say, somewhere in requests' long messages.
_OFFLINE = ("Failed to resolve", "Name or service not known", "Temporary failure in name resolution",
            "Network is unreachable", "Connection refused", "timed out")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    offline = next((words for words in _OFFLINE if words in text), None)
    if offline is not None:
        return f"{type(exc).__name__}: {offline.lower()}; is this machine offline?"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def list_folder(url: str) -> list[RemoteFile]:
    """Every file of the public Drive folder ``url`` (subfolders included), without downloading any."""
    gdown = _gdown()
    options: dict[str, Any] = {"skip_download": True, "quiet": True}
    if "remaining_ok" in inspect.signature(gdown.download_folder).parameters:
        options["remaining_ok"] = True  # gdown 5 stops at 50 files unless told to list what it can
    try:
        entries = gdown.download_folder(url=url, **options)
    except Exception as exc:  # noqa: BLE001 - gdown and requests raise many types when Drive refuses
        raise DownloadError(f"listing the folder failed ({_reason(exc)})") from None
    if not entries:
        raise DownloadError("the folder listing came back empty")
    return [RemoteFile(path=PurePosixPath(*Path(e.path).parts).as_posix(), url=f"https://drive.google.com/uc?id={e.id}")
            for e in entries]


def download(remote: RemoteFile, dest: Path, quiet: bool = False) -> Path:
    """Download ``remote`` to ``dest`` with gdown (Drive's confirmation pages handled)."""
    gdown = _gdown()
    try:
        got = gdown.download(url=remote.url, output=str(dest), quiet=quiet)
    except Exception as exc:  # noqa: BLE001 - see list_folder
        raise DownloadError(f"downloading {remote.path} failed ({_reason(exc)})") from None
    if got is None or not dest.is_file():
        raise DownloadError(f"downloading {remote.path} failed (gdown returned no file)")
    return dest


def choose(files: list[RemoteFile], entry: KnownWeights, pick: str | None = None) -> RemoteFile:
    """The checkpoint to fetch: ``pick`` (a file name or path in the folder), else the first of
    ``entry.prefer`` present, else the folder's only checkpoint-like file."""
    checkpoints = [f for f in files if PurePosixPath(f.name).suffix.lower() in CHECKPOINT_SUFFIXES]
    listing = ", ".join(f.path for f in (checkpoints or files)[:12])
    if pick is not None:
        matches = [f for f in files if pick in (f.path, f.name)]
        if not matches:
            raise MulaError(f"the folder {entry.folder_url} has no file {pick!r}; it has: {listing}")
    else:
        matches = next(([f for f in checkpoints if f.name == want] for want in entry.prefer
                        if any(f.name == want for f in checkpoints)), checkpoints if len(checkpoints) == 1 else [])
        if not matches:
            raise MulaError(f"the folder {entry.folder_url} holds none of {', '.join(entry.prefer)} (it has: "
                            f"{listing or 'no files'}); choose one with --pick NAME")
    if len(matches) > 1:
        raise MulaError(f"the folder {entry.folder_url} holds {matches[0].name} more than once "
                        f"({', '.join(f.path for f in matches)}); choose one with --pick PATH")
    return matches[0]
