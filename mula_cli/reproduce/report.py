"""A reproduced table: our number beside the paper's in every cell, printed and written as
Markdown, CSV and JSON in the table's folder."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from mula_cli.reproduce.paper import METRIC_NAMES, Column, Target, paper_source
from mula_cli.utils.files import atomic_write

RECORD = "reproduce.json"  # a scored row's record, beside its run (written by mula_cli.train.reproduce)


def read_record(run: Path) -> dict[str, Any] | None:
    """A row's stored score, or None when it has not been scored."""
    path = run / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _header(target: Target, column: Column) -> str:
    name = METRIC_NAMES.get(column.metric, column.metric)
    return f"{name} (Table {column.table})" if len(target.tables) > 1 else name


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def collect(target: Target, table_dir: Path) -> list[dict[str, Any]]:
    """One entry per row: the paper's name, the preset, and per column our number and the paper's."""
    rows = []
    for preset in target.presets:
        record = read_record(table_dir / preset)
        ours = record["metrics"] if record else {}
        cells = []
        for column in target.columns:
            cells.append({"metric": column.metric, "table": column.table, "paper_column": column.paper_column,
                          "ours": ours.get(column.metric), "paper": target.paper_value(preset, column)})
        rows.append({"row": target.row_name(preset), "preset": preset, "cells": cells,
                     "run": str(table_dir / preset) if record else None,
                     "images": record.get("images") if record else None})
    return rows


def render_markdown(target: Target, rows: list[dict[str, Any]], setting: dict[str, Any]) -> str:
    tables = " and ".join(str(t.table) for t in target.tables)
    lines = [f"# `mula reproduce {target.name}`: Table{'s' if len(target.tables) > 1 else ''} {tables} of the paper",
             "", f"{paper_source()['paper']}", "",
             "Each cell: our number / the paper's (percent; — = not run yet or not in the paper).", "",
             "Setting: " + ", ".join(f"{k} {v}" for k, v in setting.items()), ""]
    head = ["Method (paper)", "preset"] + [f"{_header(target, c)} ours / paper" for c in target.columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(target.columns)]
    for row in rows:
        cells = [f"{_number(c['ours'])} / {_number(c['paper'])}" for c in row["cells"]]
        lines.append("| " + " | ".join([row["row"], f"`{row['preset']}`", *cells]) + " |")
    return "\n".join(lines) + "\n"


def render_csv(target: Target, rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = [f"{c.metric}_table{c.table}" for c in target.columns]
    writer.writerow(["row", "preset"] + [f"{k}_{who}" for k in keys for who in ("ours", "paper")])
    for row in rows:
        values = [("" if c[who] is None else f"{c[who]:.4g}") for c in row["cells"] for who in ("ours", "paper")]
        writer.writerow([row["row"], row["preset"], *values])
    return buf.getvalue()


def write_reports(target: Target, table_dir: Path, rows: list[dict[str, Any]], setting: dict[str, Any]) -> list[Path]:
    """``table.md``, ``table.csv`` and ``table.json`` in ``table_dir`` (each written atomically)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    doc = {"target": target.name, "tables": [t.table for t in target.tables], "setting": setting,
           "paper": paper_source(), "rows": rows}
    paths = [table_dir / "table.md", table_dir / "table.csv", table_dir / "table.json"]
    for path, text in zip(paths, (render_markdown(target, rows, setting), render_csv(target, rows),
                                  json.dumps(doc, indent=2) + "\n")):
        atomic_write(path, lambda temp, text=text: temp.write_text(text, encoding="utf-8"))
    return paths


def rich_table(target: Target, rows: list[dict[str, Any]]) -> Table:
    tables = " and ".join(str(t.table) for t in target.tables)
    table = Table(title=f"{target.name}: Table{'s' if len(target.tables) > 1 else ''} {tables} (ours / paper, percent)",
                  title_justify="left")
    table.add_column("Method (paper)")
    table.add_column("preset")
    for column in target.columns:
        table.add_column(_header(target, column), justify="right")
    for row in rows:
        table.add_row(row["row"], row["preset"],
                      *(f"{_number(c['ours'])} / {_number(c['paper'])}" for c in row["cells"]))
    return table
