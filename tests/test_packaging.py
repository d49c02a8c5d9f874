"""The package installs as a plain wheel with its manifests, and its entry points work."""

from __future__ import annotations

import configparser
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mula_cli import __version__

ROOT = Path(__file__).resolve().parent.parent


def test_setup_cfg_lists_every_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mula_cli").rglob("__init__.py")}
    found.add("mula_cli.data_manifests")
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "mula_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mula {__version__}"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="setuptools is needed to build the wheel")
def test_non_editable_wheel_ships_the_manifests_and_the_papers_numbers(tmp_path: Path) -> None:
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheel_dir)],
                   check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("mula-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)], check=True, cwd=tmp_path)
    probe = (
        "import mula_cli, pathlib; from mula_cli.utils.manifests import load_manifest, available_manifests;"
        f"assert pathlib.Path(mula_cli.__file__).resolve().is_relative_to(pathlib.Path(r'{target}').resolve());"
        "print(available_manifests()); print(load_manifest('lip').num_classes, load_manifest('synthetic').num_joints);"
        "from mula_cli.reproduce.paper import paper_tables; print('paper tables', sorted(paper_tables()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "pascal_person_part" in out.stdout and "20 16" in out.stdout
    assert "paper tables [1, 2, 3, 4, 6]" in out.stdout  # the paper's numbers ship too
