"""Which package may import which, as each subpackage's ``__init__`` docstring says and docs/architecture.md
draws it; and no import circle anywhere.

Every import counts: at module level, inside functions (lazy imports) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mula_cli"
ENTRY_POINTS = {"__init__", "__main__", "cli"}  # the only modules at the package's top level
EVERYTHING = None  # rule of the top layer


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, imported name or None) of every import in a file, however deeply nested."""
    module = _module_name(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, one level up per extra dot
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            yield from ((base, alias.name) for alias in node.names)


def _rule(package: Path) -> set[str] | None:
    """The packages a subpackage's docstring says it may import (None: every one)."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
    found = re.search(r"^May import: (.*)$", doc, re.MULTILINE)
    assert found, f"{package.relative_to(ROOT)}/__init__.py: no 'May import:' line in its docstring"
    text = re.sub(r"\([^)]*\)", "", found.group(1)).strip().rstrip(".")
    if text.startswith("every package"):
        return EVERYTHING
    if text.startswith("nothing"):
        return set()
    return {name.strip() for name in text.split(",")}


def _subpackages() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "__pycache__")


def _rules() -> dict[str, set[str] | None]:
    return {name: _rule(PACKAGE / name) for name in _subpackages()}


def test_the_top_level_holds_only_entry_points_and_subpackages() -> None:
    assert {p.stem for p in PACKAGE.glob("*.py")} == ENTRY_POINTS
    for folder in PACKAGE.rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").exists(), folder


def test_every_rule_names_real_packages_and_the_rules_form_layers() -> None:
    rules = _rules()
    for name, allowed in rules.items():
        assert allowed is EVERYTHING or allowed <= set(rules), (name, allowed - set(rules))
    # acyclic: repeatedly peel off the packages that import nothing still left
    left = {name: set(rules) - {name} if allowed is EVERYTHING else set(allowed) for name, allowed in rules.items()}
    while left:
        bottom = [name for name, allowed in left.items() if not allowed & set(left)]
        assert bottom, f"the rules go round in a circle among {sorted(left)}"
        for name in bottom:
            del left[name]


def _violations(rules: dict[str, set[str] | None]) -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # the entry points may import anything
        own, allowed = rel.parts[0], rules[rel.parts[0]]
        # a nested package with a line of its own (data/synthetic) is held to it, within its parent too
        inner = path.parent if len(rel.parts) > 2 and "May import:" in (path.parent / "__init__.py").read_text() \
            else None
        for module, name in _imports(path):
            parts = module.split(".")
            if parts[0] != "mula_cli":
                continue
            if len(parts) == 1:  # the root reaches up to the Predictor; the version is utils.version
                found.append(f"{rel}: from mula_cli import {name}")
                continue
            target = parts[1]
            if target != own and allowed is not EVERYTHING and target not in allowed:
                found.append(f"{rel}: {module} ({own} may import {', '.join(sorted(allowed)) or 'nothing'})")
            if inner is not None and not module.startswith(_module_name(inner)) and target not in _rule(inner):
                found.append(f"{rel}: {module} ({inner.name} may import {', '.join(sorted(_rule(inner)))})")
    return sorted(found)


def test_no_import_runs_up_a_layer() -> None:
    assert _violations(_rules()) == []


def test_the_layering_test_catches_an_import_up_a_layer() -> None:
    """The same check with one rule tightened must fail where that package really imports: it can fail."""
    rules = _rules()
    rules["codecs"] = {"utils"}  # codecs.partition maps joints with transforms.affine
    assert any(v.startswith("codecs/partition.py: mula_cli.transforms") for v in _violations(rules))


def test_docs_architecture_draws_the_same_rules() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn = {}
    for row in re.finditer(r"^\| `(\w+)/` \|[^|]*\| ([^|]*) \|$", text, re.MULTILINE):
        cell = row.group(2).strip()
        drawn[row.group(1)] = EVERYTHING if cell == "everything" else \
            set() if cell == "nothing" else {n.strip() for n in cell.split(",")}
    assert drawn == _rules()


def _module_graph() -> dict[str, set[str]]:
    files = list(PACKAGE.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))
    known = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        edges = set()
        for module, name in _imports(path):
            if name and f"{module}.{name}" in known:
                edges.add(f"{module}.{name}")  # from package import submodule
            elif module in known:
                edges.add(module)
        graph[_module_name(path)] = edges - {_module_name(path)}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle_in_the_package_or_the_benchmarks() -> None:
    graph = _module_graph()
    assert _circles(graph) == []
    graph["mula_cli.codecs.heatmaps"].add("mula_cli.codecs.partition")  # a planted circle is found
    assert _circles(graph) == [["mula_cli.codecs.heatmaps", "mula_cli.codecs.partition"]]


def test_importing_the_ops_does_not_import_the_model() -> None:
    code = "import sys, mula_cli.ops; print(sorted(m for m in sys.modules if m.startswith('mula_cli.model')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"
