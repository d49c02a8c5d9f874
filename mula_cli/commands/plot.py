"""``mula plot``: training runs' ``metrics.csv`` drawn as ``results.png``, several runs in the same panels."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mula_cli.utils.console import out
from mula_cli.utils.errors import MulaError


def plot(
    runs: list[Path] = typer.Argument(..., help="Training run folders (runs/train/exp ...) or their metrics.csv files; several are drawn in the same panels, one colour each."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="The PNG to write. Default: RUN/results.png for one run, runs/plot/expN/results.png for several."),
) -> None:
    """Draw training runs' losses, learning rate, speed, validation scores and loss balance over the epochs."""
    from mula_cli.plots.figures import MatplotlibMissing, require_matplotlib
    from mula_cli.plots.training import RESULTS, draw_results, read_metrics
    from mula_cli.utils.files import next_dir

    tables = [read_metrics(run) for run in runs]  # a bad path: one line, exit 2
    try:
        require_matplotlib()
    except MatplotlibMissing as exc:
        raise MulaError(f"mula plot needs matplotlib: {exc}") from None
    if out_path is not None and out_path.suffix.lower() != ".png":
        raise MulaError(f"--out {out_path} must name a .png file")
    folders = [run if run.is_dir() else run.parent for run in runs]
    names = [folder.name for folder in folders]
    if len(set(names)) < len(names):  # runs/a/exp and runs/b/exp: tell them apart by their paths
        names = [str(folder) for folder in folders]
    if out_path is None:
        out_path = (folders[0] if len(runs) == 1 else next_dir(Path("runs/plot"))) / RESULTS
    try:
        written = draw_results(list(zip(names, tables)), out_path)
    except OSError as exc:
        raise MulaError(f"cannot write {out_path} ({exc.strerror or exc}); pick another --out") from None
    out.print(f"wrote {written} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
