"""Writing files without ever leaving half of one: atomic writes, JSON, and new output folders."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all.

    ``write`` fills a temporary file beside ``path`` (named after it and this process, so that two
    processes never share one), which then replaces ``path`` in one rename. If ``write`` raises, or
    the process is interrupted, the temporary file is removed and ``path`` is left as it was. A
    ``write`` that also checks what it wrote (and raises on a bad result) never leaves a bad file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def finite_json(value: Any) -> Any:
    """The same structure with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], doc: Any, indent: int = 2) -> Path:
    """Write ``doc`` as JSON atomically (NaN as null; other values JSON cannot hold as their text)."""
    text = json.dumps(finite_json(doc), indent=indent, default=str) + "\n"
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def next_dir(project: str | os.PathLike[str], name: str | None = None) -> Path:
    """Create and return ``project/name`` (default ``exp``), or the next free ``<name>2``, ``<name>3``, ...

    A trailing number of ``name`` is replaced (``exp2`` taken: ``exp3``). The folder is created here,
    so two processes starting at once never get the same one.
    """
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    base = name or "exp"
    stem = re.sub(r"\d+$", "", base) or base
    for candidate in itertools.chain([base], (f"{stem}{n}" for n in itertools.count(2))):
        try:
            (project / candidate).mkdir()
        except FileExistsError:
            continue
        return project / candidate
    raise AssertionError("unreachable: the candidates never run out")
