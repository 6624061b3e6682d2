"""Scanning, reason codes, split, fingerprint, decoding and the decode cache."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_images import (
    CORPUS_MAX_PIXELS,
    EMOJI_NAME,
    NON_UTF8_NAME,
    Expected,
    encode,
    make_dataset,
    malformed_corpus,
    noise,
)
from PIL import Image, ImageFile

from tlsearch import data
from tlsearch.data import (
    REASONS,
    DatasetError,
    DecodeError,
    Split,
    decode_cached,
    decode_image,
    make_split,
    scan,
)

# --------------------------------------------------------------------------------
# The malformed corpus


def _simulate_unreadable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Root reads mode-000 files, so make opening that one file fail as it would."""
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith(name):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "corpus"
    expected = malformed_corpus(root)
    if os.geteuid() == 0:
        _simulate_unreadable(monkeypatch, "locked.png")
    return root, expected


def test_every_corpus_file_gets_its_exact_outcome(corpus):
    root, expected = corpus
    index = scan(root, max_pixels=CORPUS_MAX_PIXELS, workers=4)

    got = {r.path: Expected(None, r.notes) for r in index.records}
    got.update({s.path: Expected(s.reason) for s in index.skipped})
    assert got == expected
    assert set(expected) >= {f"mixed/{NON_UTF8_NAME}", f"mixed/{EMOJI_NAME}"}
    for item in index.skipped:
        assert item.reason in REASONS
    assert index.layout == "flat"
    assert index.classes == ("mixed", "plain")
    assert index.ignored == ("mixed/notes.txt",)  # hidden files are not even listed
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_records_describe_the_displayed_image(corpus):
    root, _ = corpus
    index = scan(root, max_pixels=CORPUS_MAX_PIXELS)
    by_path = {r.path: r for r in index.records}
    exif = by_path["mixed/exif.jpg"]
    assert (exif.width, exif.height) == (20, 40)  # stored 40x20, rotated upright
    assert by_path["mixed/png_named.jpg"].format == "PNG"
    assert by_path["mixed/deep.png"].mode == "I;16"
    assert by_path["mixed/cmyk.jpg"].mode == "CMYK"
    raw = (root / "plain" / "p0.png").read_bytes()
    assert by_path["plain/p0.png"].sha256 == hashlib.sha256(raw).hexdigest()
    assert by_path["plain/p0.png"].size_bytes == len(raw)
    assert index.counts() == {"mixed": 10, "plain": 3}  # locked.png is unreadable


def test_unreadable_file_with_real_permissions(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root can read mode-000 files; covered by the simulated case")
    make_dataset(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "a" / "000.png").chmod(0)
    index = scan(tmp_path)
    assert [(s.path, s.reason) for s in index.skipped] == [("a/000.png", "unreadable")]


def test_fifo_is_skipped_not_waited_on(tmp_path: Path):
    make_dataset(tmp_path, {"a": 2, "b": 2})
    os.mkfifo(tmp_path / "a" / "pipe.png")
    index = scan(tmp_path)
    assert [(s.path, s.reason) for s in index.skipped] == [("a/pipe.png", "unreadable")]


def test_directory_symlink_loop_is_reported_once(tmp_path: Path):
    make_dataset(tmp_path, {"a": 2, "b": 2})
    os.symlink("..", tmp_path / "a" / "up")
    index = scan(tmp_path)
    assert [(s.path, s.reason) for s in index.skipped] == [("a/up/a", "symlink_loop")]
    assert len(index.records) == 6  # b's images are found a second time through the link


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero.png", "zero_bytes"),
        ("text.png", "not_image"),
        ("truncated.jpg", "truncated"),
        ("truncated.png", "truncated"),
        ("bomb.png", "decompression_bomb"),
        ("huge_header.png", "decompression_bomb"),
        ("broken.png", "broken_symlink"),
        ("loop.png", "symlink_loop"),
        ("corrupt.png", "undecodable"),
    ],
)
def test_decode_image_refuses_with_the_scan_reason(corpus, name: str, reason: str):
    root, _ = corpus
    with pytest.raises(DecodeError) as info:
        decode_image(root / "mixed" / name, 8, max_pixels=CORPUS_MAX_PIXELS)
    assert info.value.reason == reason
    assert name in str(info.value)


# --------------------------------------------------------------------------------
# Decoding


def test_exif_orientation_is_applied(corpus):
    root, _ = corpus
    pixels = decode_image(root / "mixed" / "exif.jpg", 16).astype(int)
    # Stored: red left, blue right. Upright (rotated 90 CW): red top, blue bottom.
    assert pixels[1, 8, 0] > 200 and pixels[1, 8, 2] < 60
    assert pixels[14, 8, 2] > 200 and pixels[14, 8, 0] < 60


