"""A built wheel is a working tool: its spaces, assets and templates travel with it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--quiet", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip()[-300:]}")
    return next(out.glob("tlsearch-*.whl"))


def test_the_wheel_carries_spaces_assets_and_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for space in ("quick", "default", "thorough"):
        assert f"tlsearch/search_spaces/{space}.yaml" in names
    assert "tlsearch/report/templates/report.html.j2" in names
    assert any(n.startswith("tlsearch/assets/") for n in names)


def test_an_installed_wheel_finds_its_bundled_spaces(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import tlsearch, tlsearch.space as s\n"
            f"assert tlsearch.__file__.startswith({str(site)!r}), tlsearch.__file__\n"
            "assert s.load_space('quick').name == 'quick'\n"
            "print(s.bundled_spaces())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(site),
                                                       "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "quick" in done.stdout
