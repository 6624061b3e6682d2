"""The reliability suite's figures: collected by each part, printed at the end, and
written to tests/reliability/RESULTS.md by a full run (TLSEARCH_RELIABILITY_FULL=1)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

FULL = os.environ.get("TLSEARCH_RELIABILITY_FULL") == "1"
#: SIGKILLs of a searching worker: 20 in CI, 50 in the full run.
KILLS = int(os.environ.get("TLSEARCH_RELIABILITY_KILLS", "50" if FULL else "20"))

_FIGURES: dict[str, list[tuple[str, object, str]]] = {}


class Figures:
    def __init__(self, part: str) -> None:
        self.rows = _FIGURES.setdefault(part, [])

    def add(self, name: str, value: object, target: str = "") -> None:
        self.rows.append((name, value, target))


@pytest.fixture
def figures(request) -> Figures:
    return Figures(request.node.module.__doc__.splitlines()[0].rstrip("."))


def _table() -> list[str]:
    lines = []
    for part, rows in _FIGURES.items():
        lines += [f"### {part}", "", "| figure | value | target |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
        lines.append("")
    return lines


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for line in _table():
        terminalreporter.write_line(line)
    if FULL:
        out = Path(__file__).with_name("RESULTS.md")
        head = [
            "# Reliability suite: figures of the last full run", "",
            "Command: `TLSEARCH_RELIABILITY_FULL=1 .venv/bin/python -m pytest -m reliability "
            "tests/reliability`",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{sys.version.split()[0]}; {KILLS} kills.", "",
        ]
        out.write_text("\n".join(head + _table()))
