"""``mula benchmark``: measure mula's operations on this machine (prediction on any device; dynconv on a GPU).

The dynamic-convolution benchmarks are not part of the library: they live in the repository's
``benchmarks/`` folder (next to ``mula_cli/``), and ``mula benchmark dynconv`` is a thin front end that
loads them from there.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

import typer

from mula_cli.errors import MulaError

app = typer.Typer(help="Measure mula's operations on this machine.", no_args_is_help=True)


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
    """Time the per-sample depthwise convolution (Triton vs grouped convolution) against the card's floors (needs a CUDA GPU)."""
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


@app.command("predict")
def predict(
    preset: str = typer.Option("hg-5s", "--model", help="Preset to time, with random weights."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Time these weights instead of a random preset."),
    batches: str = typer.Option("1,8", "--batches", help="Pictures per Predictor.predict call, comma-separated."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed calls per path and batch size (interleaved)."),
    device: str = typer.Option("cpu", "--device", help="cpu|cuda|auto."),
    bf16: bool = typer.Option(False, "--bf16", help="Also time the fast path in bfloat16 (autocast), against eager float32."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for PyTorch (default: its own choice)."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON file (default: benchmarks/results/predict_<device>.json)."),
) -> None:
    """Time prediction per picture end to end: the fast path against the plain eager float32 model."""
    import tempfile

    import torch

    from mula_cli import predict_bench
    from mula_cli.console import err
    from mula_cli.console import out as stdout
    from mula_cli.devices import pick_device
    from mula_cli.files import write_json

    try:
        sizes = tuple(int(b) for b in batches.split(","))
    except ValueError:
        raise MulaError(f"--batches {batches!r} must be comma-separated whole numbers, e.g. 1,8") from None
    if not sizes or min(sizes) < 1:
        raise MulaError(f"--batches {batches!r} must name batch sizes of at least 1")
    if threads is not None:
        torch.set_num_threads(threads)
    device_name = pick_device(device).type
    target = out or predict_bench.DEFAULT_RESULTS / f"predict_{device_name}.json"

    def save(report: dict) -> None:  # after every case: a run cut short keeps what it measured
        write_json(target, report, indent=1)

    with tempfile.TemporaryDirectory(prefix="mula-bench-") as tmp:
        if weights is None:
            from mula_cli.model.presets import PRESET_FIELDS

            if preset not in PRESET_FIELDS:
                raise MulaError(f"unknown model preset '{preset}'; `mula models` lists them")
            err.print(f"writing random {preset} weights and {max(sizes)} photos ...", highlight=False)
            weights = predict_bench.write_random_weights(Path(tmp) / f"{preset}.pt", preset)
        photos = predict_bench.write_photos(Path(tmp) / "photos", max(sizes))
        report = predict_bench.run(weights, photos, batches=sizes, repeats=repeats, device=device, bf16=bf16,
                                   log=lambda line: err.print(line, highlight=False), save=save)
    for line in predict_bench.summary(report):
        stdout.print(line, highlight=False)
    stdout.print(f"wrote {target}")
