"""Matplotlib without its global state, PNGs written atomically, and the guard that keeps a plot from
failing the command that draws it."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mula_cli.utils.console import err
from mula_cli.utils.files import atomic_write

if TYPE_CHECKING:  # matplotlib is an optional extra
    from matplotlib.figure import Figure

T = TypeVar("T")
INSTALL_HINT = "pip install 'mula[plots]'"
_hinted = False  # the hint to install matplotlib is said once per process (the demo trains, then evaluates)


def plots_wanted() -> bool:
    """Whether to draw when no option says: yes, unless ``MULA_PLOTS`` is 0/false/no/off (as ``--no-plots``;
    the commands' option reads the same variable, library callers such as ``mula reproduce``'s rows this)."""
    return os.environ.get("MULA_PLOTS", "1").strip().lower() not in ("0", "false", "no", "off", "f", "n")


class MatplotlibMissing(ImportError):
    """Plots were asked for but matplotlib is not installed."""


def require_matplotlib() -> None:
    """Raise :class:`MatplotlibMissing` unless matplotlib can be imported (it is, here, the first time)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MatplotlibMissing(f"matplotlib is not installed ({INSTALL_HINT})") from None


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A figure drawn by the Agg canvas, made without pyplot.

    pyplot would pick a GUI backend from the environment and keep every figure in a global list;
    a bare Figure on FigureCanvasAgg does neither, so drawing is safe on a headless server, in a
    library caller's process and after every epoch of a long run.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for pictures embedded in a page)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG atomically: a reader (a browser refreshing it) never sees half of one."""
    data = png_bytes(fig)
    return atomic_write(path, lambda temp: temp.write_bytes(data))


def finite(values: list[Any]) -> list[float]:
    """Floats of a metrics column; blank cells, text and infinities become NaN (a gap in a line)."""
    out = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        out.append(number if math.isfinite(number) else math.nan)
    return out


class Plotter:
    """Runs drawing functions so that none can fail the command: an error becomes one warning line.

    Each distinct problem is said once per command (a run redraws after every epoch; a broken plot
    should not print a line per epoch). Without matplotlib one line, once, says how to get plots.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._said: set[str] = set()

    def __call__(self, what: str, draw: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``draw(*args, **kwargs)``, or None when plots are off or drawing failed."""
        if not self.enabled:
            return None
        try:
            return draw(*args, **kwargs)
        except MatplotlibMissing:
            global _hinted
            if not _hinted:
                _hinted = True
                self._say("matplotlib",
                          f"no plots: matplotlib is not installed; get them with `{INSTALL_HINT}`")
        except Exception as exc:  # noqa: BLE001 - a picture must never cost a run; the user gets one line
            first = " ".join(str(exc).split())[:160]
            name = type(exc).__name__
            self._say(f"{what}/{name}",
                      f"warning: could not draw {what} ({name}: {first}); carrying on without it")
        return None

    def _say(self, key: str, line: str) -> None:
        from rich.markup import escape

        if key not in self._said:
            self._said.add(key)
            err.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)
