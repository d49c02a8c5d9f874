"""Which package may import which: the library does not depend on its benchmarks or its training engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mula_cli"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_importing_the_ops_does_not_import_the_model() -> None:
    code = "import sys, mula_cli.ops; print(sorted(m for m in sys.modules if m.startswith('mula_cli.model')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"
    for path in (PACKAGE / "ops").glob("*.py"):  # also the imports inside functions
        assert not any(name.startswith("mula_cli.model") for name in _imports(path)), path.name


def test_only_the_commands_and_the_engine_import_the_training_package() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0]
        if part in ("commands", "train"):
            continue  # the CLI commands and the engine itself
        if any(name == "mula_cli.train" or name.startswith("mula_cli.train.") for name in _imports(path)):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []
