"""The ``mula`` command, ``python -m mula_cli`` and ``torchrun -m mula_cli``.

Loading the commands (torch among them) takes a second or more; a Ctrl-C or SIGTERM in that second
ends the program quietly with 128 + the signal, like one a moment later, instead of with a traceback
from inside an import.
"""

from __future__ import annotations

from typing import Optional

from mula_cli.utils.interrupts import exiting_on_stop_signals


def main(argv: Optional[list[str]] = None) -> None:
    with exiting_on_stop_signals():  # until the command itself handles the signals (and after it)
        from mula_cli.cli import main as run

        run(argv)


if __name__ == "__main__":
    main()
