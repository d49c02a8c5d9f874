"""``mula reproduce``: train every row of one of the paper's tables, score it, set it beside the paper."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mula_cli.reproduce.paper import TARGET_HELP
from mula_cli.utils.console import err, out
from mula_cli.utils.devices import DEVICE_CHOICES, check_device_option
from mula_cli.utils.errors import MulaError


def reproduce(
    table: str = typer.Argument(..., help="; ".join(f"{k}: {v}" for k, v in TARGET_HELP.items()) + "."),
    data: str | None = typer.Option(None, "--data", help="Dataset name under MULA_HOME or a cache path. Default: the table's dataset (lip or pascal_person_part); synthetic data stands in for a laptop check."),
    rows: str | None = typer.Option(None, "--rows", help="Only these rows (comma-separated presets), e.g. to share a table between machines. Default: all."),
    project: str = typer.Option("runs/reproduce", "--project", help="Folder of tables; each row is a run in <project>/<table>/<preset>."),
    recipe: str = typer.Option("auto", "--recipe", help="paper (250 epochs, batch 24, full width, 256 input), laptop (5 epochs, batch 8, width 32, input 128), or auto: laptop on synthetic data, paper otherwise."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", min=1, help="Override the recipe's epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Override the recipe's total batch size."),
    width: int | None = typer.Option(None, "--width", min=8, help="Override every row's feature width (the paper recipe keeps each preset's)."),
    input_size: int | None = typer.Option(None, "--input-size", min=64, help="Override the input side."),
    seed: int = typer.Option(0, "--seed", help="Seed of every row's training."),
    scales: str = typer.Option("1", "--scales", help="Test scales for scoring, e.g. 0.75,1,1.25 or paper (0.7,0.85,1,1.15,1.3). The paper tests at several scales it does not name; the authors' script at 1."),
    flip: bool = typer.Option(False, "--flip", help="Flip testing for parsing too (pose is always flip-averaged)."),
    protocol: str = typer.Option("default", "--protocol", help="Test-time processing for scoring: default or authors (see `mula evaluate`)."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="Score each row's last.pt (the end of the recipe) or best.pt (chosen on the validation split)."),
    device: str = typer.Option("auto", "--device", help=f"{DEVICE_CHOICES}."),
    workers: int = typer.Option(8, "--workers", "-j", min=0, help="Data-loading processes."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
) -> None:
    """Rerun one of the paper's tables: each row an ordinary training run, scored with the official protocol."""
    from dataclasses import replace

    from mula_cli.data.cache import CacheFile, resolve_cache
    from mula_cli.inference.batch import PROTOCOLS, InferenceOptions, parse_scales
    from mula_cli.reproduce.paper import target as find_target
    from mula_cli.reproduce.report import collect, rich_table, write_reports
    from mula_cli.train.reproduce import CHECKPOINTS, RECIPES, Plan, score_row, train_row

    goal = find_target(table)
    presets = goal.presets
    chosen = presets if rows is None else [r.strip() for r in rows.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in presets]
    if unknown or not chosen:
        raise MulaError(f"--rows {rows!r}: {', '.join(unknown) or 'no row'} not in {table}; its rows are {', '.join(presets)}")
    if recipe not in (*RECIPES, "auto"):
        raise MulaError(f"--recipe {recipe!r} is unknown; use auto, {' or '.join(RECIPES)}")
    if protocol not in PROTOCOLS:
        raise MulaError(f"--protocol {protocol!r} is unknown; use {' or '.join(PROTOCOLS)}")
    if checkpoint not in CHECKPOINTS:
        raise MulaError(f"--checkpoint {checkpoint!r} is unknown; use {' or '.join(CHECKPOINTS)}")
    device = check_device_option(device)
    options = InferenceOptions(parsing_flip=flip, scales=parse_scales(scales), protocol=protocol)
    if protocol == "authors":
        from mula_cli.evaluation.authors_protocol import EMULATION_NOTE, check_options
        from mula_cli.transforms.authors_views import opencv

        check_options(True, flip, options.scales)
        if opencv() is None:
            err.print(f"note: {EMULATION_NOTE}", highlight=False, markup=False)
    cache = resolve_cache(data or goal.dataset)
    with CacheFile(cache) as c:
        manifest = c.manifest
        c.split(goal.split)  # a clear error when the split is missing
    if goal.dataset not in (manifest.name, manifest.raw.get("base")):
        raise MulaError(f"{table} is measured on {goal.dataset}, but {cache} holds {manifest.name}; "
                        f"give --data {goal.dataset} (or synthetic data in its layout)")
    synthetic = manifest.name.startswith("synthetic")
    base = RECIPES["laptop" if (recipe == "auto" and synthetic) else ("paper" if recipe == "auto" else recipe)]
    overrides = {"epochs": epochs, "batch_size": batch_size, "width": width, "input_size": input_size}
    chosen_recipe = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    plan = Plan(cache=cache, split=goal.split, recipe=chosen_recipe, seed=seed, device=device, workers=workers,
                options=options, checkpoint=checkpoint, quiet=quiet)
    table_dir = Path(project) / goal.name

    for preset in chosen:  # every rank trains (torchrun); each row is an ordinary `mula train` run
        if int(os.environ.get("RANK", "0")) == 0:
            out.rule(f"{goal.name}: {preset} ({goal.row_name(preset)})")
        state = train_row(plan, preset, table_dir)
        if state == "done" and int(os.environ.get("RANK", "0")) == 0:
            out.print(f"{table_dir / preset}: finished earlier, not trained again")
    if int(os.environ.get("RANK", "0")) != 0:
        return  # scoring and the report are rank 0's
    for preset in chosen:
        record = score_row(plan, preset, table_dir)
        out.print(f"{preset}: " + ", ".join(f"{k} {v:.1f}" for k, v in record["metrics"].items()
                                            if isinstance(v, (int, float))))
    setting = {"data": str(cache), "split": goal.split, "recipe": chosen_recipe.name,
               "epochs": chosen_recipe.epochs, "batch_size": chosen_recipe.batch_size,
               "width": chosen_recipe.width or "preset", "input_size": chosen_recipe.input_size or 256,
               "protocol": protocol, "scales": ",".join(f"{s:g}" for s in options.scales),
               "parsing_flip": flip, "checkpoint": checkpoint}
    rows_out = collect(goal, table_dir)
    paths = write_reports(goal, table_dir, rows_out, setting)
    out.print(rich_table(goal, rows_out))
    out.print(f"written: {', '.join(str(p) for p in paths)}")

