"""What a trial trains and validates on: a split's paths and labels, decoded on demand.

A `TrialData` carries no pixels and no test paths: each image size is decoded once
through the decode cache (`tlsearch.data.decode_cached`) when a trial first asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrialData"]


@dataclass(frozen=True)
class TrialData:
    """What a trial trains and validates on; pixels are decoded lazily per image size."""

    root: Path
    classes: tuple[str, ...]
    train_paths: tuple[str, ...]
    train_labels: tuple[int, ...]
    val_paths: tuple[str, ...]
    val_labels: tuple[int, ...]
    fingerprint: str
    cache_dir: Path

    @classmethod
    def from_split(cls, root: Path, split: Any, cache_dir: Path) -> TrialData:
        return cls(
            root=Path(root), classes=tuple(split.classes),
            train_paths=tuple(p for p, _ in split.train),
            train_labels=tuple(y for _, y in split.train),
            val_paths=tuple(p for p, _ in split.val), val_labels=tuple(y for _, y in split.val),
            fingerprint=split.fingerprint, cache_dir=Path(cache_dir),
        )

    def images(self, part: str, size: int) -> np.ndarray:
        # Looked up at each call: every read of a trial's pixels goes through this one
        # function, which is where a test watches (or fails) them.
        from tlsearch.data import decode_cached

        paths = self.train_paths if part == "train" else self.val_paths
        return decode_cached(self.root, list(paths), size, cache_dir=self.cache_dir,
                             fingerprint=self.fingerprint)

    def labels(self, part: str) -> np.ndarray:
        return np.asarray(self.train_labels if part == "train" else self.val_labels, dtype=np.int64)
