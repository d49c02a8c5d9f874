"""``mula export``: TorchScript, ONNX or OpenVINO files that carry their own normalisation and configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mula_cli.utils.console import err, out
from mula_cli.utils.errors import MulaError

CACHE_SUFFIXES = (".h5", ".hdf5")


def export(
    weights: Path = typer.Argument(..., help="Weights file to export (e.g. runs/train/exp/weights/best.pt)."),
    fmt: str = typer.Option(..., "--format", "-f", help="torchscript, onnx or openvino (an OpenVINO IR: model.xml and model.bin; the `openvino` extra)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file. Default: WEIGHTS with .torchscript / .onnx / .xml."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX: accept any batch size (TorchScript and OpenVINO always do)."),
    opset: int = typer.Option(17, "--opset", min=13, help="ONNX opset (also of the ONNX graph an OpenVINO IR is converted from)."),
    half: bool = typer.Option(False, "--half", help="Export float16 (checked against the model run in float16 with the same operations; on a GPU or a CPU). TorchScript and ONNX; OpenVINO picks its arithmetic when it runs (mula predict --precision)."),
    labels: bool = typer.Option(False, "--labels", help="Return parsing class ids instead of logits."),
    device: str = typer.Option("cpu", "--device", help="Device to trace and check on: cpu, cuda or cuda:N."),
    int8: bool = typer.Option(False, "--int8", help="OpenVINO: quantize to int8 (post-training, NNCF) on --calibration pictures; checked against the float32 model with int8's looser tolerances (see the README)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="--int8: a folder of your own pictures (like those the model will see), or a cache file (.h5, from `mula prepare`) with --calibration-split."),
    calibration_split: str = typer.Option("train", "--calibration-split", help="--int8 with a cache file: the split whose pictures calibrate."),
    calibration_count: int = typer.Option(32, "--calibration-count", min=1, max=1000, help="--int8: calibrate on at most this many pictures, spread evenly over the folder or split."),
) -> None:
    """Export a model, reload the file and check it against the eager model on random images."""
    from mula_cli.deploy.export import export_model

    fmt = fmt.lower()
    pictures, source = None, None
    if calibration is not None and not int8:
        raise MulaError("--calibration is for --int8 (OpenVINO's int8 quantization)")
    if int8:
        if fmt != "openvino":
            raise MulaError("--int8 is for --format openvino")
        if calibration is None:
            raise MulaError("--int8 needs --calibration: a folder of your own pictures, or a cache file (.h5) and "
                            "--calibration-split (int8 calibrated on noise would not be worth having)")
        from mula_cli.deploy.openvino import require

        require(int8=True)  # before reading pictures
        pictures, source = _calibration_pictures(calibration, calibration_split, calibration_count)
        err.print(f"calibrating int8 on {len(pictures)} pictures from {source}", highlight=False, markup=False)
    report = export_model(weights, fmt, out_path, dynamic_batch=dynamic_batch, opset=opset, half=half,
                          labels=labels, device=device, int8=int8, calibration=pictures, calibration_source=source)
    agreement = f", parsing labels agree on {100 * report.label_agreement:.2f}% of pixels"
    what = " (float32 IR)" if report.int8 else ""
    out.print(f"exported {report.path}; checked{what} at batch {', '.join(map(str, report.batches))}: largest difference "
              f"{report.max_abs_diff:.2e} of the output scale{agreement}", soft_wrap=True)
    if report.int8:
        out.print(f"int8 on the calibration pictures: {report.int8}", soft_wrap=True)
    out.print(f"run it: mula predict photo.jpg --weights {report.path}")


def _calibration_pictures(path: Path, split: str, count: int) -> tuple[list, str]:
    """Up to ``count`` pictures spread evenly over a folder (sorted by name) or a cache split, as RGB images."""
    import numpy as np

    from mula_cli.commands.predict import IMAGE_SUFFIXES
    from mula_cli.inference.predictor import read_image

    def spread(n: int) -> list[int]:
        return sorted({int(i) for i in np.linspace(0, n - 1, min(n, count)).round()})

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MulaError(f"--calibration {path} holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [read_image(files[i], max_side=512)[0] for i in spread(len(files))], str(path)
    if path.is_file() and path.suffix.lower() in CACHE_SUFFIXES:
        from mula_cli.data.cache import CacheFile

        with CacheFile(path) as cache:
            rows = cache.split(split)  # a clear error when the split is missing
            if len(rows) == 0:
                raise MulaError(f"--calibration {path}: split {split!r} is empty; pick another --calibration-split")
            return [rows.image(i).convert("RGB") for i in spread(len(rows))], f"{path} ({split})"
    if not path.exists():
        raise MulaError(f"--calibration {path} does not exist")
    raise MulaError(f"--calibration {path} is neither a folder of pictures nor a cache file (.h5)")
