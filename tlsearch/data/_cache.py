"""The decode cache: a split's images decoded and resized once per size and method,
stored as `.npy` files keyed by the dataset fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tlsearch.atomic import fsync_dir
from tlsearch.data._images import RESIZE_METHOD, RESIZE_METHODS, decode_image
from tlsearch.data._scan import _parallel_map

_CACHE_VERSION = 1


_STALE_TMP_S = 3600.0


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
    # Its own temporary name (not `tlsearch.atomic.replacing`'s): a killed decode's
    # leftovers are found and removed by key; the durability rule is the same.
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
    fsync_dir(directory)
    return np.load(target, mmap_mode="r")
