"""``mula models``: every model preset with its size and cost."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.table import Table

from mula_cli.utils.console import out
from mula_cli.utils.manifests import load_manifest

FLOP_INPUT_SIZE = 256


def models(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    dataset: str = typer.Option(
        "lip", "--dataset", "-d", help="Size the heads for this dataset's classes and joints."
    ),
) -> None:
    """List the model presets: encoder, stages, variant, parameters, GFLOPs at 256x256 and their rows in the paper."""
    # Imported here: torch takes a while to import and other commands should not wait for it.
    from mula_cli.model.presets import DEFAULT_PRESET, PRESETS, dataset_overrides, preset_config
    from mula_cli.model.summary import FlopCache, summarise
    from mula_cli.reproduce.paper import paper_rows_of

    sizes = dataset_overrides(load_manifest(dataset))
    cache: FlopCache = {}  # the presets share stems and stages: count each distinct one once
    rows = [
        summarise(preset_config(name, **sizes), input_size=FLOP_INPUT_SIZE, cache=cache) for name in PRESETS
    ]
    if as_json:
        typer.echo(json.dumps([{**row.to_dict(), "paper": paper_rows_of(row.name)} for row in rows], indent=2))
        return
    table = Table(
        title=f"MuLA presets ({dataset}: {sizes['num_classes']} classes, {sizes['num_joints']} joints)",
        caption=f"* default. GFLOPs: one {FLOP_INPUT_SIZE}x{FLOP_INPUT_SIZE} image, a multiply-add counts 2.",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("encoder", no_wrap=True)
    table.add_column("stages", justify="right", no_wrap=True)
    table.add_column("variant", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    table.add_column("GFLOPs", justify="right", no_wrap=True)
    table.add_column("in the paper")
    for row in rows:
        name = f"{row.name} *" if row.name == DEFAULT_PRESET else row.name
        table.add_row(
            name, row.encoder, str(row.stages), row.variant, f"{row.parameters:,}", f"{row.gflops:.1f}",
            "; ".join(paper_rows_of(row.name)) or "-",
        )
    out.print(table)
