"""Rich progress bars shared by every long-running command (prepare, train, evaluate, predict)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mula_cli.utils.console import err, progress_enabled


class RateColumn(ProgressColumn):
    """Items per second, with the unit the task was created with (``unit`` field)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


def make_progress(quiet: bool = False, *extra: ProgressColumn) -> Progress:
    """A progress display on stderr; it draws nothing when quiet or when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        *extra,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=not progress_enabled(quiet),
        transient=False,
    )
