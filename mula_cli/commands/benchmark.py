"""``mula benchmark``: measure mula's operations on this machine (prediction on any device; dynconv on a GPU).

The measurements live in :mod:`mula_cli.bench`. Results go to ``--out``, or by default to a new run
folder like ``mula train``'s: ``runs/benchmark/exp``, ``exp2``, ... (``--project``/``--name``), created
when the first result is saved, so that a refused run leaves no empty folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mula_cli.utils.errors import MulaError

app = typer.Typer(help="Measure mula's operations on this machine.", no_args_is_help=True)

PROJECT = Path("runs/benchmark")


class ResultFile:
    """Where a benchmark's JSON goes: ``out``, or ``<project>/<name>/<stem>_<suffix>.json`` in a run folder
    made on the first save (the suffix, the device or card, may only be known once the run has started)."""

    def __init__(self, out: Optional[Path], project: Path, name: Optional[str], stem: str) -> None:
        self.out, self.project, self.name, self.stem = out, project, name, stem
        self.path: Optional[Path] = out

    def save(self, report: dict, suffix: str) -> Path:
        from mula_cli.utils.files import next_dir, write_json

        if self.path is None:
            self.path = next_dir(self.project, self.name) / f"{self.stem}_{suffix}.json"
        return write_json(self.path, report, indent=1)


@app.command("dynconv")
def dynconv(
    out: Optional[Path] = typer.Option(
        None, "--out", help="JSON file for the results (default: runs/benchmark/expN/dynconv_<card>.json)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Only B=16, C=256, 64x64 (3x3 and 7x7); fewer repeats."
    ),
    sweep: Optional[bool] = typer.Option(
        None, "--sweep/--no-sweep", help="Also time other tilings of the key case. Default: on, off with --quick."
    ),
    train: bool = typer.Option(True, "--train/--no-train", help="Also time the hg-5s training step."),
    project: Path = typer.Option(PROJECT, "--project", help="Folder of benchmark runs (without --out)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name under --project (auto-incremented). Default: exp."),
) -> None:
    """Time the per-sample depthwise convolution (Triton vs grouped convolution) against the card's floors (needs a CUDA GPU)."""
    from mula_cli.bench import dynconv as bench
    from mula_cli.utils.console import err

    target = ResultFile(out, project, name, "dynconv")

    def save(report: dict) -> None:  # after every case: a run cut short keeps what it measured
        target.save(report, bench.card_name(report))

    report = bench.run(
        quick=quick, sweep=not quick if sweep is None else sweep, train=train, save=save,
        log=lambda line: err.print(line, highlight=False),
    )
    bench.print_summary(report)
    err.print(f"wrote {target.path}", highlight=False, soft_wrap=True)


@app.command("predict")
def predict(
    preset: str = typer.Option("hg-5s", "--model", help="Preset to time, with random weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Time these weights instead of a random preset."),
    batches: str = typer.Option("1,8", "--batches", help="Pictures per Predictor.predict call, comma-separated."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed calls per path and batch size (interleaved)."),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda|auto."),
    precision: str = typer.Option("auto", "--precision", help="The default path's precision (auto|fp32|bf16, as in `mula predict`); where it is bfloat16, the fast path is timed in bfloat16 too. Eager float32 is the baseline either way."),
    bf16: bool = typer.Option(False, "--bf16", hidden=True, help="Same as --precision bf16."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for PyTorch (default: its own choice)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="JSON file (default: runs/benchmark/expN/predict_<device>.json)."
    ),
    project: Path = typer.Option(PROJECT, "--project", help="Folder of benchmark runs (without --out)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name under --project (auto-incremented). Default: exp."),
) -> None:
    """Time prediction per picture end to end: the fast path against the plain eager float32 model."""
    import tempfile

    import torch

    from mula_cli.bench import predict as bench
    from mula_cli.utils.console import err
    from mula_cli.utils.console import out as stdout
    from mula_cli.utils.devices import check_precision_option, pick_device

    check_precision_option(precision)
    try:
        sizes = tuple(int(b) for b in batches.split(","))
    except ValueError:
        raise MulaError(f"--batches {batches!r} must be comma-separated whole numbers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise MulaError(f"--batches {batches!r} must name batch sizes of at least 1")
    if threads is not None:
        torch.set_num_threads(threads)
    device_name = pick_device(device).type
    target = ResultFile(out, project, name, "predict")

    def save(report: dict) -> None:  # after every case: a run cut short keeps what it measured
        target.save(report, device_name)

    with tempfile.TemporaryDirectory(prefix="mula-bench-") as tmp:
        if weights is None:
            from mula_cli.model.presets import PRESET_FIELDS

            if preset not in PRESET_FIELDS:
                raise MulaError(f"unknown model preset '{preset}'; `mula models` lists them")
            err.print(f"writing random {preset} weights and {max(sizes)} photos ...", highlight=False)
            weights = bench.write_random_weights(Path(tmp) / f"{preset}.pt", preset)
        photos = bench.write_photos(Path(tmp) / "photos", max(sizes))
        report = bench.run(weights, photos, batches=sizes, repeats=repeats, device=device,
                           precision="bf16" if bf16 else precision,
                           log=lambda line: err.print(line, highlight=False), save=save)
    for line in bench.summary(report):
        stdout.print(line, highlight=False)
    stdout.print(f"wrote {target.path}", highlight=False, soft_wrap=True)
