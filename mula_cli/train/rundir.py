"""The run directory: ``runs/train/<name>`` with config.json, metrics.csv, weights/ and vis/.

Names auto-increment (``exp``, ``exp2``, ...). ``metrics.csv`` has one row per epoch and is
rewritten atomically after each epoch, so a crash never leaves half a row and a resumed run drops
the rows of epochs it repeats.
"""

from __future__ import annotations

import csv
import io
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from mula_cli.utils.files import atomic_write, next_dir
from mula_cli.utils.version import __version__


def new_run_dir(project: Path, name: str | None) -> Path:
    """Create ``project/name`` (or the next free ``exp``, ``exp2``, ...) and its sub-folders."""
    run = next_dir(project, name)
    (run / "weights").mkdir()
    (run / "vis").mkdir()
    return run


def resumed_run_dir(extra: dict[str, Any], checkpoint: Path) -> Path | None:
    """The run directory a checkpoint was saved in (recorded inside it), or None when that folder is gone.

    Never guessed from where the file lies: a ``last.pt`` copied elsewhere still belongs to its run.
    """
    recorded = extra.get("run_dir")
    if not recorded or not Path(recorded).is_dir():
        return None
    run = Path(recorded)
    (run / "weights").mkdir(exist_ok=True)
    (run / "vis").mkdir(exist_ok=True)
    return run


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded in config.json."""
    import torch

    env: dict[str, Any] = {
        "mula": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "argv": sys.argv,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                                cwd=Path(__file__).resolve().parent)
        if commit.returncode == 0:
            env["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # no git, or not a checkout: the run records no commit
    return env


class MetricsLog:
    """``metrics.csv``: a fixed set of columns, one row per epoch."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.columns = columns
        self.rows: list[dict[str, Any]] = []

    def load_until(self, epoch: int) -> None:
        """Keep the rows of epochs up to ``epoch`` from an existing file (resuming)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="", encoding="utf-8") as f:
            self.rows = [row for row in csv.DictReader(f) if row.get("epoch") and int(row["epoch"]) <= epoch]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        atomic_write(self.path, lambda temp: temp.write_text(buf.getvalue(), encoding="utf-8"))


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
