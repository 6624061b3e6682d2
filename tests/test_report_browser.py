"""The report in a real browser: headless Chromium renders it offline, plots included.

CI installs Chromium (`.ci/run`) and sets TLSEARCH_REQUIRE_BROWSER=1, so there the
test fails instead of skipping when the browser is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_SPACE, write_colour_dataset
from tlsearch.report import build_report
from tlsearch.search import SearchConfig, run_search

CHROMIUM = Path("/usr/bin/chromium")
SPACE = TINY_SPACE.format(head_epochs=2, finetune_epochs=1)


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("TLSEARCH_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing but TLSEARCH_REQUIRE_BROWSER is set")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium); "
                    "browser check not run")
    data = write_colour_dataset(tmp_path / "data", {"red": 20, "green": 20, "blue": 20})
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    config = SearchConfig(data_dir=str(data), space=str(space), study="b",
                          out=str(tmp_path / "studies"), trials=3, weights="none",
                          cache_dir=str(tmp_path / "cache"), pruner="none")
    run_search(config)
    report = build_report(config.study_dir, tmp_path / "report.html")
    url = report.resolve().as_uri()

    shot = tmp_path / "report.png"
    done = _chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.exists(), done.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a blank page compresses to a few KB

    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 500  # text, plots and thumbnails

    # Every figure is in the rendered DOM as an SVG with its marks, the recommendation
    # is plain text, and the console stayed empty: a script error logs there, and so
    # does any request the page's Content-Security-Policy blocks (every host also
    # resolves nowhere, so nothing could be fetched anyway).
    logged = _chromium(tmp_path, url, "--dump-dom", "--enable-logging=stderr", "--v=0",
                       "--host-resolver-rules=MAP * ~NOTFOUND")
    dom = logged.stdout
    placeholders = report.read_text().count('data-plot="plot-')
    assert placeholders >= 5
    for name in ("history", "slices", "curves", "confusion", "cost"):
        start = dom.index(f'id="plot-{name}"')
        figure = dom[start:dom.index("</svg>", start)]
        assert "<svg" in figure and ("<path" in figure or "<use" in figure), name
    assert "Recommendation" in dom and "tlsearch export b" in dom
    console = [line for line in logged.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
