"""Writing files without ever leaving half of one: atomic writes, JSON, and new output folders."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all, and durably.

    ``write`` fills a temporary file beside ``path`` (named after it and this process, so that two
    processes never share one), which then replaces ``path`` in one rename. If ``write`` raises, or
    the process is interrupted, the temporary file is removed and ``path`` is left as it was. A
    ``write`` that also checks what it wrote (and raises on a bad result) never leaves a bad file.

    The temporary file is flushed to disk before the rename and the folder after it, so that a power
    loss or a node crash leaves the old file or the new one, never an empty one. ``write`` may write
    the file by its path (``torch.save``, h5py): it is reopened to flush it. A process killed outright
    (SIGKILL, the OOM killer) leaves its temporary file behind: :func:`remove_stale_partials`, which
    the commands run on their output folders when they start, removes it.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.partial")
    try:
        write(temp)
        _fsync_path(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


# Temporary files are named after the host and the process, so that a dead writer's can be told from
# a live one's: by its pid on this host, by age on a shared file system's other hosts.
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_PARTIAL = re.compile(r"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.partial")
OTHER_HOST_STALE_S = 24 * 3600.0  # unchanged this long, another host's temporary file is abandoned


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows flushes writable handles only
    try:
        os.fsync(fd)
    except OSError as error:  # a file system without fsync (some FUSE ones) is no write error
        if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems do not flush folders
            os.fsync(fd)
    finally:
        os.close(fd)


def _process_exists(pid: int) -> bool:
    if os.name != "posix":
        return True  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows: assume alive, keep its file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` that a killed process left in ``folder``
    (and below it, with ``recursive``); return them.

    One is stale when its writer ran on this host and is gone, or on another host and the file has not
    changed for :data:`OTHER_HOST_STALE_S`. A live writer's file is never touched.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        candidates = list(folder.rglob("*.partial") if recursive else folder.glob(".*.partial"))
    except OSError:
        return removed
    for candidate in candidates:
        match = _PARTIAL.fullmatch(candidate.name)
        if match is None:
            continue
        try:
            if match["host"] == _HOST:
                stale = int(match["pid"]) != os.getpid() and not _process_exists(int(match["pid"]))
            else:
                stale = time.time() - candidate.stat().st_mtime >= OTHER_HOST_STALE_S
            if stale:
                candidate.unlink()
                removed.append(candidate)
        except OSError:  # gone already (another process removed it), or not ours to remove
            continue
    return removed


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
