"""Exact and near duplicates are found once and kept on one side of every split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_images import blocks, encode, make_dataset
from PIL import Image

from tlsearch.data import make_split, scan
from tlsearch.doctor import diagnose
from tlsearch.duplicates import find_duplicates


def _with_duplicates(root: Path) -> tuple[Path, list[set[str]]]:
    """Three classes of 20 distinct images, plus exact copies, brightened near copies
    and one copy across classes: the sets that must never straddle a split."""
    make_dataset(root, {"a": 20, "b": 20, "c": 20})
    sets = []
    for k, label in enumerate("abc"):
        for j in range(3):  # exact copies
            src = f"{label}/{j:03d}.png"
            shutil.copy(root / src, root / label / f"copy{j}.png")
            sets.append({src, f"{label}/copy{j}.png"})
        # a smooth image and its brightened twin (near, not exact), and a third copy
        original = blocks((3, 24, 12)[k], 48)  # seeds whose brightened twin hashes close
        (root / label / "smooth.png").write_bytes(encode(original, "PNG"))
        brighter = np.clip(np.asarray(original, dtype=np.int16) + 12, 0, 255).astype(np.uint8)
        (root / label / "smooth_bright.png").write_bytes(encode(Image.fromarray(brighter), "PNG"))
        shutil.copy(root / label / "smooth.png", root / label / "smooth_copy.png")
        sets.append({f"{label}/smooth.png", f"{label}/smooth_bright.png",
                     f"{label}/smooth_copy.png"})
    shutil.copy(root / "a" / "010.png", root / "b" / "from_a.png")  # a conflicting label
    sets.append({"a/010.png", "b/from_a.png"})
    return root, sets


def test_exact_and_near_sets_are_one_group_each(tmp_path):
    root, expected = _with_duplicates(tmp_path)
    found = find_duplicates(scan(root, progress=False))
    groups = found.groups()
    by_id: dict[int, set[str]] = {}
    for path, gid in groups.items():
        by_id.setdefault(gid, set()).add(path)
    assert sorted(map(sorted, by_id.values())) == sorted(map(sorted, expected))


@pytest.mark.parametrize("seed", range(8))
def test_duplicates_never_straddle_a_split(tmp_path, seed):
    root, sets = _with_duplicates(tmp_path)
    index = scan(root, progress=False)
    split = make_split(index, val_fraction=0.25, test_fraction=0.25, seed=seed,
                       groups=find_duplicates(index).groups())
    part_of = {p: part for part in ("train", "val", "test") for p in split.paths(part)}
    assert len(part_of) == len(index.records)  # every image placed once
    for members in sets:
        assert len({part_of[p] for p in members}) == 1, members
    assert split.merged_groups == len(sets)
    for part in ("val", "test"):  # stratified: every class still in each part
        assert set(split.labels(part)) == {0, 1, 2}
    # Without groups the same data leaks (the split a search made before).
    plain = make_split(index, val_fraction=0.25, test_fraction=0.25, seed=seed)
    plain_part = {p: part for part in ("train", "val", "test") for p in plain.paths(part)}
    assert any(len({plain_part[p] for p in m}) > 1 for m in sets)


def test_without_duplicates_the_split_is_unchanged(tmp_path):
    index = scan(make_dataset(tmp_path, {"a": 12, "b": 9}), progress=False)
    grouped = make_split(index, val_fraction=0.2, test_fraction=0.2, seed=3,
                         groups=find_duplicates(index).groups())
    assert grouped == make_split(index, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert grouped.merged_groups == 0


def test_doctor_reports_the_sets_and_the_search_split_leaks_nothing(tmp_path):
    root, sets = _with_duplicates(tmp_path)
    report = diagnose(root, val_fraction=0.25, test_fraction=0.25)
    # Each smooth triple is an exact pair and a near pair to the doctor.
    assert len(report.duplicates) == len(sets) + 3
    assert report.leaked_val == report.leaked_test == 0


def test_a_search_splits_duplicates_together_and_the_report_says_so(tmp_path):
    from tests.conftest import TINY_SPACE
    from tlsearch.data import Split
    from tlsearch.report import build_report
    from tlsearch.search import SearchConfig, run_search

    root, sets = _with_duplicates(tmp_path / "data")
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    config = SearchConfig(data_dir=str(root), space=str(space), study="d", trials=1,
                          out=str(tmp_path / "studies"), weights="none", pruner="none",
                          cache_dir=str(tmp_path / "cache"), baselines=False, rank=False,
                          test_fraction=0.2)
    run_search(config)
    split = Split.load(tmp_path / "studies" / "d" / "split.json")
    part_of = {p: part for part in ("train", "val", "test") for p in split.paths(part)}
    assert all(len({part_of[p] for p in members}) == 1 for members in sets)
    assert split.merged_groups == len(sets)
    html = build_report(tmp_path / "studies" / "d", tmp_path / "d.html").read_text()
    assert f"{len(sets)} group(s) of exact or near-duplicate images" in html
