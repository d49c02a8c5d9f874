"""The weights file: round trip, plain contents, atomic writes and refusal of foreign files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mula_cli import __version__
from mula_cli.model.presets import build_model
from mula_cli.model.weights import FORMAT, load_weights, save_weights
from mula_cli.utils.errors import MulaError


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_model("hg-tiny", width=16)
    # Non-default BN statistics, so the round trip has to carry them.
    m.train()
    with torch.no_grad():
        m(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    return m.eval()


def test_round_trip_gives_bit_identical_outputs(tmp_path: Path, model) -> None:
    extra = {"manifest": '{"name": "lip"}', "metrics": {"pckh": 0.5, "miou": [0.1, 0.2]}, "epoch": 3}
    path = save_weights(tmp_path / "w" / "tiny.pt", model, extra=extra)
    assert path.is_file() and not list(path.parent.glob(".*partial"))
    loaded, config, got_extra = load_weights(path)
    assert config == model.config and not loaded.training
    assert got_extra["metrics"] == extra["metrics"] and got_extra["mula_version"] == __version__
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(p, q) for p, q in zip(a.pose + a.parsing, b.pose + b.parsing))


def test_file_holds_only_plain_values_and_tensors(tmp_path: Path, model) -> None:
    path = save_weights(tmp_path / "tiny.pt", model)
    payload = torch.load(path, weights_only=True)  # would raise on any pickled object
    assert payload["format"] == FORMAT and payload["format_version"] == 1
    assert payload["config"]["preset"] == "hg-tiny"
    assert set(payload["state_dict"]) == set(model.state_dict())
    with pytest.raises(TypeError, match="float64"):
        save_weights(tmp_path / "bad.pt", model, extra={"best": np.float64(0.5)})
    assert not (tmp_path / "bad.pt").exists()


def test_missing_corrupt_and_foreign_files_are_refused(tmp_path: Path, model) -> None:
    path = save_weights(tmp_path / "tiny.pt", model)
    with pytest.raises(MulaError, match="does not exist"):
        load_weights(tmp_path / "nope.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MulaError, match=r"truncated\.pt"):
        load_weights(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(MulaError, match=r"garbage\.pt"):
        load_weights(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.raises(MulaError, match="not a mula weights file"):
        load_weights(foreign)
    newer = tmp_path / "newer.pt"
    torch.save({**torch.load(path, weights_only=True), "format_version": 99}, newer)
    with pytest.raises(MulaError, match="format version"):
        load_weights(newer)
    mismatched = tmp_path / "mismatched.pt"
    payload = torch.load(path, weights_only=True)
    payload["config"]["width"] = 32
    torch.save(payload, mismatched)
    with pytest.raises(MulaError, match="does not match"):
        load_weights(mismatched)


class Intruder:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickled_object_is_refused(tmp_path: Path, model, capsys) -> None:
    path = save_weights(tmp_path / "tiny.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["extra"]["intruder"] = Intruder()
    evil = tmp_path / "evil.pt"
    torch.save(payload, evil)
    with pytest.raises(MulaError, match=r"evil\.pt"):
        load_weights(evil)
    assert "must never run" not in capsys.readouterr().out
