"""``mula benchmark``: measure mula's operations on this machine (prediction on any device; dynconv on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Measure mula's operations on this machine.", no_args_is_help=True)


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
    """Time the per-sample depthwise convolution (needs a CUDA GPU) (Triton vs grouped convolution) against the card's floors."""
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
    from mula_cli.errors import MulaError
    from mula_cli.train.distributed import pick_device

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

    def save(report: dict) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.partial")
        temp.write_text(json.dumps(report, indent=1) + "\n")
        temp.replace(target)

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
