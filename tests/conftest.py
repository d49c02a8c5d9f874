"""Shared test set-up: every test gets its own MULA_HOME so nothing touches the user's caches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the tree builders in tests/trees.py


@pytest.fixture(autouse=True)
def isolated_mula_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("mula_home")
    monkeypatch.setenv("MULA_HOME", str(home))
    monkeypatch.delenv("MULA_DYNCONV", raising=False)
    return home


def run_cli(*args: str) -> "object":
    """Run ``mula ARGS`` in-process with Typer's runner and return the result (exit code, output)."""
    from typer.testing import CliRunner

    from mula_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
