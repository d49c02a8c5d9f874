"""Shared test set-up: every test gets its own MULA_HOME so nothing touches the user's caches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the tree builders in tests/trees.py


@pytest.fixture(autouse=True)
def isolated_mula_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("mula_home")
    monkeypatch.setenv("MULA_HOME", str(home))
    monkeypatch.setenv("MULA_PLOTS", "0")  # no plots (a second a run) unless a test asks: tests/test_plots.py
    monkeypatch.delenv("MULA_DYNCONV", raising=False)
    dynconv = sys.modules.get("mula_cli.ops.dynconv")
    if dynconv is not None:  # it reads MULA_DYNCONV once: forget what an earlier test set
        dynconv.set_dispatch_mode()
    return home


@pytest.fixture(autouse=True)
def single_thread():
    """Tests run tiny tensors, where OpenMP threads only add contention (10-50x slower on a busy
    2-core machine): one thread in the test process (subprocess tests set OMP_NUM_THREADS)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    """The environment of a ``python -m mula_cli`` subprocess: one thread (tiny tensors), unbuffered output."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str) -> object:
    """Run ``mula ARGS`` in-process with Typer's runner and return the result (exit code, output)."""
    from typer.testing import CliRunner

    from mula_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def synthetic_cache(root: Path, train: int, val: int) -> Path:
    """A tiny synthetic dataset made the way users make one: `mula prepare synthetic` (tree and cache in ``root``)."""
    result = run_cli("prepare", "synthetic", root / "tree", "--train", str(train), "--val", str(val), "--test", "0",
                     "--out", root / "synthetic.h5", "-q")
    assert result.exit_code == 0, result.output
    return root / "synthetic.h5"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of an untrained hg-tiny (width 16) for LIP, with BN statistics that look trained
    (the defaults would make every stage amplify its input)."""
    import torch

    from mula_cli.model.presets import build_model
    from mula_cli.model.weights import save_weights
    from mula_cli.utils.manifests import load_manifest

    lip = load_manifest("lip")
    torch.manual_seed(0)
    model = build_model("hg-tiny", num_classes=20, num_joints=16, width=16, class_names=lip.classes,
                        joint_names=lip.joints)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.5)
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_weights(path, model, extra={"manifest": lip.to_json()})
    return path
