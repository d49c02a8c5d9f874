"""The run directory: ``runs/train/<name>`` with config.json, metrics.csv, weights/ and vis/.

Names auto-increment (``exp``, ``exp2``, ...). ``metrics.csv`` has one row per epoch and is
rewritten atomically after each epoch, so a crash never leaves half a row and a resumed run drops
the rows of epochs it repeats.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mula_cli import __version__


def new_run_dir(project: Path, name: str | None) -> Path:
    """Create ``project/name`` (or the next free ``exp``, ``exp2``, ...) and its sub-folders."""
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    base = name or "exp"
    candidate = project / base
    if candidate.exists():
        stem = re.sub(r"\d+$", "", base) or base
        taken = {p.name for p in project.iterdir()}
        n = 2
        while f"{stem}{n}" in taken:
            n += 1
        candidate = project / f"{stem}{n}"
    (candidate / "weights").mkdir(parents=True)
    (candidate / "vis").mkdir()
    return candidate


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON atomically."""
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temp, path)


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded in config.json."""
    import torch

    env: dict[str, Any] = {
        "mula": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "argv": sys.argv,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
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
        temp = self.path.with_name(f".{self.path.name}.partial")
        temp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(temp, self.path)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
