"""Every entry of the bad-input corpus (tests/bad_inputs.py) fed to the command a user would run.

Outcomes (see bad_inputs.py): ``processed`` = exit 0 and right outputs; ``skipped`` = named with its
reason in a many-input call that still processes the rest and exits 1; ``refused`` = one ``error:``
line naming the file, exit 2. Never a traceback.

The pictures go through one ``mula predict <folder>`` call together; each video, weights file, cache
and config file gets its own call. Calls run in-process (``run_cli``): an unhandled exception would
show as ``result.exception`` rather than as a printed traceback, and is checked for as such.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import (
    CACHE,
    CONFIG,
    EVALUATE,
    PICTURE,
    PREDICT,
    PROCESSED,
    REFUSED,
    SKIPPED,
    TINY_RECIPE,
    TINY_TRAIN_FLAGS,
    TRAIN,
    VIDEO,
    WEIGHTS,
    BadInput,
    specs,
    write_corpus,
)
from PIL import Image

from conftest import run_cli
from trees import build_lip_cache


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lip_cache(tmp_path_factory.mktemp("good_cache"), {"train": 2, "val": 2}, seed=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path,
           good_cache: Path) -> dict[tuple[str, str], BadInput]:
    entries = write_corpus(tmp_path_factory.mktemp("corpus"), weights=tiny_weights, cache=good_cache)
    return {(e.kind, e.name): e for e in entries}


def _cases(kind: str) -> list:
    """(name, command) per entry and command it is fed to."""
    return [pytest.param(spec.name, command, id=f"{spec.name}-{command}")
            for spec in specs([kind]) for command in spec.facts["commands"]]


_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # Python's defaults


def _cli(*args: object):
    """``run_cli`` recording the warnings a user's terminal would show (as ``result.warned``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli(*args)
    result.warned = [f"{w.category.__name__}: {w.message}" for w in caught
                     if not issubclass(w.category, _HIDDEN)]
    return result


def _no_traceback(result) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        trace = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"unhandled {type(result.exception).__name__}:\n{result.output}\n{trace}")
    assert "Traceback" not in result.output, result.output
    assert not result.warned, result.warned  # a library's warning prints its source line too