def test_sixteen_bit_is_scaled_not_clipped(corpus):
    root, _ = corpus
    pixels = decode_image(root / "mixed" / "deep.png", 3, method="nearest")
    # Columns were 0, 32896 (= 128 * 257) and 65535.
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 128, 255])
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_modes_convert_to_rgb(corpus):
    root, _ = corpus
    mixed = root / "mixed"
    red = decode_image(mixed / "cmyk.jpg", 4).astype(int)
    assert (red[..., 0] > 230).all() and (red[..., 1:] < 30).all()
    first = decode_image(mixed / "animated.gif", 4)
    assert (first == [255, 0, 0]).all()  # frame 0 is red, frame 1 blue
    rgba = decode_image(mixed / "rgba.png", 16, method="nearest")
    np.testing.assert_array_equal(rgba[:, 0], [[10, 20, 30]] * 16)  # opaque half
    np.testing.assert_array_equal(rgba[:, -1], [[255, 255, 255]] * 16)  # transparent -> white
    gray = decode_image(mixed / "gray.png", 16, method="nearest")
    assert (gray[..., 0] == gray[..., 2]).all()
    palette = decode_image(mixed / "palette.png", 16, method="nearest")
    expected = np.asarray(noise(16, 16, 5).convert("P").convert("RGB"))
    np.testing.assert_array_equal(palette, expected)
    for name in (NON_UTF8_NAME, EMOJI_NAME, "png_named.jpg"):
        assert decode_image(mixed / name, 8).shape == (8, 8, 3)


def test_decode_squashes_without_crop(tmp_path: Path):
    image = Image.new("RGB", (40, 10), (0, 0, 0))
    image.paste((255, 255, 255), (30, 0, 40, 10))  # right quarter white
    path = tmp_path / "wide.png"
    path.write_bytes(encode(image, "PNG"))
    pixels = decode_image(path, 8, method="nearest")
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert (pixels[:, 6:] == 255).all() and (pixels[:, :5] == 0).all()
    expected = np.asarray(image.resize((8, 8), Image.Resampling.BILINEAR, reducing_gap=None))
    np.testing.assert_array_equal(decode_image(path, 8), expected)
    with pytest.raises(ValueError, match="resize method"):
        decode_image(path, 8, method="squash")


# --------------------------------------------------------------------------------
# Layouts and dataset errors


def test_presplit_layout_with_validation_alias(tmp_path: Path):
    make_dataset(tmp_path / "train", {"a": 4, "b": 3})
    make_dataset(tmp_path / "validation", {"a": 2, "b": 1}, seed=1)
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.txt").write_text("hi")
    index = scan(tmp_path)
    assert index.layout == "presplit"
    assert index.classes == ("a", "b")
    assert {r.split for r in index.records} == {"train", "val"}
    assert index.ignored == ("README.txt",)
    val = sorted(r.path for r in index.records if r.split == "val")
    assert val == ["validation/a/000.png", "validation/a/001.png", "validation/b/000.png"]


def test_folders_named_like_splits_plus_others_are_classes(tmp_path: Path):
    make_dataset(tmp_path, {"train": 2, "val": 2, "other": 2})
    index = scan(tmp_path)
    assert index.layout == "flat"
    assert index.classes == ("other", "train", "val")


def test_nested_folders_belong_to_their_class(tmp_path: Path):
    make_dataset(tmp_path, {"a/deeper": 2, "b": 2})
    index = scan(tmp_path)
    assert index.counts() == {"a": 2, "b": 2}


def test_empty_class_is_named_not_kept(tmp_path: Path):
    make_dataset(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.png").write_text("nope")
    index = scan(tmp_path)
    assert index.classes == ("a", "b")
    assert index.empty_classes == ("c", "d")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "Not a folder"),
        (lambda p: p.mkdir(), "empty"),
        (
            lambda p: (p.mkdir(), (p / "x.png").write_bytes(encode(noise(4, 4, 0), "PNG"))),
            "No class folders",
        ),
    ],
)
def test_unusable_roots_raise_one_line_errors(tmp_path: Path, setup, message: str):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DatasetError, match=message) as info:
        scan(root)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------
# Fingerprint


