"""The demo dataset: shape, imbalance, determinism, and care with existing folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsearch.data import scan
from tlsearch.demo import MARKER, DemoDataError, write_demo_data


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo") / "digits"
    return out, write_demo_data(out, size=32, seed=0)


def test_demo_is_ten_imbalanced_valid_classes(demo):
    out, summary = demo
    assert summary["classes"] == [str(k) for k in range(10)]
    counts = summary["counts"]
    assert 6 <= max(counts.values()) / min(counts.values()) <= 12
    index = scan(out)
    assert index.classes == tuple(summary["classes"])
    assert index.counts() == counts
    assert index.skipped == () and index.ignored == ()
    assert {(r.width, r.height, r.mode) for r in index.records} == {(32, 32, "RGB")}
    assert summary["total"] == len(index.records) and summary["path"] == str(out)


def test_demo_is_deterministic_and_rewritable(demo, tmp_path: Path):
    out, summary = demo
    other = tmp_path / "again"
    assert write_demo_data(other, size=32, seed=0) == {**summary, "path": str(other)}
    assert _files(other) == _files(out)
    assert write_demo_data(other, size=32, seed=0)["counts"] == summary["counts"]  # idempotent
    assert _files(other) == _files(out)

    changed = write_demo_data(other, size=32, seed=1)
    assert _files(other) != _files(out)
    assert len(_files(other)) == changed["total"]  # images of the seed-0 run were removed
    assert (other / MARKER).is_file()


def test_demo_refuses_foreign_folders(tmp_path: Path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("precious")
    with pytest.raises(DemoDataError, match="not a tlsearch demo folder"):
        write_demo_data(busy, size=16)
    assert [p.name for p in busy.iterdir()] == ["thesis.tex"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(DemoDataError, match="not a folder"):
        write_demo_data(afile, size=16)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_demo_data(empty, size=8)["total"] > 0


def test_textures_demo_is_eight_imbalanced_classes_of_real_photos(tmp_path: Path):
    from tlsearch.demo import TEXTURES

    out = tmp_path / "textures"
    summary = write_demo_data(out, size=32, seed=0, kind="textures")
    assert summary["classes"] == list(TEXTURES) and summary["kind"] == "textures"
    counts = summary["counts"]
    assert 3 <= max(counts.values()) / min(counts.values()) <= 5
    assert min(counts.values()) >= 25  # enough for a held-out test split of every class
    index = scan(out)
    assert index.counts() == counts and index.skipped == ()
    # Grey tiles: colour says nothing about the class.
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(next((out / "tissue").glob("*.png"))))
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    # Switching kinds in one folder leaves only the new kind's classes.
    write_demo_data(out, size=32, seed=0, kind="digits")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [str(k) for k in range(10)]
