"""``mula export``: TorchScript or ONNX files that carry their own normalisation and configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mula_cli.utils.console import out


def export(
    weights: Path = typer.Argument(..., help="Weights file to export (e.g. runs/train/exp/weights/best.pt)."),
    fmt: str = typer.Option(..., "--format", "-f", help="torchscript or onnx."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file. Default: WEIGHTS with .torchscript / .onnx."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX: accept any batch size (TorchScript always does)."),
    opset: int = typer.Option(17, "--opset", min=13, help="ONNX opset."),
    half: bool = typer.Option(False, "--half", help="Export float16 (checked against the model run in float16 with the same operations; on a GPU or a CPU)."),
    labels: bool = typer.Option(False, "--labels", help="Return parsing class ids instead of logits."),
    device: str = typer.Option("cpu", "--device", help="Device to trace and check on: cpu, cuda or cuda:N."),
) -> None:
    """Export a model, reload the file and check it against the eager model on random images."""
    from mula_cli.deploy.export import export_model

    report = export_model(weights, fmt.lower(), out_path, dynamic_batch=dynamic_batch, opset=opset, half=half,
                          labels=labels, device=device)
    agreement = f", parsing labels agree on {100 * report.label_agreement:.2f}% of pixels"
    out.print(f"exported {report.path}; checked at batch {', '.join(map(str, report.batches))}: largest difference "
              f"{report.max_abs_diff:.2e} of the output scale{agreement}")
    out.print(f"run it: mula predict photo.jpg --weights {report.path}")
