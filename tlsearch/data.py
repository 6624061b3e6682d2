"""The dataset: scanning and validating image files, the split, and the decode cache.

A data folder is either ``DATA_DIR/<class>/<image>`` (layout ``"flat"``) or
``DATA_DIR/{train,val[,test]}/<class>/<image>`` (layout ``"presplit"``; ``validation``
is accepted for ``val``). Class folders are walked recursively, as Keras does;
linked folders are followed, except one that leads back to a folder already walked.

`scan` opens every candidate file once, decodes it completely with Pillow and
either accepts it (`ImageRecord`, possibly with notes) or skips it with a reason
code (`SkippedFile`); a bad file never stops a scan. `decode_image` is the one way
a file becomes pixels, for training, validation and single-image prediction
alike, and `scan` runs the same code (minus the resize), so every accepted file
decodes later. Paths are stored as ``str`` relative to the root, ``/``-separated;
names that are not valid UTF-8 survive as surrogate escapes (`os.fsdecode`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "ALPHA",
    "ANIMATED",
    "BROKEN_SYMLINK",
    "CMYK",
    "DECOMPRESSION_BOMB",
    "DEFAULT_MAX_PIXELS",
    "DatasetError",
    "DecodeError",
    "EXIF_ROTATED",
    "GRAYSCALE",
    "HIGH_BIT_DEPTH",
    "HUGE_HEADER",
    "IMAGE_EXTENSIONS",
    "ImageIndex",
    "ImageRecord",
    "NOTES",
    "NOT_IMAGE",
    "PALETTE",
    "PARTS",
    "REASONS",
    "RESIZE_METHOD",
    "RESIZE_METHODS",
    "SYMLINK_LOOP",
    "SkippedFile",
    "Split",
    "TRUNCATED",
    "UNDECODABLE",
    "UNREADABLE",
    "WRONG_EXTENSION",
    "ZERO_BYTES",
    "decode_cached",
    "decode_image",
    "make_split",
    "scan",
]

#: Pillow's own default for `Image.MAX_IMAGE_PIXELS`. Pillow still refuses, on its
#: own, anything over twice its global limit, so a larger `max_pixels` is capped there.
DEFAULT_MAX_PIXELS = 89_478_485

# -- reason codes: why a file was skipped ------------------------------------------
ZERO_BYTES = "zero_bytes"
NOT_IMAGE = "not_image"
TRUNCATED = "truncated"
DECOMPRESSION_BOMB = "decompression_bomb"
#: A header that claims giant dimensions with no pixel data behind it cannot be told
#: apart from a real decompression bomb without decoding it, which is what the limit
#: exists to avoid; both are reported as `DECOMPRESSION_BOMB`.
HUGE_HEADER = DECOMPRESSION_BOMB
UNREADABLE = "unreadable"
BROKEN_SYMLINK = "broken_symlink"
SYMLINK_LOOP = "symlink_loop"
UNDECODABLE = "undecodable"

REASONS: dict[str, str] = {
    ZERO_BYTES: "The file is empty (0 bytes).",
    NOT_IMAGE: "Not an image in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF).",
    TRUNCATED: "The image is cut short: the file ends before all of its pixels.",
    DECOMPRESSION_BOMB: (
        "The header claims more pixels than the limit (a decompression bomb, or a "
        "header with giant dimensions and no data); not decoded."
    ),
    UNREADABLE: "The file could not be read (permission denied or an I/O error).",
    BROKEN_SYMLINK: "A symbolic link whose target does not exist.",
    SYMLINK_LOOP: "A symbolic link that loops back on itself.",
    UNDECODABLE: "Pillow recognised the file but could not decode it.",
}

# -- notes: accepted files that needed something done to them ------------------------
WRONG_EXTENSION = "wrong_extension"
ANIMATED = "animated"
EXIF_ROTATED = "exif_rotated"
CMYK = "cmyk"
HIGH_BIT_DEPTH = "16bit"
PALETTE = "palette"
GRAYSCALE = "grayscale"
ALPHA = "alpha"

NOTES: dict[str, str] = {
    WRONG_EXTENSION: "The extension does not match the content (read by content).",
    ANIMATED: "Animated; only the first frame is used.",
    EXIF_ROTATED: "Rotated/flipped upright as its EXIF orientation says.",
    CMYK: "CMYK colours, converted to RGB.",
    HIGH_BIT_DEPTH: "More than 8 bits per sample, scaled down to 8 bits.",
    PALETTE: "Palette colours, converted to RGB.",
    GRAYSCALE: "Grayscale, converted to RGB.",
    ALPHA: "Transparency, composited onto a white background.",
}

#: Extensions that mark a file as a candidate image, with the formats they promise.
#: Files with any other extension are listed as ignored and never opened.
IMAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    ".jpg": ("JPEG", "MPO"),
    ".jpeg": ("JPEG", "MPO"),
    ".jpe": ("JPEG", "MPO"),
    ".jfif": ("JPEG", "MPO"),
    ".png": ("PNG",),
    ".bmp": ("BMP",),
    ".gif": ("GIF",),
    ".webp": ("WEBP",),
    ".tif": ("TIFF",),
    ".tiff": ("TIFF",),
}
#: Formats accepted by content (Pillow's `im.format`). MPO is how Pillow names the
#: multi-picture JPEGs many cameras write.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF")
# Pillow's JPEG opener returns MPO images itself; "MPO" is not an opener name.
_OPENERS = tuple(f for f in ACCEPTED_FORMATS if f != "MPO")

#: Resizing squashes the whole image to ``size x size`` (no crop, aspect not kept)
#: with Pillow's BILINEAR filter and ``reducing_gap=None`` (exact, no JPEG draft mode).
RESIZE_METHOD = "bilinear"
RESIZE_METHODS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

#: The parts of a `Split`, in order.
PARTS = ("train", "val", "test")
_SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BACKGROUND = (255, 255, 255, 255)
_SPLIT_FORMAT = "tlsearch-split"
_CACHE_VERSION = 1
_STALE_TMP_S = 3600.0

T = TypeVar("T")
R = TypeVar("R")


class DatasetError(ValueError):
    """The data folder cannot be used; the message is one line, for the user."""


class DecodeError(Exception):
    """A file could not be turned into pixels.

    Attributes:
        reason: One of the reason codes in `REASONS`.
        detail: What exactly went wrong (often Pillow's message).
        path: The file, when known.
    """

    def __init__(self, reason: str, detail: str = "", path: str | os.PathLike | None = None):
        self.reason = reason
        self.detail = detail
        self.path = None if path is None else os.fspath(path)
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}" + (f" ({detail})" if detail else ""))


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


# --------------------------------------------------------------------------------
# Reading and decoding one file (shared by scan and decode_image)


@dataclass(frozen=True)
class _Decoded:
    image: Image.Image  # RGB, full resolution
    width: int
    height: int
    mode: str
    format: str
    notes: tuple[str, ...]


def _read_file(path: str | os.PathLike) -> bytes:
    """Return a regular file's bytes, or raise DecodeError with the reason."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DecodeError(BROKEN_SYMLINK, f"-> {os.readlink(path)}", path) from None
        raise DecodeError(UNREADABLE, "no such file", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError(SYMLINK_LOOP, "too many levels of symbolic links", path) from None
        raise DecodeError(UNREADABLE, exc.strerror or str(exc), path) from None
    # A FIFO or device named like an image would block or stream forever.
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(UNREADABLE, "not a regular file", path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DecodeError(UNREADABLE, exc.strerror or str(exc), path) from None
    if not data:
        raise DecodeError(ZERO_BYTES, "", path)
    return data


def _png_header_pixels(data: bytes) -> int | None:
    """Pixel count from a PNG IHDR, for files cut off before Pillow can identify them."""
    if data.startswith(_SIGNATURES[0]) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    return None


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _is_truncation(exc: BaseException) -> bool:
    # Pillow has no dedicated exception; these are its messages for data that ends
    # early ("cannot load this image" is a header with no tile data at all).
    text = str(exc).lower()
    return isinstance(exc, EOFError) or "truncated" in text or "cannot load this image" in text


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # broken EXIF is ignored, identically at scan and decode time
        return 1


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit (and 32-bit integer) samples to 0..255 instead of clipping."""
    arr = np.asarray(im)
    # Mode "I" holds 16-bit PNG/TIFF data in Pillow; larger values are clipped.
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any supported mode to RGB; transparency is composited onto white."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _mode_notes(im: Image.Image) -> list[str]:
    notes = []
    mode = im.mode
    if mode == "CMYK":
        notes.append(CMYK)
    if mode in _HIGH_DEPTH_MODES:
        notes.append(HIGH_BIT_DEPTH)
    if mode in ("P", "PA"):
        notes.append(PALETTE)
    if mode in ("1", "L", "LA", "La") or mode in _HIGH_DEPTH_MODES:
        notes.append(GRAYSCALE)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        notes.append(ALPHA)
    return notes


def _decode(data: bytes, *, name: str, max_pixels: int) -> _Decoded:
    """Decode the first frame of an image completely and convert it to upright RGB."""
    try:
        im = Image.open(io.BytesIO(data), formats=_OPENERS)
    except Image.DecompressionBombError as exc:
        raise DecodeError(DECOMPRESSION_BOMB, str(exc)) from None
    except UnidentifiedImageError:
        pixels = _png_header_pixels(data)
        if pixels is not None and pixels > max_pixels:
            raise DecodeError(
                DECOMPRESSION_BOMB, f"header claims {pixels:,} pixels, limit {max_pixels:,}"
            ) from None
        if _looks_like_image(data):
            raise DecodeError(TRUNCATED, "the file ends inside the image header") from None
        raise DecodeError(NOT_IMAGE, "content is not a supported image format") from None
    except Exception as exc:
        reason = TRUNCATED if _is_truncation(exc) else UNDECODABLE
        raise DecodeError(reason, str(exc)) from None

    # Not closed explicitly: the source is an in-memory buffer, and closing would
    # invalidate the returned image when no conversion was needed.
    width, height = im.size
    # Checked from the header, before any pixel data is decompressed.
    if width * height > max_pixels:
        raise DecodeError(
            DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height:,} pixels, limit {max_pixels:,}",
        )
    notes: list[str] = []
    suffix = os.path.splitext(name)[1].lower()
    if im.format not in IMAGE_EXTENSIONS.get(suffix, (im.format,)):
        notes.append(WRONG_EXTENSION)
    if getattr(im, "n_frames", 1) > 1:
        notes.append(ANIMATED)
    try:
        im.load()  # the first frame; LOAD_TRUNCATED_IMAGES is never set
        notes.extend(_mode_notes(im))
        mode, fmt = im.mode, im.format or ""
        upright = im
        if _orientation(im) in range(2, 9):
            upright = ImageOps.exif_transpose(im)
            notes.append(EXIF_ROTATED)
        rgb = _to_rgb(upright)
    except Exception as exc:
        reason = TRUNCATED if _is_truncation(exc) else UNDECODABLE
        raise DecodeError(reason, str(exc) or type(exc).__name__) from None
    return _Decoded(rgb, rgb.width, rgb.height, mode, fmt, tuple(notes))


def decode_image(
    path: Path,
    size: int,
    *,
    method: str = RESIZE_METHOD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Turn an image file into the pixels a model sees.

    The first frame is decoded, turned upright by its EXIF orientation, converted to
    RGB (16-bit samples scaled to 8 bits, palette/grayscale/CMYK converted,
    transparency composited onto a white background) and squashed to
    ``size x size`` without cropping.

    Args:
        path: The image file.
        size: Output height and width in pixels.
        method: A key of `RESIZE_METHODS`.
        max_pixels: Larger images (by their header) are refused, never decoded.

    Returns:
        A ``(size, size, 3)`` uint8 RGB array.

    Raises:
        DecodeError: With the reason code of `REASONS` that `scan` would give.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose from {sorted(RESIZE_METHODS)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    try:
        decoded = _decode(_read_file(path), name=os.fspath(path), max_pixels=max_pixels)
    except DecodeError as exc:
        raise DecodeError(exc.reason, exc.detail, path) from None
    image = decoded.image
    if image.size != (size, size):
        image = image.resize((size, size), resample=RESIZE_METHODS[method], reducing_gap=None)
    return np.array(image, dtype=np.uint8)


# --------------------------------------------------------------------------------
# Scanning


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


# --------------------------------------------------------------------------------
# Split


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Split:
    """Train/val(/test) assignment: ``(relative path, class index)`` pairs per part."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...] = ()
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    fingerprint: str = ""
    #: Groups of exact or near duplicates kept on one side of every split made.
    merged_groups: int = 0

    def _part(self, part: str) -> tuple[tuple[str, int], ...]:
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return getattr(self, part)

    def paths(self, part: str) -> list[str]:
        """Relative image paths of one part (``"train"``, ``"val"`` or ``"test"``)."""
        return [path for path, _ in self._part(part)]

    def labels(self, part: str) -> np.ndarray:
        """Class indices of one part, aligned with `paths`."""
        return np.asarray([label for _, label in self._part(part)], dtype=np.int64)

    def save(self, path: Path) -> None:
        """Write as JSON, atomically."""
        doc = {
            "format": _SPLIT_FORMAT,
            "version": 1,
            "classes": list(self.classes),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "fingerprint": self.fingerprint,
            "merged_groups": self.merged_groups,
            **{part: [list(item) for item in getattr(self, part)] for part in PARTS},
        }
        # ASCII JSON keeps non-UTF-8 file names (surrogate escapes) intact.
        _atomic_write_bytes(Path(path), json.dumps(doc, ensure_ascii=True, indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split written by `save`.

        Raises:
            DatasetError: The file is missing or is not a split file.
        """
        try:
            doc = json.loads(Path(path).read_bytes())
            if doc.get("format") != _SPLIT_FORMAT:
                raise ValueError("not a tlsearch split file")
            classes = tuple(str(c) for c in doc["classes"])
            parts = {part: tuple((str(p), int(i)) for p, i in doc.get(part, ())) for part in PARTS}
            for items in parts.values():
                if any(not 0 <= i < len(classes) for _, i in items):
                    raise ValueError("class index out of range")
            return cls(
                classes=classes,
                seed=int(doc["seed"]),
                val_fraction=float(doc["val_fraction"]),
                test_fraction=float(doc["test_fraction"]),
                fingerprint=str(doc["fingerprint"]),
                merged_groups=int(doc.get("merged_groups", 0)),
                **parts,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(f"Cannot read split file {path}: {exc}") from None


def _class_seed(seed: int, label: str) -> int:
    # Per-class streams that do not depend on which other classes exist.
    digest = hashlib.sha256(f"{seed}\0{label}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "big")


def _take(
    items: list[tuple[str, int]], n: int, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Seeded split of one class's items into (rest, n taken)."""
    from sklearn.model_selection import train_test_split

    if n == 0:
        return items, []
    rest, taken = train_test_split(items, test_size=n, random_state=seed, shuffle=True)
    return sorted(rest), sorted(taken)


def _part_sizes(label: str, n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Images per requested part for a class of `n`: at least one each, train the most."""
    requested = [part for part, f in fractions.items() if f > 0]
    if n < len(requested) + 1:
        parts = "/".join(["train", *requested])
        raise DatasetError(
            f"Class '{label}' has {n} image{'s' if n != 1 else ''}; splitting into {parts} "
            f"needs at least {len(requested) + 1}. Add images or remove the class folder."
        )
    sizes = {part: max(1, round(n * fractions[part])) for part in requested}
    while n - sum(sizes.values()) < 1:  # keep at least one training image
        biggest = max(sizes, key=lambda p: sizes[p])
        sizes[biggest] -= 1
    return sizes


def _take_units(
    units: list[list[tuple[str, int]]], n: int, seed: int
) -> tuple[list[list[tuple[str, int]]], list[tuple[str, int]]]:
    """Seeded choice of whole units (a duplicate group, or one image) holding about `n`
    images: (units left, images taken). With only single images, exactly `_take`."""
    if all(len(u) == 1 for u in units):
        rest, taken = _take([u[0] for u in units], n, seed)
        return [[item] for item in rest], taken
    order = np.random.RandomState(seed).permutation(len(units))
    chosen: set[int] = set()
    count = 0
    for i in order:
        # A unit that would overshoot is skipped for smaller ones; the first may
        # overshoot (a part needs an image) unless it would leave nothing to train on.
        size = len(units[i])
        if count + size <= n or (count == 0 and len(units) - len(chosen) > 1):
            chosen.add(int(i))
            count += size
        if count >= n:
            break
    taken = sorted(item for i in chosen for item in units[i])
    return [u for i, u in enumerate(units) if i not in chosen], taken


def make_split(
    index: ImageIndex,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    groups: Mapping[str, int] | None = None,
) -> Split:
    """Assign every accepted image to train, val and (optionally) test.

    Flat layout: stratified per class, each class giving ``round(n * fraction)``
    images (at least one) to every requested part, so every class is validated.
    Pre-split layout: the folders are used as given (fractions ignored), except that
    a test part requested without a test folder is carved out of train the same way.
    Paths are sorted first, so the result depends only on the files and the seed.

    `groups` (path -> group id, `tlsearch.duplicates`) keeps each group of exact or
    near duplicates on one side of every split the function makes: a group moves as
    one unit, with the class of its first path; parts then hold about, not exactly,
    their share. The split counts the groups it kept together (`merged_groups`).

    Raises:
        DatasetError: Bad fractions, fewer than two classes, or a class too small
            for the requested parts (the message names it).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if index.layout == "flat" and not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if index.layout == "flat" and val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    if not index.classes:
        raise DatasetError(f"No valid images in {index.root} ({len(index.skipped)} skipped).")
    if len(index.classes) < 2:
        raise DatasetError(
            f"Only one class has images ('{index.classes[0]}'); at least two are needed."
        )

    class_of = {label: i for i, label in enumerate(index.classes)}
    by_part: dict[str, dict[str, list[tuple[str, int]]]] = {p: {} for p in PARTS}
    for record in sorted(index.records, key=lambda r: r.path):
        part = record.split or "train"
        by_part[part].setdefault(record.label, []).append((record.path, class_of[record.label]))

    if index.layout == "flat":
        fractions = {"val": val_fraction, "test": test_fraction}
    else:
        for label in index.classes:
            if label not in by_part["train"]:
                raise DatasetError(f"Class '{label}' has no images in the train folder.")
        if not by_part["val"]:
            raise DatasetError(f"The validation folder of {index.root} has no valid images.")
        carve = test_fraction > 0 and not by_part["test"]
        fractions = {"val": 0.0, "test": test_fraction if carve else 0.0}

    units_of = _units(by_part["train"], groups or {})
    merged = sum(1 for units in units_of.values() for u in units if len(u) > 1)
    for label in index.classes:
        units = units_of.get(label, [])
        if not any(fractions.values()):
            continue
        if not units and label in by_part["train"]:
            by_part["train"][label] = []  # all its images travel with another class's group
            continue
        sizes = _part_sizes(label, sum(len(u) for u in units), fractions)
        rng_seed = _class_seed(seed, label)
        for part in ("test", "val"):
            units, taken = _take_units(units, sizes.get(part, 0), rng_seed)
            by_part[part].setdefault(label, []).extend(taken)
        by_part["train"][label] = sorted(item for u in units for item in u)

    def flatten(part: str) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(item for items in by_part[part].values() for item in items))

    return Split(
        classes=index.classes,
        train=flatten("train"),
        val=flatten("val"),
        test=flatten("test"),
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        fingerprint=index.fingerprint,
        merged_groups=merged if any(fractions.values()) else 0,
    )


def _units(
    train: dict[str, list[tuple[str, int]]], groups: Mapping[str, int]
) -> dict[str, list[list[tuple[str, int]]]]:
    """The splittable images of each class as units: a duplicate group (under the class
    of its first path) or a single image."""
    members: dict[int, list[tuple[str, str, int]]] = {}
    units: dict[str, list[list[tuple[str, int]]]] = {}
    for label, items in train.items():
        for path, y in items:
            if path in groups:
                members.setdefault(groups[path], []).append((path, label, y))
            else:
                units.setdefault(label, []).append([(path, y)])
    for group in members.values():
        group.sort()
        home = group[0][1]
        units.setdefault(home, []).append([(path, y) for path, _, y in group])
    return {label: sorted(u) for label, u in units.items()}


def _cache_key(fingerprint: str, size: int, method: str, paths: Sequence[str]) -> str:
    blob = json.dumps([_CACHE_VERSION, fingerprint, size, method, list(paths)], ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def _valid_npy(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether `path` is a complete uint8 C-order .npy of exactly `shape`."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            found_shape, fortran, dtype = header
            expected = f.tell() + int(np.prod(shape))
            length = os.fstat(f.fileno()).st_size
    except (OSError, ValueError):
        return False
    return tuple(found_shape) == shape and not fortran and dtype == np.uint8 and length == expected


def _remove_stale_tmps(directory: Path, key: str) -> None:
    # Leftovers of crashed writers; a live writer keeps touching its file.
    now = time.time()
    for tmp in directory.glob(f"{key}.*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass


def _decode_into(
    tmp: Path,
    root: Path,
    paths: Sequence[str],
    size: int,
    *,
    method: str,
    workers: int | None,
    progress: bool,
) -> None:
    """Decode into a fresh .npy at `tmp`; the memory map is released on return."""
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
    )
    # The memory map is a sparse file: on a full disk the first write to a page the
    # filesystem cannot back kills the process with SIGBUS. Reserve every block now,
    # so a full disk is an ordinary ENOSPC error instead.
    if hasattr(os, "posix_fallocate"):  # Linux and most Unixes; not macOS
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            del out
            raise OSError(exc.errno, exc.strerror, str(tmp)) from None
        finally:
            os.close(fd)

    def fill(i: int) -> None:
        out[i] = decode_image(root / paths[i], size, method=method)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _parallel_map(
            fill, range(len(paths)), workers=workers, progress=progress, description="Decoding"
        )
    out.flush()


def decode_cached(
    root: Path,
    paths: Sequence[str],
    size: int,
    *,
    cache_dir: Path,
    fingerprint: str,
    method: str = RESIZE_METHOD,
    workers: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Decode images with `decode_image` once and keep them as a memory-mapped array.

    The cache file is ``cache_dir/decoded/<key>.npy`` where the key hashes the data
    fingerprint, size, method and the ordered paths. It is written to a temporary
    file and renamed into place, and is only trusted when its header and length
    match, so a crashed or concurrent writer never yields a half-written array.

    Args:
        root: The data folder the paths are relative to.
        paths: Relative image paths; the result follows this order.
        size: Output height and width.
        cache_dir: Folder for the cache (created if needed).
        fingerprint: `ImageIndex.fingerprint` of the data the paths come from.
        method: A key of `RESIZE_METHODS`.
        workers: Decoding threads; None lets Python choose.
        progress: Show a Rich progress bar on stderr.

    Returns:
        A read-only uint8 array of shape ``(len(paths), size, size, 3)``.

    Raises:
        DecodeError: A file no longer decodes (it changed after the scan).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose from {sorted(RESIZE_METHODS)}")
    shape = (len(paths), size, size, 3)
    if not paths:  # a zero-length file cannot be memory-mapped
        empty = np.zeros(shape, dtype=np.uint8)
        empty.setflags(write=False)
        return empty
    directory = Path(cache_dir) / "decoded"
    directory.mkdir(parents=True, exist_ok=True)
    key = _cache_key(fingerprint, size, method, paths)
    target = directory / f"{key}.npy"
    if _valid_npy(target, shape):
        return np.load(target, mmap_mode="r")

    _remove_stale_tmps(directory, key)
    tmp = directory / f"{key}.{os.getpid()}-{uuid.uuid4().hex}.tmp"
    try:
        _decode_into(
            tmp, Path(root), paths, size, method=method, workers=workers, progress=progress
        )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return np.load(target, mmap_mode="r")
