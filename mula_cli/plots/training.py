"""``results.png``: a training run's ``metrics.csv`` as small panels over the same epoch axis.

One panel per quantity: each stage's pose and parsing (and offset) losses, the learning rate, the
throughput, validation mIoU and PCKh (or pose mAP), and the loss-balance ratios: the gradient each
stage's parsing (or offset) loss sends into a stream's shared parts over the gradient its pose loss
sends there (1 = balanced; see the README's *Loss balance*). Several runs share the panels
for comparison (``mula plot RUN RUN ...``), one colour per run.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mula_cli.plots.figures import Plotter, finite, new_figure, save_png
from mula_cli.utils.errors import MulaError

Rows = Sequence[Mapping[str, Any]]
RESULTS = "results.png"
_STYLES = ("-", "--", ":", "-.")
_GRAD = re.compile(r"s(?P<stage>\d+)_(?P<task>[a-z]+)_grad_(?P<stream>[a-z]+)")


@dataclass
class _Panel:
    title: str
    series: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = field(default_factory=list)
    log: bool = False
    unity: bool = False  # a reference line at 1 (the balance ratios)


def read_metrics(run: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv``; ``run`` is the run folder or the file itself."""
    path = Path(run)
    csv_path = path / "metrics.csv" if path.is_dir() else path
    if not csv_path.is_file():
        what = "has no metrics.csv" if path.is_dir() else "does not exist"
        raise MulaError(f"{path} {what}; give a training run folder such as runs/train/exp")
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MulaError(f"{csv_path} cannot be read as a metrics table ({exc})") from None
    if not rows or "epoch" not in rows[0]:
        raise MulaError(f"{csv_path} has no epochs yet (no rows with an 'epoch' column)")
    return rows


def _column(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: row.get(name)


def _ratio(top: str, bottom: str) -> Callable[[Mapping[str, Any]], Any]:
    def value(row: Mapping[str, Any]) -> float:
        a, b = finite([row.get(top), row.get(bottom)])
        return a / b if b > 0 else math.nan

    return value


def _panels(columns: list[str]) -> list[_Panel]:
    """The panels the columns of the runs can fill, in a fixed order; stages and streams from the names."""
    stages = sorted({int(m[1]) for c in columns if (m := re.fullmatch(r"s(\d+)_[a-z]+", c))})
    panels = []
    for task, title in (("pose", "pose loss"), ("parsing", "parsing loss"), ("offsets", "offset loss")):
        series = [(f"stage {t}", _column(f"s{t}_{task}")) for t in stages if f"s{t}_{task}" in columns]
        if series:
            panels.append(_Panel(title, series, log=True))
    for name, title, log in (("lr", "learning rate", True), ("images_per_s", "images / s", False),
                             ("val_miou", "val mIoU (%)", False), ("val_pckh", "val PCKh@0.5 (%)", False),
                             ("val_map", "val pose mAP (%)", False)):
        if name in columns:
            panels.append(_Panel(title, [(name, _column(name))], log=log))
    ratios = _Panel("gradient ratio task / pose, per stream", log=True, unity=True)
    for column in columns:
        m = _GRAD.fullmatch(column)
        if m and m["task"] != "pose" and f"s{m['stage']}_pose_grad_{m['stream']}" in columns:
            ratios.series.append((f"s{m['stage']} {m['task']} → {m['stream']}",
                                  _ratio(column, f"s{m['stage']}_pose_grad_{m['stream']}")))
    if ratios.series:
        panels.append(ratios)
    return panels


def draw_results(runs: Sequence[tuple[str, Rows]], path: Path) -> Path:
    """Draw the runs' metrics into one figure of small panels (shared epoch axis) and write it to ``path``.

    Args:
        runs: (label, rows of metrics.csv) per run; rows may hold numbers or the CSV's text.
        path: the PNG to write (atomically).
    """
    columns: list[str] = []
    for _, rows in runs:
        for row in rows:
            columns += [k for k in row if k not in columns]
    panels = _panels(columns)
    if not panels:
        raise ValueError("the metrics have no columns to plot")
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = new_figure(3.1 * ncols, 2.2 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
    colours = [f"C{i % 10}" for i in range(max(len(runs), 10))]
    several = len(runs) > 1
    for ax, panel in zip(axes.flat, panels):
        for r, (_, rows) in enumerate(runs):
            epochs = finite([row.get("epoch") for row in rows])
            for s, (label, value) in enumerate(panel.series):
                points = [(x, y) for x, y in zip(epochs, finite([value(row) for row in rows]))
                          if math.isfinite(x) and math.isfinite(y) and (y > 0 or not panel.log)]
                if not points:
                    continue
                xs, ys = zip(*points)
                # one run: a colour per stage; several: a colour per run and a line style per stage
                colour = colours[r] if several else colours[s]
                style = _STYLES[s % len(_STYLES)] if several else "-"
                ax.plot(xs, ys, style, color=colour, lw=1.2, label=label if r == 0 else None,
                        marker="o" if len(xs) <= 20 else None, ms=2.5)
        if panel.unity:
            ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        if panel.log and ax.lines:
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(which="both", labelsize=6)
        ax.grid(alpha=0.3, lw=0.5)
        if len(panel.series) > 1 and ax.lines:
            ax.legend(fontsize=5, ncol=2 if len(panel.series) > 4 else 1, handlelength=2.5, frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=7)
    axes[0][0].xaxis.get_major_locator().set_params(integer=True)
    if several:
        handles = [axes[0][0].plot([], [], color=colours[r], lw=2)[0] for r in range(len(runs))]
        fig.legend(handles, [name for name, _ in runs], loc="upper center", ncol=min(len(runs), 4),
                   fontsize=7, frameon=False)
    else:
        fig.suptitle(runs[0][0], fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1 if nrows == 1 else 0.07,
                        top=1 - 0.55 / fig.get_figheight(), hspace=0.45, wspace=0.28)
    return save_png(fig, path)


class ResultsPlot:
    """Redraws a run's ``results.png`` after its epochs, at most a twentieth of the run's time.

    A real epoch takes minutes and a redraw about half a second, so every epoch redraws; a run of
    one-step epochs (an overfit check: 500 epochs in a minute) would otherwise spend most of its time
    drawing. Epochs with validation and the last one always redraw, so the picture ends complete.
    """

    SHARE = 0.05

    def __init__(self, run_dir: Path, plotter: Plotter) -> None:
        self.path = Path(run_dir) / RESULTS
        self.label = Path(run_dir).name
        self.plotter = plotter
        self._cost = 0.0
        self._done_at = -math.inf

    def update(self, rows: Rows, *, force: bool = False) -> Path | None:
        """Redraw from ``rows`` (every epoch so far) unless that would overrun the time share."""
        if not self.plotter.enabled:
            return None
        start = time.perf_counter()
        if not force and start - self._done_at < self._cost / self.SHARE:
            return None
        written = self.plotter(RESULTS, draw_results, [(self.label, rows)], self.path)
        self._done_at = time.perf_counter()
        self._cost = self._done_at - start
        return written
