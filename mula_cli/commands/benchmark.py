"""``mula benchmark``: measure mula's operations on this machine (needs a CUDA GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Measure mula's operations on this machine (needs a CUDA GPU).", no_args_is_help=True)


@app.command("dynconv")
def dynconv(
    out: Optional[Path] = typer.Option(
        None, "--out", help="JSON file for the results (default: dynconv_<card>.json)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Only B=16, C=256, 64x64 (3x3 and 7x7); fewer repeats."
    ),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Also time other tilings of the key case."),
    train: bool = typer.Option(True, "--train/--no-train", help="Also time the hg-5s training step."),
) -> None:
    """Time the per-sample depthwise convolution (Triton vs grouped convolution) against the card's floors."""
    from mula_cli.console import err
    from mula_cli.ops import dynconv_bench

    def save(report: dict) -> None:  # after every case: a run cut short keeps what it measured
        path = out or dynconv_bench.default_output(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))

    report = dynconv_bench.run(
        quick=quick, sweep=sweep, train=train, save=save, log=lambda line: err.print(line, highlight=False)
    )
    dynconv_bench.print_summary(report)
    err.print(f"wrote {out or dynconv_bench.default_output(report)}")
