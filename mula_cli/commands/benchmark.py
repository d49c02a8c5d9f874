"""``mula benchmark``: measure mula's operations on this machine (needs a CUDA GPU).

The benchmarks are not part of the library: they live in the repository's ``benchmarks/`` folder
(next to ``mula_cli/``), and this command is a thin front end that loads them from there.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import typer

from mula_cli.errors import MulaError

app = typer.Typer(help="Measure mula's operations on this machine (needs a CUDA GPU).", no_args_is_help=True)


def benchmarks_folder() -> Path:
    """The repository's ``benchmarks/`` folder; MulaError when mula was installed without it (a wheel)."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (folder / "dynconv_bench.py").is_file():
        raise MulaError(
            f"mula benchmark runs the scripts in the repository's benchmarks/ folder, which is not at {folder}; "
            "run it from a clone of the repository (pip install -e .)"
        )
    return folder


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (its siblings import each other by plain name, as scripts do)."""
    folder = str(benchmarks_folder())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@app.command("dynconv")
def dynconv(
    out: Optional[Path] = typer.Option(
        None, "--out", help="JSON file for the results (default: dynconv_<card>.json)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Only B=16, C=256, 64x64 (3x3 and 7x7); fewer repeats."
    ),
    sweep: Optional[bool] = typer.Option(
        None, "--sweep/--no-sweep", help="Also time other tilings of the key case. Default: on, off with --quick."
    ),
    train: bool = typer.Option(True, "--train/--no-train", help="Also time the hg-5s training step."),
) -> None:
    """Time the per-sample depthwise convolution (Triton vs grouped convolution) against the card's floors."""
    from mula_cli.console import err
    from mula_cli.files import write_json

    bench = load_benchmark("dynconv_bench")

    def save(report: dict) -> None:  # after every case: a run cut short keeps what it measured
        write_json(out or bench.default_output(report), report, indent=1)

    report = bench.run(
        quick=quick, sweep=not quick if sweep is None else sweep, train=train, save=save, log=lambda line: err.print(line, highlight=False)
    )
    bench.print_summary(report)
    err.print(f"wrote {out or bench.default_output(report)}")
