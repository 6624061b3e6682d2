"""One way to replace a file: write a temporary beside it, fsync it, rename it over the
target, fsync the folder.

A reader (another worker, a resumed run, the report) then sees the old file or the new
one, never half of one, and a power cut after the rename keeps the new one. Every file
tlsearch rewrites in place goes through here, so there is one durability rule.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "fsync_dir", "replacing", "write_json"]


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where folders cannot be opened)."""
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


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a path (Keras's
    `save`, h5py); when the block ends without error it replaces `path` durably.

    The temporary keeps the whole file name as its suffix (`.tmp<pid>-<thread>.name`),
    so writers that check it (`.keras`, `.weights.h5`) accept it.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp{os.getpid()}-{threading.get_ident()}.{path.name}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` (text is written as UTF-8)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as indented, key-sorted JSON."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str))
