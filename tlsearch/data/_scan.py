"""Scanning a data folder: every candidate file opened and decoded once, accepted as an
`ImageRecord` (possibly with notes) or skipped with a reason code; the index's
fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from PIL import Image

from tlsearch.data._images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SYMLINK_LOOP,
    UNREADABLE,
    DecodeError,
    _decode,
    _read_file,
)

#: The parts of a `Split`, in order.
PARTS = ("train", "val", "test")


_SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


T = TypeVar("T")


R = TypeVar("R")


class DatasetError(ValueError):
    """The data folder cannot be used; the message is one line, for the user."""


@dataclass(frozen=True)
class ImageRecord:
    """An accepted image. Width and height are as displayed (after EXIF rotation)."""

    path: str
    label: str
    split: str | None
    width: int
    height: int
    mode: str
    format: str
    size_bytes: int
    sha256: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedFile:
    """A candidate image that was left out, with its reason code (see `REASONS`)."""

    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ImageIndex:
    """Everything `scan` found under a data folder.

    `classes` holds only classes with at least one accepted image; class folders
    without any are named in `empty_classes`. `ignored` lists files that are not
    candidate images (by extension); hidden files are not listed at all.
    """

    root: Path
    layout: str
    classes: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    skipped: tuple[SkippedFile, ...]
    ignored: tuple[str, ...]
    fingerprint: str
    empty_classes: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        """Accepted images per class, in class order."""
        out = dict.fromkeys(self.classes, 0)
        for record in self.records:
            out[record.label] += 1
        return out


def _parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None,
    progress: bool,
    description: str,
) -> list[R]:
    """`fn` over `items` in a thread pool, results in input order, optional progress bar."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fn, items)
        if not progress:
            return list(results)
        from rich.console import Console
        from rich.progress import Progress

        # stderr keeps stdout clean for machine-readable output.
        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=len(items))
            out = []
            for result in results:
                out.append(result)
                bar.advance(task)
            return out


def _entries(directory: str) -> list[os.DirEntry]:
    """Visible directory entries, sorted by name so the scan never depends on disk order."""
    with os.scandir(directory) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:  # a looping link is not a directory; it is checked as a file
        return False


@dataclass
class _Walk:
    """What walking the folders produced, before any file is opened."""

    candidates: list[tuple[str, str, str | None]] = field(default_factory=list)
    skipped: list[tuple[SkippedFile, int]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _walk_class(root: str, rel_dir: str, label: str, split: str | None, walk: _Walk) -> None:
    """Collect candidate images under one class folder, recursively."""
    seen: set[tuple[int, int]] = set()
    stack = [rel_dir]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel)
        try:
            st = os.stat(full)
            entries = _entries(full)
        except OSError as exc:
            walk.skipped.append((SkippedFile(rel, UNREADABLE, exc.strerror or str(exc)), 0))
            continue
        # A directory symlink pointing at an ancestor would recurse forever.
        if (st.st_dev, st.st_ino) in seen:
            detail = "directory link leads back to a folder already scanned"
            walk.skipped.append((SkippedFile(rel, SYMLINK_LOOP, detail), 0))
            continue
        seen.add((st.st_dev, st.st_ino))
        for entry in reversed(entries):  # the stack pops in name order
            child = f"{rel}/{entry.name}"
            if _is_dir(entry):
                stack.append(child)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                walk.candidates.append((child, label, split))
            else:
                walk.ignored.append(child)


def _check(
    root: str, candidate: tuple[str, str, str | None], max_pixels: int
) -> tuple[ImageRecord | SkippedFile, int]:
    """Accept or skip one candidate; returns the result and the size for the fingerprint."""
    rel, label, split = candidate
    full = os.path.join(root, rel)
    try:
        data = _read_file(full)
        decoded = _decode(data, name=rel, max_pixels=max_pixels)
    except DecodeError as exc:
        try:
            size = os.lstat(full).st_size
        except OSError:
            size = 0
        return SkippedFile(rel, exc.reason, exc.detail), size
    record = ImageRecord(
        path=rel,
        label=label,
        split=split,
        width=decoded.width,
        height=decoded.height,
        mode=decoded.mode,
        format=decoded.format,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        notes=decoded.notes,
    )
    return record, len(data)