def test_fingerprint_tracks_added_removed_and_edited_files(tmp_path: Path):
    make_dataset(tmp_path, {"a": 3, "b": 3}, fmt="BMP")
    base = scan(tmp_path).fingerprint
    assert scan(tmp_path, workers=1).fingerprint == base

    extra = tmp_path / "a" / "extra.bmp"
    extra.write_bytes(encode(noise(24, 24, 777), "BMP"))
    added = scan(tmp_path).fingerprint
    extra.unlink()
    assert scan(tmp_path).fingerprint == base
    (tmp_path / "b" / "000.bmp").unlink()
    assert scan(tmp_path).fingerprint not in (base, added)

    target = tmp_path / "a" / "001.bmp"
    before = scan(tmp_path).fingerprint
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF  # one pixel byte: same size, different content
    target.write_bytes(bytes(raw))
    assert scan(tmp_path).fingerprint != before

    bad = tmp_path / "a" / "bad.png"
    bad.write_bytes(b"x" * 10)
    with_bad = scan(tmp_path).fingerprint
    bad.write_bytes(b"x" * 11)  # skipped files count by path and size
    assert scan(tmp_path).fingerprint != with_bad


# --------------------------------------------------------------------------------
# Split


@pytest.fixture
def flat(tmp_path: Path):
    return scan(make_dataset(tmp_path, {"a": 30, "b": 12, "c": 7}, size=8))


def test_split_is_deterministic_and_seeded(flat, tmp_path: Path):
    first = make_split(flat, seed=3)
    assert make_split(flat, seed=3) == first
    assert make_split(flat, seed=4).val != first.val
    # File-system order never matters: the same files copied in another order.
    copy = tmp_path / "copy"
    for label in reversed(flat.classes):
        shutil.copytree(flat.root / label, copy / label)
    assert make_split(scan(copy), seed=3).val == first.val


def test_split_is_stratified_and_complete(flat):
    split = make_split(flat, val_fraction=0.25, test_fraction=0.2, seed=0)
    counts = flat.counts()
    for k, label in enumerate(split.classes):
        n = counts[label]
        for part, fraction in (("val", 0.25), ("test", 0.2)):
            got = int((split.labels(part) == k).sum())
            assert abs(got - n * fraction) <= 1, (label, part)
            assert got >= 1
    every = split.paths("train") + split.paths("val") + split.paths("test")
    assert sorted(every) == sorted(r.path for r in flat.records)
    assert len(set(every)) == len(every)
    assert split.labels("train").dtype == np.int64
    assert split.fingerprint == flat.fingerprint


def test_too_small_class_is_named(tmp_path: Path):
    index = scan(make_dataset(tmp_path, {"big": 10, "tiny": 1}, size=8))
    with pytest.raises(DatasetError, match="'tiny' has 1 image"):
        make_split(index, val_fraction=0.2)
    two = scan(make_dataset(tmp_path / "two", {"big": 10, "pair": 2}, size=8))
    assert make_split(two).labels("val").tolist().count(1) == 1
    with pytest.raises(DatasetError, match="'pair' has 2 images"):
        make_split(two, test_fraction=0.1)


def test_split_needs_two_classes_and_sane_fractions(tmp_path: Path):
    one = scan(make_dataset(tmp_path, {"only": 5, "empty": 0}, size=8))
    with pytest.raises(DatasetError, match="one class"):
        make_split(one)
    two = scan(make_dataset(tmp_path / "two", {"a": 5, "b": 5}, size=8))
    for kwargs in (
        {"val_fraction": 0.0},
        {"val_fraction": 1.2},
        {"test_fraction": -0.1},
        {"val_fraction": 0.6, "test_fraction": 0.4},
    ):
        with pytest.raises(DatasetError, match="fraction"):
            make_split(two, **kwargs)


