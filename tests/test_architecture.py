"""docs/ARCHITECTURE.md matches the tree: every module is on the map, and the map names
no module that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
TABLE = "\n".join(line for line in PAGE.splitlines() if line.startswith("| `"))


def _package_rows() -> dict[str, str]:
    return {m.group(1): line for line in TABLE.splitlines()
            if (m := re.match(r"\| `(\w+)/`", line))}


def test_every_module_is_on_the_map():
    rows = _package_rows()
    missing = []
    for path in sorted((ROOT / "tlsearch").rglob("*.py")):
        rel = path.relative_to(ROOT / "tlsearch")
        if rel.name == "__init__.py":
            continue
        if len(rel.parts) == 1:
            if f"`{rel.name}`" not in TABLE:
                missing.append(str(rel))
        elif f"`{rel.stem}`" not in rows.get(rel.parts[0], ""):
            missing.append(str(rel))
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {missing}"


def test_the_map_names_no_module_that_is_gone():
    named = set(re.findall(r"`(\w+\.py)`", TABLE))
    gone = sorted(n for n in named if not (ROOT / "tlsearch" / n).is_file())
    assert not gone, f"docs/ARCHITECTURE.md names modules that do not exist: {gone}"
    for package, row in _package_rows().items():
        folder = ROOT / "tlsearch" / package
        assert (folder / "__init__.py").is_file(), package
        private = set(re.findall(r"`(_\w+)`", row))  # `_config`, `_model`: modules
        templates = set(re.findall(r"`(templates/[\w.]+)`", row))
        assert all((folder / f"{m}.py").is_file() for m in private), (package, private)
        assert all((folder / t).is_file() for t in templates), (package, templates)
