"""``mula info``: an environment report to paste into bug reports."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata

import typer
from rich.table import Table

from mula_cli.utils.console import out
from mula_cli.utils.paths import data_dir, mula_home
from mula_cli.utils.version import __version__


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _torch_facts() -> dict[str, str]:
    try:
        import torch
    except ImportError as exc:  # torch is a dependency, but a broken install should still get a report
        return {"torch": f"cannot import ({exc})"}
    facts = {"torch": torch.__version__, "torch CUDA build": str(torch.version.cuda or "none (CPU build)")}
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        facts["CUDA devices"] = ", ".join(names)
        facts["bf16 supported"] = str(torch.cuda.is_bf16_supported())
    else:
        facts["CUDA devices"] = "none"
    facts["CPU threads"] = str(torch.get_num_threads())
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = "not installed (the dynamic convolution uses the grouped-convolution fallback)"
    facts["MULA_DYNCONV"] = os.environ.get("MULA_DYNCONV", "auto (default)")
    return facts


def cache_rows() -> list[dict[str, object]]:
    """One row per ``*.h5`` under ``$MULA_HOME/data``: name, size, sample counts (or why it is unusable)."""
    import h5py

    rows = []
    folder = data_dir()
    for path in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
        row: dict[str, object] = {"cache": path.name, "path": str(path), "MB": round(path.stat().st_size / 1e6, 1)}
        try:
            with h5py.File(path, "r") as f:
                a = f.attrs
                row["dataset"] = str(a.get("dataset", "?"))
                row["counts"] = json.loads(a["counts"]) if "counts" in a else {}
                row["complete"] = bool(a.get("complete", False))
                row["fingerprint"] = str(a.get("fingerprint", ""))[:12]
        except (OSError, KeyError, ValueError) as exc:
            row["problem"] = f"unreadable ({type(exc).__name__}); re-create it with `mula prepare ... --force`"
        rows.append(row)
    return rows


def info(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Print versions, hardware, MULA_HOME and the prepared caches (paste this into bug reports)."""
    report: dict[str, object] = {
        "mula": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
    }
    report.update(_torch_facts())
    for pkg in ("numpy", "scipy", "h5py", "pillow", "typer", "rich", "onnx", "onnxruntime"):
        report[pkg] = _version(pkg)
    home = mula_home()
    report["MULA_HOME"] = f"{home}" + ("" if os.environ.get("MULA_HOME") else " (default; set MULA_HOME to move it)")
    caches = cache_rows()
    if as_json:
        out.print_json(json.dumps({**report, "caches": caches}))
        return
    table = Table(show_header=False, title="mula environment", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in report.items():
        table.add_row(key, str(value))
    out.print(table)
    if not caches:
        out.print(f"no caches in {data_dir()} yet: run `mula prepare synthetic` or `mula prepare lip /path/to/LIP`")
        return
    ctable = Table(title=f"caches in {data_dir()}", title_justify="left")
    for col in ("cache", "dataset", "samples", "size", "fingerprint"):
        ctable.add_column(col)
    for row in caches:
        if "problem" in row:
            ctable.add_row(str(row["cache"]), "-", str(row["problem"]), f"{row['MB']} MB", "-")
            continue
        counts = row.get("counts") or {}
        samples = ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "incomplete"
        ctable.add_row(str(row["cache"]), str(row["dataset"]), samples, f"{row['MB']} MB", str(row["fingerprint"]))
    out.print(ctable)
