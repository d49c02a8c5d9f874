"""``mula import-official``: convert one of the authors' checkpoints into a mula weights file."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from mula_cli.utils.console import out
from mula_cli.utils.errors import MulaError
from mula_cli.utils.manifests import load_manifest

if TYPE_CHECKING:
    from mula_cli.model.official import ImportReport

# The authors' released checkpoints are LIP models.
OFFICIAL_DATASET = "lip"
_CHECKPOINT_SUFFIXES = (".tar", ".pth", ".pt", ".pkl")


class Arch(str, Enum):
    auto = "auto"
    hg = "hg"
    vgg = "vgg"


def default_output(checkpoint: Path) -> Path:
    """``mula_lip.pth.tar`` -> ``mula_lip.pt`` next to the input (never the input itself)."""
    name = checkpoint.name
    while Path(name).suffix in _CHECKPOINT_SUFFIXES:
        name = Path(name).stem
    target = checkpoint.with_name(f"{name}.pt")
    return checkpoint.with_name(f"{name}-mula.pt") if target == checkpoint else target


def _pattern(key: str) -> str:
    """The module a key belongs to, indices starred: ``pose_encoder.hg_list.*.srb*.*.conv1x1.*``."""
    module = key.rpartition(".")[0] or key
    return ".".join(re.sub(r"^([a-z_]*)\d+$", r"\1*", token) for token in module.split("."))


def _report_table(report: ImportReport, checkpoint: Path, meta: dict[str, object]) -> Table:
    table = Table(title=f"Import of {checkpoint.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("details")
    table.add_row("architecture", report.architecture.describe())
    if meta:
        table.add_row("checkpoint", ", ".join(f"{k} {v}" for k, v in meta.items()))
    table.add_row("mapped", f"{len(report.mapped)} tensors of the authors' forward pass")
    for reason, keys in report.unused.items():
        patterns = sorted({_pattern(k) for k in keys})
        shown = ", ".join(patterns[:3]) + (f" (+{len(patterns) - 3} more)" if len(patterns) > 3 else "")
        table.add_row("unused", f"{len(keys)} tensors: {reason}\n[dim]{shown}[/]")
    tolerated = report.tolerated_missing
    if tolerated:
        table.add_row(
            "missing", f"{len(tolerated)} BN num_batches_tracked (PyTorch 0.2 files lack them; set to 0)"
        )
    hard = {k: v for k, v in report.missing.items() if k not in tolerated}
    if hard:
        shown = ", ".join(sorted({_pattern(v) for v in hard.values()})[:3])
        table.add_row("missing", f"[red]{len(hard)} tensors of the authors' model[/]\n[dim]{shown}[/]")
    if report.permuted:
        table.add_row(
            "joint order",
            f"pose heads and pose remap convs of {report.architecture.stages} stage(s) reordered "
            f"from the authors' order to {OFFICIAL_DATASET}'s",
        )
    return table


def import_official(
    checkpoint: Path = typer.Argument(..., help="The authors' checkpoint, e.g. mula_lip.pth.tar."),
    out_path: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Weights file to write (default: next to the input, <name>.pt)."
    ),
    arch: Arch = typer.Option(Arch.auto, "--arch", help="Architecture of the checkpoint (auto: detect)."),
) -> None:
    """Convert an authors' checkpoint (NieXC/pytorch-mula, Hourglass or VGG) into a mula weights file.

    The file is loaded without running any pickled code. The authors' pose heads emit their own
    joint order; the converted model emits the LIP manifest's order (heads and remap convs are
    permuted), so its heatmaps line up with the rest of mula.
    """
    # Imported here: torch takes a while to import and other commands should not wait for it.
    from mula_cli.model.official import convert_official, detect_architecture, load_official_checkpoint
    from mula_cli.model.weights import save_weights

    manifest = load_manifest(OFFICIAL_DATASET)
    state, meta = load_official_checkpoint(checkpoint)
    architecture = detect_architecture(state, arch.value)
    report = convert_official(state, architecture, manifest)
    out.print(_report_table(report, checkpoint, meta))
    problem = report.problem()
    if problem is not None:
        raise MulaError(f"checkpoint {checkpoint} {problem}")
    target = out_path if out_path is not None else default_output(checkpoint)
    extra = {
        "dataset": manifest.name,
        "manifest": manifest.to_json(),
        "official": {"source": checkpoint.name, "architecture": architecture.describe(), **meta},
    }
    save_weights(target, report.model, extra=extra)
    out.print(f"Wrote {target} (preset {report.model.config.preset}, {manifest.name} joint order).")
