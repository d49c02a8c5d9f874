"""The ``mula`` command-line application: assembles the subcommands and turns user errors into
a one-line message with exit code 2 (no traceback)."""

from __future__ import annotations

import signal
from typing import Optional

import typer
from typer.core import TyperGroup

from mula_cli.utils.errors import MulaError
from mula_cli.utils.interrupts import raising_on_stop_signals, signal_number
from mula_cli.utils.version import __version__

# Options whose value may be left out, and what they mean then. Click's optional values
# (``is_flag=False, flag_value=...``) are not reachable through Typer: it deprecated both parameters
# (fastapi/typer#987, "not supported by Typer") and the click parser it vendors (Typer 0.29) has no
# optional values, so a bare option is given its value here, before parsing.
_OPTIONAL_VALUES = {"--resume": "last"}


def _fill_optional_values(args: list[str]) -> list[str]:
    filled = []
    for i, arg in enumerate(args):
        missing = i + 1 == len(args) or args[i + 1].startswith("-")
        filled.append(f"{arg}={_OPTIONAL_VALUES[arg]}" if arg in _OPTIONAL_VALUES and missing else arg)
    return filled


class _ReportingGroup(TyperGroup):
    """Turns a MulaError raised by any subcommand into one red line on stderr and exit code 2."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _fill_optional_values(list(args)))

    def invoke(self, ctx: typer.Context):  # typer.Context is click's Context
        try:
            with raising_on_stop_signals():  # SIGTERM (a scheduler, docker stop) stops like Ctrl-C
                return super().invoke(ctx)
        except MulaError as exc:
            from rich.markup import escape

            from mula_cli.utils.console import err

            err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, markup=True, highlight=False)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # every output is written atomically: what exists is whole
            from mula_cli.utils.console import err

            signum = signal_number(exc)
            err.print(f"\n[yellow]interrupted ({signal.Signals(signum).name})[/]", highlight=False)
            ctx.exit(128 + signum)


app = typer.Typer(
    cls=_ReportingGroup,
    name="mula",
    help="Train, evaluate, run and export MuLA, joint human parsing and pose estimation (ECCV 2018).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mula {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train, evaluate, run and export MuLA, joint human parsing and pose estimation (ECCV 2018)."""


def _register() -> None:
    # Command modules keep torch imports inside their functions, so that commands that do
    # not need it (prepare, --version, --help) start in a fraction of a second.
    from mula_cli.commands import demo, evaluate, export, info, predict, prepare, train

    app.add_typer(prepare.app, name="prepare")
    app.command("train")(train.train)
    app.command("evaluate")(evaluate.evaluate)
    app.command("predict")(predict.predict)
    app.command("export")(export.export)
    app.command("demo")(demo.demo)
    app.command("info")(info.info)
    from mula_cli.commands import import_official
    from mula_cli.commands import models as models_cmd

    app.command("models")(models_cmd.models)
    app.command("import-official")(import_official.import_official)
    from mula_cli.commands import weights as weights_cmd

    app.add_typer(weights_cmd.app, name="weights")
    from mula_cli.commands import benchmark, reproduce

    app.add_typer(benchmark.app, name="benchmark")
    app.command("reproduce")(reproduce.reproduce)
    from mula_cli.commands import plot

    app.command("plot")(plot.plot)


_register()


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point (``mula`` and ``python -m mula_cli``)."""
    app(args=argv, prog_name="mula")