def test_presplit_folders_are_honoured(tmp_path: Path):
    make_dataset(tmp_path / "train", {"a": 6, "b": 5})
    make_dataset(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    index = scan(tmp_path)
    split = make_split(index, val_fraction=0.5, seed=9)
    assert all(p.startswith("val/") for p in split.paths("val"))
    assert len(split.val) == 4 and len(split.train) == 11 and split.test == ()

    carved = make_split(index, test_fraction=0.2, seed=9)
    assert len(carved.test) == 2 and len(carved.train) == 9 and carved.val == split.val
    assert all(p.startswith("train/") for p in carved.paths("test"))

    make_dataset(tmp_path / "test", {"a": 1, "b": 1}, seed=2)
    given = make_split(scan(tmp_path), test_fraction=0.2)
    assert all(p.startswith("test/") for p in given.paths("test")) and len(given.test) == 2


def test_presplit_class_missing_from_train_is_named(tmp_path: Path):
    make_dataset(tmp_path / "train", {"a": 3, "b": 3})
    make_dataset(tmp_path / "val", {"a": 1, "c": 1}, seed=1)
    with pytest.raises(DatasetError, match="'c' has no images in the train folder"):
        make_split(scan(tmp_path))


def test_split_save_load_round_trip(tmp_path: Path):
    make_dataset(tmp_path / "d", {"a": 4, "b": 4})
    (tmp_path / "d" / "a" / NON_UTF8_NAME).write_bytes(encode(noise(8, 8, 50), "PNG"))
    split = make_split(scan(tmp_path / "d"), test_fraction=0.25, seed=5)
    path = tmp_path / "out" / "split.json"
    split.save(path)
    assert Split.load(path) == split
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left
    assert split.paths("train") == Split.load(path).paths("train")
    with pytest.raises(ValueError, match="part must be"):
        split.paths("holdout")

    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DatasetError, match="Cannot read split file"):
        Split.load(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="Cannot read split file"):
        Split.load(path)


# --------------------------------------------------------------------------------
# Decode cache


@pytest.fixture
def cached(tmp_path: Path):
    index = scan(make_dataset(tmp_path / "d", {"a": 5, "b": 4}, size=20))
    paths = [r.path for r in reversed(index.records)]  # any order, kept as given
    return index, paths, tmp_path / "cache"


def _cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "decoded").iterdir())


def test_decode_cached_returns_pixels_in_path_order(cached):
    index, paths, cache = cached
    arr = decode_cached(
        index.root,
        paths,
        12,
        cache_dir=cache,
        fingerprint=index.fingerprint,
        workers=3,
        progress=True,
    )
    assert arr.shape == (len(paths), 12, 12, 3) and arr.dtype == np.uint8
    assert not arr.flags.writeable
    for i, rel in enumerate(paths):
        np.testing.assert_array_equal(arr[i], decode_image(index.root / rel, 12))
    assert [p.suffix for p in _cache_files(cache)] == [".npy"]


def test_decode_cached_reuses_a_complete_file(cached, monkeypatch: pytest.MonkeyPatch):
    index, paths, cache = cached
    first = np.array(
        decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    )

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite a valid cache")

    monkeypatch.setattr(data._cache, "decode_image", fail)  # what decode_cached calls
    again = decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    np.testing.assert_array_equal(again, first)
    with pytest.raises(AssertionError):  # another size, method or fingerprint is another key
        decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint="other")


def test_truncated_or_wrong_cache_is_recomputed(cached):
    index, paths, cache = cached
    fresh = np.array(
        decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    )
    (target,) = _cache_files(cache)
    raw = target.read_bytes()

    target.write_bytes(raw[: len(raw) - 100])  # cut short: header fine, length not
    again = decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    np.testing.assert_array_equal(again, fresh)
    assert target.stat().st_size == len(raw)

    del again
    np.save(target, np.zeros((len(paths), 8, 8, 4), dtype=np.uint8))  # wrong shape
    again = decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    np.testing.assert_array_equal(again, fresh)

    del again
    target.write_bytes(b"garbage")
    again = decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    np.testing.assert_array_equal(again, fresh)


def test_leftover_temp_file_is_never_read(cached):
    index, paths, cache = cached
    fresh = np.array(
        decode_cached(
            index.root, paths, 8, cache_dir=cache / "fresh", fingerprint=index.fingerprint
        )
    )
    (target,) = _cache_files(cache / "fresh")
    # A crashed writer left a full-looking temp file with wrong pixels next to no target.
    (cache / "decoded").mkdir(parents=True)
    leftover = cache / "decoded" / f"{target.stem}.123-abc.tmp"
    np.save(leftover, np.zeros((len(paths), 8, 8, 3), dtype=np.uint8))
    shutil.move(str(leftover) + ".npy", leftover)
    arr = decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    np.testing.assert_array_equal(arr, fresh)


def test_failed_decode_leaves_no_cache_behind(cached):
    index, paths, cache = cached
    (index.root / paths[0]).write_bytes(b"changed after the scan")
    with pytest.raises(DecodeError) as info:
        decode_cached(index.root, paths, 8, cache_dir=cache, fingerprint=index.fingerprint)
    assert info.value.reason == "not_image"
    assert _cache_files(cache) == []


def test_decode_cached_with_no_paths(tmp_path: Path):
    arr = decode_cached(tmp_path, [], 8, cache_dir=tmp_path / "c", fingerprint="x")
    assert arr.shape == (0, 8, 8, 3) and not arr.flags.writeable