def _fingerprint(records: Iterable[ImageRecord], skipped: Iterable[tuple[SkippedFile, int]]) -> str:
    entries = [["image", r.path, r.label, r.sha256] for r in records]
    entries += [["skipped", s.path, size] for s, size in skipped]
    entries.sort(key=lambda e: e[1])
    # ensure_ascii escapes the surrogates that stand for non-UTF-8 bytes in names.
    blob = json.dumps(["tlsearch-index-v1", entries], ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def scan(
    root: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    progress: bool = False,
) -> ImageIndex:
    """Find, open and validate every candidate image under a data folder.

    Args:
        root: The data folder (flat or pre-split layout, see the module docstring).
        max_pixels: Images whose header claims more pixels are skipped unread.
        workers: Threads checking files (I/O bound); None lets Python choose.
        progress: Show a Rich progress bar on stderr.

    Raises:
        DatasetError: The folder is missing, not a folder, unreadable, empty or has
            no class folders. Too few classes is left to `make_split`.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"Data folder does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"Not a folder: {root}")
    base = os.fspath(root)
    try:
        top = _entries(base)
    except OSError as exc:
        raise DatasetError(f"Cannot read data folder {root}: {exc.strerror or exc}") from None
    if not top:
        raise DatasetError(f"Data folder is empty: {root}")

    walk = _Walk()
    top_dirs = [e.name for e in top if _is_dir(e)]
    walk.ignored.extend(e.name for e in top if not _is_dir(e))
    splits = {name: _SPLIT_FOLDERS.get(name.lower()) for name in top_dirs}
    parts = sorted(str(part) for part in splits.values())  # "None" for a non-split name
    layout = "presplit" if parts in (["train", "val"], ["test", "train", "val"]) else "flat"

    class_dirs: list[tuple[str, str, str | None]] = []  # (relative dir, label, split)
    if layout == "flat":
        class_dirs = [(name, name, None) for name in top_dirs]
    else:
        for name in top_dirs:
            try:
                entries = _entries(os.path.join(base, name))
            except OSError as exc:
                walk.skipped.append((SkippedFile(name, UNREADABLE, exc.strerror or str(exc)), 0))
                continue
            for entry in entries:
                if _is_dir(entry):
                    class_dirs.append((f"{name}/{entry.name}", entry.name, splits[name]))
                else:
                    walk.ignored.append(f"{name}/{entry.name}")
    if not class_dirs:
        raise DatasetError(
            f"No class folders in {root}: expected DATA_DIR/<class>/<image> "
            "or DATA_DIR/train|val/<class>/<image>."
        )
    for rel_dir, label, split in class_dirs:
        _walk_class(base, rel_dir, label, split, walk)

    def check(candidate: tuple[str, str, str | None]) -> tuple[ImageRecord | SkippedFile, int]:
        return _check(base, candidate, max_pixels)

    with warnings.catch_warnings():
        # Pillow warns on open above its own limit; `max_pixels` decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = _parallel_map(
            check, walk.candidates, workers=workers, progress=progress, description="Scanning"
        )
    records = sorted((r for r, _ in results if isinstance(r, ImageRecord)), key=lambda r: r.path)
    skipped = walk.skipped + [(r, n) for r, n in results if isinstance(r, SkippedFile)]
    skipped.sort(key=lambda item: item[0].path)
    classes = tuple(sorted({r.label for r in records}))
    empty = tuple(sorted({label for _, label, _ in class_dirs} - set(classes)))
    return ImageIndex(
        root=root,
        layout=layout,
        classes=classes,
        records=tuple(records),
        skipped=tuple(s for s, _ in skipped),
        ignored=tuple(sorted(walk.ignored)),
        fingerprint=_fingerprint(records, skipped),
        empty_classes=empty,
    )
