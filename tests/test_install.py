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


def test_a_wheel_installed_in_a_fresh_venv_searches_reports_and_exports(wheel, tmp_path):
    """`pip install tlsearch-*.whl` as a user would (no editable install, no source tree
    on the path), then the documented commands from an unrelated folder. Dependencies
    come from this environment's site-packages through a plain path entry, so no
    download is needed and its editable tlsearch is not seen."""
    import site
    import venv

    from tests.conftest import write_colour_dataset

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    purelib = subprocess.run([str(bin_dir / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "host-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"),
                           "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    work = tmp_path / "elsewhere"
    write_colour_dataset(work / "data", {"red": 12, "green": 12})
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "TLSEARCH_CACHE": str(tmp_path / "cache"), "TLSEARCH_OFFLINE": "1"}

    def tlsearch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / "tlsearch"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)

    where = subprocess.run([str(bin_dir / "python"), "-c",
                            "import tlsearch; print(tlsearch.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(purelib), (where.stdout, where.stderr[-500:])
    searched = tlsearch("search", "data", "--space", "quick", "--trials", "1", "--study", "w",
                        "--no-baselines", "--no-rank", "--test-fraction", "0",
                        "--set", "backbones={efficientnet_lite0: [64]}",
                        "--set", "unfreeze_blocks=0", "--set", "head_epochs=1")
    assert searched.returncode == 0, searched.stderr[-3000:]
    assert (work / "reports" / "w.html").is_file()
    assert tlsearch("report", "w", "--out", "r.html").returncode == 0
    exported = tlsearch("export", "w", "--out", "model")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (work / "model" / "model.keras").is_file()
