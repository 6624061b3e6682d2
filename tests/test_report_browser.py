"""The report in a real browser: headless Chromium renders it offline, plots included."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_colour_dataset
from tests.test_study import TINY_SPACE
from tlsearch.report import build_report
from tlsearch.study import SearchConfig, run_search

CHROMIUM = Path("/usr/bin/chromium")
SPACE = TINY_SPACE.format(head_epochs=2, finetune_epochs=1)


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
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

    # Plotly drew every figure: it replaces each placeholder with its own container.
    dom = _chromium(tmp_path, url, "--dump-dom").stdout
    placeholders = report.read_text().count('data-plot="plot-')
    assert placeholders >= 5
    assert dom.count('class="plot-container plotly"') == placeholders
