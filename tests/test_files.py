"""One atomic writer for every file mula writes, and one allocator of output folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mula_cli.files import atomic_write, finite_json, next_dir, write_json


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
