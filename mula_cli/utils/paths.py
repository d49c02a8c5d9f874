"""Where mula keeps things: ``MULA_HOME`` (caches, user manifest overrides)."""

from __future__ import annotations

import os
from pathlib import Path


def mula_home() -> Path:
    """The root of mula's own files: ``$MULA_HOME``, default ``~/.cache/mula``."""
    return Path(os.environ.get("MULA_HOME") or "~/.cache/mula").expanduser()


def data_dir() -> Path:
    """Folder holding the prepared HDF5 caches."""
    return mula_home() / "data"


def default_cache_path(dataset: str) -> Path:
    """Where ``mula prepare <dataset>`` writes its cache when ``--out`` is not given."""
    return data_dir() / f"{dataset}.h5"


def user_manifest_dir() -> Path:
    """Folder whose ``<name>.json`` files override the built-in dataset manifests."""
    return mula_home() / "manifests"
