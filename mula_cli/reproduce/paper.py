"""The paper's numbers (``paper_tables.json``, each with its table and row) and what ``mula reproduce`` runs.

A reproduction target is one or more of the paper's tables whose rows share training runs: Tables 3
and 4 report the same model (HG-5s on LIP) for pose and for parsing, so ``lip`` trains it once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from mula_cli.utils.errors import MulaError

# Target name -> the paper tables it reproduces.
TARGETS: dict[str, tuple[int, ...]] = {"table1": (1,), "table2": (2,), "lip": (3, 4), "pascal": (6,)}
TARGET_HELP = {
    "table1": "Table 1: VGG16-FCN, every way of letting the tasks interact (LIP val, 9 rows)",
    "table2": "Table 2: Hourglass, 0 to 5 MuLA stages, HG-2x1u and per-stage switches (LIP val, 9 rows)",
    "lip": "Tables 3 and 4: HG-5s-1u-MuLA on LIP, PCKh and PixelAcc/MeanAcc/mIoU (1 row)",
    "pascal": "Table 6: HG-5x1u and HG-5s-1u-MuLA parsing on PASCAL-Person-Part (2 rows)",
}
# What mula calls each metric in the table header.
METRIC_NAMES = {"pckh": "PCKh", "miou": "mIoU", "pixel_acc": "PixelAcc", "mean_acc": "MeanAcc"}


@dataclass(frozen=True)
class PaperRow:
    row: str  # the paper's name of the row
    preset: str  # the mula preset that builds it
    values: dict[str, float]  # paper column -> number


@dataclass(frozen=True)
class PaperTable:
    table: int
    title: str
    dataset: str
    split: str
    columns: dict[str, str]  # paper column -> mula metric key
    rows: tuple[PaperRow, ...]


@dataclass(frozen=True)
class Column:
    metric: str  # mula's metric key
    paper_column: str
    table: int


@dataclass(frozen=True)
class Target:
    """One ``mula reproduce`` table: its rows (presets, in the paper's order) and columns."""

    name: str
    tables: tuple[PaperTable, ...]

    @property
    def dataset(self) -> str:
        return self.tables[0].dataset

    @property
    def split(self) -> str:
        return self.tables[0].split

    @property
    def presets(self) -> list[str]:
        seen: list[str] = []
        for table in self.tables:
            seen += [r.preset for r in table.rows if r.preset not in seen]
        return seen

    @property
    def columns(self) -> list[Column]:
        return [Column(metric, column, t.table) for t in self.tables for column, metric in t.columns.items()]

    def row_name(self, preset: str) -> str:
        """The paper's name of a preset's row."""
        names: list[str] = []
        for table in self.tables:
            names += [r.row for r in table.rows if r.preset == preset and r.row not in names]
        return " / ".join(names)

    def paper_value(self, preset: str, column: Column) -> float | None:
        for table in self.tables:
            if table.table != column.table:
                continue
            for row in table.rows:
                if row.preset == preset:
                    return row.values.get(column.paper_column)
        return None


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    text = resources.files("mula_cli.reproduce").joinpath("paper_tables.json").read_text(encoding="utf-8")
    return json.loads(text)


def paper_source() -> dict[str, Any]:
    """Where the numbers come from and how they are read (``paper``, ``source``, ``notes``)."""
    doc = _document()
    return {k: doc[k] for k in ("paper", "source", "notes")}


def paper_tables() -> dict[int, PaperTable]:
    """Every table transcribed from the paper, by table number."""
    tables = {}
    for t in _document()["tables"]:
        rows = tuple(PaperRow(r["row"], r["preset"], dict(r["values"])) for r in t["rows"])
        tables[t["table"]] = PaperTable(t["table"], t["title"], t["dataset"], t["split"], dict(t["columns"]), rows)
    return tables


def target(name: str) -> Target:
    """The reproduction target ``name`` (see :data:`TARGETS`)."""
    if name not in TARGETS:
        raise MulaError(f"unknown table '{name}'; choose one of {', '.join(TARGETS)}")
    tables = paper_tables()
    return Target(name, tuple(tables[n] for n in TARGETS[name]))


def paper_rows_of(preset: str) -> list[str]:
    """``Table N: row`` for every paper row a preset builds (for ``mula models``)."""
    return [f"Table {t.table}: {r.row}" for t in paper_tables().values() for r in t.rows if r.preset == preset]
