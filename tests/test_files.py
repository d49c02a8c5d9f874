"""One atomic writer for every file mula writes, and one allocator of output folders."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mula_cli.utils.files import atomic_write, finite_json, next_dir, write_json


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"
    assert atomic_write(path, lambda temp: temp.write_text("one")) == path
    assert path.read_text() == "one"
    atomic_write(path, lambda temp: temp.write_text("two"))
    assert path.read_text() == "two" and sorted(p.name for p in path.parent.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("error", [ValueError("bad result"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def half_then_fail(temp: Path) -> None:
        temp.write_text("half")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_json_without_nan(tmp_path: Path) -> None:
    doc = {"a": float("nan"), "b": [1.5, float("inf")], "c": (2, {"d": -float("inf")}), "e": Path("x")}
    assert finite_json(doc)["b"] == [1.5, None]
    write_json(tmp_path / "m.json", doc)
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5, None], "c": [2, {"d": None}],
                                                              "e": "x"}


def test_next_dir_counts_up_and_creates_the_folder(tmp_path: Path) -> None:
    made = [next_dir(tmp_path / "runs").name for _ in range(3)]
    assert made == ["exp", "exp2", "exp3"] and all((tmp_path / "runs" / n).is_dir() for n in made)
    assert next_dir(tmp_path / "runs", "exp2").name == "exp4"  # a trailing number is the counter
    assert next_dir(tmp_path / "runs", "ablation").name == "ablation"
    assert next_dir(tmp_path / "runs", "ablation").name == "ablation2"


def test_atomic_write_flushes_the_file_before_the_rename_and_the_folder_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """m9: a crash after atomic_write returns must not leave an empty file (the write is by path, as
    torch.save and h5py write)."""
    path = tmp_path / "last.pt"
    flushed: list[tuple[int, bool, bool]] = []  # (inode, a folder, path there yet) at each fsync
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        info = os.fstat(fd)
        flushed.append((info.st_ino, stat.S_ISDIR(info.st_mode), path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write(path, lambda temp: temp.write_bytes(b"weights"))
    file_inode, folder_inode = path.stat().st_ino, tmp_path.stat().st_ino
    assert (file_inode, False, False) in flushed  # the new file, before it replaced path
    if os.name == "posix":
        assert (folder_inode, True, True) in flushed  # the folder, after the rename


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


@pytest.mark.skipif(os.name != "posix", reason="liveness is checked with os.kill(pid, 0)")
def test_a_dead_writers_partial_is_removed_but_never_a_live_ones(tmp_path: Path) -> None:
    """m9: a SIGKILLed writer's temporary file goes; a live process's stays, and so does another host's
    until it has been left for a day (a shared file system: its pid means nothing here)."""
    from mula_cli.utils.files import _HOST, remove_stale_partials

    atomic_write(tmp_path / "first.json", lambda temp: temp.write_text(json.dumps([temp.name])))
    assert json.loads((tmp_path / "first.json").read_text()) == [f".first.json.{_HOST}-{os.getpid()}.partial"]
    old = time.time() - 2 * 86400
    dead = tmp_path / f".last.pt.{_HOST}-{_dead_pid()}.partial"
    live = tmp_path / f".last.pt.{_HOST}-{os.getppid()}.partial"
    elsewhere_recent = tmp_path / f".best.pt.node17-{_dead_pid()}.partial"
    elsewhere_old = tmp_path / f".best.pt.node18-{_dead_pid()}.partial"
    other = tmp_path / ".notes.partial"  # not one of ours
    for partial in (dead, live, elsewhere_recent, elsewhere_old, other):
        partial.write_bytes(b"half")
    os.utime(elsewhere_old, (old, old))
    assert sorted(remove_stale_partials(tmp_path)) == sorted([dead, elsewhere_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["first.json", live.name, elsewhere_recent.name, other.name])
