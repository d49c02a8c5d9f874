"""Rich consoles shared by the commands: results to stdout, messages and progress to stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def progress_enabled(quiet: bool = False) -> bool:
    """Whether to draw live progress bars (only on an interactive terminal and when not quiet)."""
    return not quiet and err.is_terminal
