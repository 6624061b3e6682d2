"""Dataset diagnostics: duplicates, leakage, imbalance, unusable folders, safe output."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_images import (
    CORPUS_MAX_PIXELS,
    Expected,
    blocks,
    encode,
    make_dataset,
    malformed_corpus,
)
from PIL import Image
from rich.console import Console

from tlsearch.doctor import ClassCounts, diagnose, render


def _write(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image, "PNG"))


def _recommendation(report, words: str) -> str:
    matches = [line for line in report.recommendations if words in line]
    assert matches, (words, report.recommendations)
    return matches[0]


def test_exact_duplicate_across_classes_is_a_conflicting_label(tmp_path: Path):
    make_dataset(tmp_path, {"cat": 6, "dog": 6})
    shutil.copy(tmp_path / "cat" / "000.png", tmp_path / "dog" / "copy.png")
    shutil.copy(tmp_path / "dog" / "001.png", tmp_path / "dog" / "again.png")
    report = diagnose(tmp_path)
    assert report.usable and report.problem is None
    exact = [d for d in report.duplicates if d.kind == "exact"]
    assert len(exact) == 2
    conflict = next(d for d in exact if "across_classes" in d.scopes)
    assert conflict.paths == ("cat/000.png", "dog/copy.png")
    assert conflict.labels == ("cat", "dog")
    within = next(d for d in exact if d is not conflict)
    assert within.scopes in (("within_class",), ("across_splits",))
    assert report.conflicting_labels == 1
    _recommendation(report, "conflicting labels")


def test_leakage_across_presplit_folders(tmp_path: Path):
    make_dataset(tmp_path / "train", {"a": 6, "b": 6})
    make_dataset(tmp_path / "val", {"a": 3, "b": 3}, seed=1)
    shutil.copy(tmp_path / "train" / "a" / "002.png", tmp_path / "val" / "a" / "leak.png")
    report = diagnose(tmp_path)
    assert report.layout == "presplit"
    (group,) = report.duplicates
    assert group.scopes == ("across_splits",)
    assert group.parts == ("train", "val")
    assert report.leaked_val == 1 and report.leaked_test == 0
    assert "1 validation image duplicates training images (leakage)" in _recommendation(
        report, "leakage"
    )
    counts = {c.label: (c.train, c.val, c.test) for c in report.classes}
    assert counts == {"a": (6, 4, 0), "b": (6, 3, 0)}


def test_near_duplicate_brightened_copy_is_found(tmp_path: Path):
    for i in range(8):
        _write(tmp_path / ("x" if i % 2 else "y") / f"{i}.png", blocks(100 + i, 48))
    original = blocks(7, 48)
    _write(tmp_path / "x" / "original.png", original)
    brighter = np.clip(np.asarray(original, dtype=np.int16) + 12, 0, 255).astype(np.uint8)
    _write(tmp_path / "y" / "brighter.png", Image.fromarray(brighter))
    report = diagnose(tmp_path)
    near = [d for d in report.duplicates if d.kind == "near"]
    assert [d.paths for d in near] == [("x/original.png", "y/brighter.png")]
    assert "across_classes" in near[0].scopes
    assert not [d for d in report.duplicates if d.kind == "exact"]


def test_counts_imbalance_sizes_and_modes(tmp_path: Path):
    make_dataset(tmp_path, {"many": 16, "few": 4})
    _write(tmp_path / "many" / "wide.png", Image.new("L", (90, 30), 128))
    report = diagnose(tmp_path, val_fraction=0.25)
    assert report.imbalance_ratio == pytest.approx(17 / 4)
    assert report.small_classes == ("few",)
    few = next(c for c in report.classes if c.label == "few")
    assert (few.train, few.val, few.total) == (3, 1, 4)
    assert report.sizes.width_max == 90 and report.sizes.height_min == 24
    assert dict(report.sizes.aspect)["wider than 2:1"] == 1
    assert dict(report.modes) == {"RGB": 20, "L": 1}
    assert dict(report.notes) == {"grayscale": 1}
    _recommendation(report, "Imbalance ratio 4.2:1")
    _recommendation(report, "Class 'few' has only 4 images")


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        ({"only": 6}, "Only one class has images ('only')"),
        ({"big": 8, "tiny": 1}, "Class 'tiny' has 1 image"),
    ],
)
def test_unusable_dataset_is_reported_not_raised(tmp_path: Path, counts, problem: str):
    report = diagnose(make_dataset(tmp_path, counts))
    assert report.usable is False
    assert problem in report.problem
    assert report.classes  # what could be measured still is
    json.dumps(report.to_dict())


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_unusable_folder_is_reported_not_raised(tmp_path: Path, kind: str):
    root = tmp_path / "data"
    if kind == "empty":
        root.mkdir()
    elif kind == "file":
        root.write_text("x")
    report = diagnose(root)
    assert report.usable is False and report.problem and "\n" not in report.problem
    console = Console(record=True, width=200)
    render(report, console)
    assert "Usable: no" in console.export_text()


def test_malformed_corpus_is_grouped_by_reason(tmp_path: Path):
    expected = malformed_corpus(tmp_path)
    undecodable_name = os.fsdecode(b"worse\xfe.png")
    (tmp_path / "mixed" / undecodable_name).write_text("text")
    expected[f"mixed/{undecodable_name}"] = Expected("not_image")
    report = diagnose(tmp_path, max_pixels=CORPUS_MAX_PIXELS)
    got = {g.reason: sorted(f.path for f in g.files) for g in report.skipped}
    want: dict[str, list[str]] = {}
    for path, outcome in expected.items():
        # As root, locked.png is readable; the exact outcome is covered in test_data.
        if outcome.reason and (path != "mixed/locked.png" or os.geteuid() != 0):
            want.setdefault(outcome.reason, []).append(path)
    assert got == {reason: sorted(paths) for reason, paths in want.items()}
    assert all(g.explanation and g.explanation != g.reason for g in report.skipped)
    text = json.dumps(report.to_dict())
    assert "worse\\\\xfe.png" in text  # non-UTF-8 byte shown as an escape, not lost
    console = Console(record=True, width=200)
    render(report, console)
    out = console.export_text()
    assert "decompression_bomb" in out and "worse\\xfe.png" in out


def test_render_shows_hostile_names_literally(tmp_path: Path):
    # Folder names cannot contain "/", so "[bold]x[/bold]" itself is checked on a
    # hand-made report below.
    names = ["[bold]x", "<script>alert(1)<", "evil\u202egnp.exe", "bell\x07\x1b[31m", ":cat:"]
    make_dataset(tmp_path, dict.fromkeys(names, 6))
    report = diagnose(tmp_path)
    console = Console(record=True, width=200)
    render(report, console)
    out = console.export_text(styles=False)
    assert "[bold]x" in out and "<script>alert(1)<" in out and ":cat:" in out
    assert "\u202e" not in out and "evil\\u202egnp.exe" in out
    assert "\x1b" not in out and "\x07" not in out and "bell\\x07\\x1b[31m" in out
    assert "<script>" not in console.export_html()

    label = "[bold]x[/bold]"
    forged = dataclasses.replace(
        report,
        classes=(ClassCounts(label, 5, 1, 0, 6), ClassCounts("<script>", 5, 1, 0, 6)),
        small_classes=(label,),
        recommendations=(f"Class '{label}' has only 6 images.",),
    )
    console = Console(record=True, width=200)
    render(forged, console)
    out = console.export_text(styles=False)
    assert out.count("[bold]x[/bold]") == 2 and "<script>" in out