def _check_refused(result, entry: BadInput) -> str:
    """One ``error:`` line that names the file (and says what the entry says), exit 2; returns the line."""
    _no_traceback(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, f"exit {result.exit_code}:\n{result.output}"
    assert entry.path.name in errors[0], errors[0]
    if entry.says:
        assert entry.says.lower() in errors[0].lower(), errors[0]
    return errors[0]


def _check_processed(result) -> None:
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "error:" not in result.output, result.output


# --------------------------------------------------------------------------------------------- pictures


@pytest.fixture(scope="module")
def picture_run(corpus, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """One `mula predict <folder>` over every picture entry."""
    folder = next(e.path.parent for e in corpus.values() if e.kind == PICTURE)
    out = tmp_path_factory.mktemp("predicted")
    return _cli("predict", folder, "--weights", tiny_weights, "--out-dir", out, "-q"), out


def test_the_picture_folder_goes_on_past_every_bad_picture_and_exits_1(corpus, picture_run) -> None:
    result, out = picture_run
    _no_traceback(result)
    pictures = [e for e in corpus.values() if e.kind == PICTURE]
    processed = [e for e in pictures if e.outcome == PROCESSED]
    skipped = [e for e in pictures if e.outcome == SKIPPED]
    assert len(processed) >= 20 and len(skipped) >= 10
    assert result.exit_code == 1, result.output
    assert f"{len(processed)} image(s) predicted" in result.output
    assert f"{len(skipped)} file(s) could not be read" in result.output
    assert len(list(out.glob("*.png"))) == len(processed)


@pytest.mark.parametrize(("name", "command"), _cases(PICTURE))
def test_picture(name: str, command: str, corpus, picture_run) -> None:
    from mula_cli.utils.manifests import load_manifest

    entry = corpus[(PICTURE, name)]
    result, out = picture_run
    stem = Path(name).stem
    if entry.outcome == SKIPPED:
        lines = [line for line in result.output.splitlines() if line.startswith("skipped") and name in line]
        assert len(lines) == 1, result.output
        if entry.says:
            assert entry.says.lower() in lines[0].lower(), lines[0]
        assert not [p for p in out.iterdir() if p.name.startswith(stem)], "a skipped picture left outputs"
        return
    assert entry.outcome == PROCESSED
    width, height = entry.size
    labels = Image.open(out / f"{stem}.png")
    assert labels.size == (width, height) and labels.mode == "P"
    assert np.asarray(labels).max() < 20
    doc = json.loads((out / f"{stem}.json").read_text())
    assert (doc["width"], doc["height"]) == (width, height)
    lip = load_manifest("lip")
    assert [j["name"] for j in doc["joints"]] == list(lip.joints)
    for joint in doc["joints"]:
        assert 0 <= joint["x"] <= width - 1 and 0 <= joint["y"] <= height - 1
    assert Image.open(out / f"{stem}_overlay.jpg").size == (width, height)


# --------------------------------------------------------------------------------------------- videos


@pytest.mark.parametrize(("name", "command"), _cases(VIDEO))
def test_video(name: str, command: str, corpus, tiny_weights: Path, tmp_path: Path) -> None:
    from videos import read_video

    entry = corpus[(VIDEO, name)]
    vis, pose = tmp_path / "overlay.mp4", tmp_path / "poses.jsonl"
    result = _cli("predict", entry.path, "--weights", tiny_weights, "--vis", vis, "--pose", pose, "-q")
    records = [json.loads(line) for line in pose.read_text().splitlines()] if pose.exists() else []
    if entry.outcome == REFUSED:
        line = _check_refused(result, entry)
        if vis.exists():  # whatever was written is whole: a playable video, one frame per record
            assert len(read_video(vis)[0]) == len(records)
        if entry.partial:  # "ends after 12 frames ..." / "could not be decoded after frame 16 ..."
            decoded = int(re.search(r"after (?:frame )?(\d+)", line).group(1))
            assert 0 < len(records) <= decoded and [r["frame"] for r in records] == list(range(len(records)))
            assert len(records) == decoded, "frames decoded before the damage were not predicted"
        return
    _check_processed(result)
    assert [r["frame"] for r in records] == list(range(entry.frames))
    sizes = list(dict.fromkeys((r["width"], r["height"]) for r in records))  # each frame's own (upright) size
    assert sizes == list(entry.sizes or (entry.size,))
    frames, _, _ = read_video(vis)
    width, height = entry.size  # the overlay keeps the first frame's size, each side made even for 4:2:0
    assert len(frames) == entry.frames
    assert {f.shape[:2] for f in frames} == {(height + height % 2, width + width % 2)}


# --------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize(("name", "command"), _cases(WEIGHTS))
def test_weights(name: str, command: str, corpus, good_cache: Path, tmp_path: Path) -> None:
    entry = corpus[(WEIGHTS, name)]
    if command == PREDICT:
        picture = corpus[(PICTURE, "good_photo.jpg")].path
        result = _cli("predict", picture, "--weights", entry.path, "--out", tmp_path / "labels.png", "-q")
    else:
        assert command == EVALUATE
        result = _cli("evaluate", entry.path, "--data", good_cache, "--workers", "1",
                      "--save-dir", tmp_path / "ev")
    assert entry.outcome == REFUSED
    _check_refused(result, entry)
    if entry.marker is not None:
        assert not entry.marker.exists(), "loading the weights ran code from the file"
    assert not (tmp_path / "labels.png").exists() and not (tmp_path / "ev").exists()


# --------------------------------------------------------------------------------------------- caches


def _check_trained(project: Path) -> None:
    run = project / "exp"
    assert (run / "weights" / "last.pt").is_file() and (run / "weights" / "best.pt").is_file()
    train = json.loads((run / "config.json").read_text())["train"]
    for key, value in TINY_RECIPE.items():
        assert train[key.replace("-", "_")] == value, key


@pytest.mark.parametrize(("name", "command"), _cases(CACHE))
def test_cache(name: str, command: str, corpus, tiny_weights: Path, tmp_path: Path) -> None:
    entry = corpus[(CACHE, name)]
    if command == TRAIN:
        result = _cli("train", "--data", entry.path, *TINY_TRAIN_FLAGS, "--project", tmp_path / "runs", "-q")
    else:
        assert command == EVALUATE
        result = _cli("evaluate", tiny_weights, "--data", entry.path, "--workers", "1",
                      "--save-dir", tmp_path / "ev")
    if entry.outcome == REFUSED:
        _check_refused(result, entry)
        return
    _check_processed(result)
    if command == TRAIN:
        _check_trained(tmp_path / "runs")
    else:
        assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["images"] == 2


# --------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(("name", "command"), _cases(CONFIG))
def test_config(name: str, command: str, corpus, good_cache: Path, tmp_path: Path) -> None:
    entry = corpus[(CONFIG, name)]
    assert command == TRAIN
    result = _cli("train", "--config", entry.path, "--data", good_cache, "--project", tmp_path / "runs", "-q")
    if entry.outcome == REFUSED:
        _check_refused(result, entry)
        assert not (tmp_path / "runs").exists()
        return
    _check_processed(result)
    _check_trained(tmp_path / "runs")


def test_the_corpus_is_big_and_every_entry_states_one_outcome(corpus) -> None:
    entries = list(corpus.values())
    bad = [e for e in entries if "control" not in e.description]
    assert len(bad) >= 40
    assert {e.kind for e in entries} >= {PICTURE, WEIGHTS, CACHE, CONFIG}
    for e in entries:
        assert e.outcome in (PROCESSED, SKIPPED, REFUSED) and e.description
        assert e.path.exists() or e.path.is_symlink()
        assert e.outcome != SKIPPED or e.kind == PICTURE  # only a many-input call skips
        assert e.outcome != PROCESSED or e.kind not in (PICTURE, VIDEO) or e.size is not None
