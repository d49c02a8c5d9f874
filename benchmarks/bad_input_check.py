"""The bad-input corpus as figures: how many inputs of each kind, with which stated outcome, handled as stated.

    python benchmarks/bad_input_check.py            # writes benchmarks/results/bad_input_check.json

The corpus and its checks live in the tests (``tests/bad_inputs.py`` generates every input and states
its outcome; ``tests/test_bad_inputs.py`` feeds each to the command a user would run and checks it).
This runs those tests and counts their results per input, so the figures are the tests' own verdicts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Collector:
    """A pytest plugin that keeps each test's outcome."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bad_input_check.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import pytest
    from bad_inputs import specs

    collector = _Collector()
    started = time.perf_counter()
    code = pytest.main(["-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_bad_inputs.py")],
                       plugins=[collector])
    seconds = time.perf_counter() - started
    entries = specs()
    of_case = {}  # a test's parameters, as pytest writes them (non-ASCII escaped), to the input's name
    for e in entries:
        for command in e.facts["commands"]:
            case = f"{e.name}-{command}"
            of_case[case] = of_case[case.encode("unicode_escape").decode("ascii")] = e.name
    by_name: dict[str, list[str]] = collections.defaultdict(list)
    for nodeid, outcome in collector.outcomes.items():
        case = nodeid.partition("[")[2][:-1]  # test_<kind>[<name>-<command>]
        if case in of_case:
            by_name[of_case[case]].append(outcome)
    table = collections.Counter((e.kind, e.outcome) for e in entries)
    handled = [e.name for e in entries if by_name.get(e.name) and all(o == "passed" for o in by_name[e.name])]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "inputs": len(entries),
        "by_kind_and_outcome": {f"{kind}/{outcome}": n for (kind, outcome), n in sorted(table.items())},
        "command_calls_checked": sum(len(v) for v in by_name.values()),
        "inputs_handled_as_stated": len(handled),
        "not_handled": sorted(e.name for e in entries if e.name not in handled),
        "tests_failed": sum(o == "failed" for o in collector.outcomes.values()),
        "seconds": round(seconds, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
