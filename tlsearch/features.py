"""The frozen-prefix activation cache: compute a frozen prefix once, reuse it everywhere.

One entry per (backbone, weights identity, image size, cut, dataset part, view):
`frozen_features` keys a model's prefix on a `TrialData` part, runs the prefix pass on
a miss (augmented views drawn eagerly, the same for every trial) and stores the result.
Entries are float16 `.npy` files (float32 where exact values matter) with a JSON sidecar
holding their SHA-256; both are written to a temporary name and renamed into place, and
a per-entry lock file makes concurrent workers wait for the one that computes. A torn or
corrupt entry fails its checksum and is recomputed, never trusted.

With a size bound (`search --cache-max-gb`), each write evicts the least recently used
entries (a load touches its sidecar) until the data files fit, never the entry being
written nor one another process is computing. An evicted entry is recomputed when next
needed; a process that still has it memory-mapped keeps reading its pages.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsearch.atomic import atomic_write, replacing
from tlsearch.batches import map_batches

if TYPE_CHECKING:
    from tlsearch.trial_data import TrialData

__all__ = ["TRAIN_CACHE_DTYPE", "CacheStats", "FeatureCache", "feature_key", "frozen_features"]


#: Part of every key: bumped when what an entry holds changes, so entries written by
#: an older tlsearch are never reused (2: float16 no longer flushes tiny activations).
FORMAT_VERSION = 2

#: How training-side prefix activations are stored (validation's are always float32):
#: float16 halves the cache; benchmarks/RESULTS-cache-dtype.md measures what it changes.
TRAIN_CACHE_DTYPE: Any = np.float16


def feature_key(**parts: Any) -> str:
    """Stable key for an entry from named parts (order-independent)."""
    blob = json.dumps(dict(parts, format=FORMAT_VERSION), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    recomputed_corrupt: int = 0
    evicted: int = 0
    evicted_bytes: int = 0


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureCache:
    """Disk cache of prefix activations shared by trials and worker processes."""

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = Path(root) / "features"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._verified: set[tuple] = set()

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.json", self.root / f"{key}.lock"

    @contextmanager
    def _locked(self, key: str):
        lock_path = self._paths(key)[2]
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self, key: str) -> np.ndarray | None:
        """The entry as a read-only memory map, or None if missing or not intact.

        The checksum is verified once per process for a given file (same inode, size
        and mtime); a file replaced or edited since is verified again.
        """
        data_path, meta_path, _ = self._paths(key)
        if not (data_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            st = data_path.stat()
            stamp = (str(data_path), st.st_ino, st.st_size, st.st_mtime_ns, meta["sha256"])
            if stamp not in self._verified:
                if _sha256_file(data_path) != meta["sha256"]:
                    return None
                self._verified.add(stamp)
            array = np.load(data_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None
        if list(array.shape) != meta.get("shape"):
            return None
        try:
            os.utime(meta_path)  # "recently used", for the size bound's eviction order
        except OSError:
            pass  # a read-only cache is still a cache
        return array

    def contains(self, key: str) -> bool:
        return self.load(key) is not None

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray],
                       *, meta: dict[str, Any] | None = None,
                       dtype: Any = np.float16) -> tuple[np.ndarray, bool]:
        """Return (activations, hit). On a miss, `compute()` runs once across processes
        and its result is stored as `dtype` (float16 halves the disk and page cache;
        float32 where exact values matter)."""
        cached = self.load(key)
        if cached is not None:
            self.stats.hits += 1
            return cached, True
        with self._locked(key):
            cached = self.load(key)  # another worker may have filled it while we waited
            if cached is not None:
                self.stats.hits += 1
                return cached, True
            if self._paths(key)[0].exists():
                self.stats.recomputed_corrupt += 1
            self.stats.misses += 1
            self._write(key, _storable(np.asarray(compute()), dtype), meta or {})
        if self.max_bytes is not None:
            self.evict(self.max_bytes, keep=key)
        result = self.load(key)
        if result is None:  # pragma: no cover - only if the disk lies to us
            raise OSError(f"feature cache entry {key} could not be read back after writing")
        return result, False

    def size_bytes(self) -> int:
        """Bytes of the entries' data files."""
        return sum(_size(p) for p in self.root.glob("*.npy"))

    def evict(self, max_bytes: int, *, keep: str | None = None) -> int:
        """Delete least recently used entries until the data fits in `max_bytes`;
        returns the bytes freed. `keep` and entries locked by a computing process stay."""
        entries = []
        for data_path in self.root.glob("*.npy"):
            key = data_path.stem
            meta_path = self._paths(key)[1]
            try:
                used = meta_path.stat().st_mtime_ns
            except OSError:
                used = 0  # no sidecar: not a usable entry, the first to go
            entries.append((used, key, _size(data_path)))
        total = sum(size for _, _, size in entries)
        freed = 0
        for _, key, size in sorted(entries):
            if total <= max_bytes:
                break
            if key == keep or not self._try_remove(key):
                continue
            total -= size
            freed += size
            self.stats.evicted += 1
        self.stats.evicted_bytes += freed
        return freed

    def _try_remove(self, key: str) -> bool:
        data_path, meta_path, lock_path = self._paths(key)
        try:
            fh = open(lock_path, "a+")
        except OSError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # another process is computing or writing it
            try:
                data_path.unlink(missing_ok=True)  # data first: a reader then sees a miss
                meta_path.unlink(missing_ok=True)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return True

    def _write(self, key: str, array: np.ndarray, meta: dict[str, Any]) -> None:
        data_path, meta_path, _ = self._paths(key)
        with replacing(data_path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
            record = dict(meta, sha256=_sha256_file(tmp), shape=list(array.shape),
                          dtype=str(array.dtype))
            # The sidecar goes first (the data is renamed as the block ends): a reader
            # that finds new data with an old sidecar fails the checksum and recomputes
            # rather than trusting a mismatch.
            atomic_write(meta_path, json.dumps(record, sort_keys=True))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _storable(array: np.ndarray, dtype: Any) -> np.ndarray:
    """`array` as `dtype`, unless float16 would lose it: activations of a random-init
    backbone can be 1e-12 in size (float16 flushes them to zero) and others overflow
    65504. Those entries stay float32."""
    if np.dtype(dtype) == np.float16 and array.size:
        peak = float(np.max(np.abs(array)))
        if not np.isfinite(peak) or peak > 6e4 or (0 < peak < 1e-2):
            return array.astype(np.float32)
    return array.astype(dtype)


# -- the prefix pass -------------------------------------------------------------------


def frozen_features(tm: Any, data: TrialData, cache: FeatureCache, part: str, view: str, *,
                    exact: bool = False, extractor: Any = None,
                    cut: str | None = None) -> tuple[np.ndarray, bool]:
    """Frozen-prefix activations of one data part and view, from the cache or computed.

    `view` is "clean" or "<augmentation level>:<index>". With `exact`, the entry is kept
    in float32 (validation: final predictions are made from it). `cut` overrides the
    model's own cut point (with the matching `extractor`). Returns (array, hit).
    """
    from tlsearch.backbones import weights_identity

    s = tm.strategy
    paths = data.train_paths if part == "train" else data.val_paths
    key = feature_key(
        backbone=s.backbone, weights=weights_identity(tm.spec, s.weights, size=s.image_size,
                                                      seed=s.seed),
        size=s.image_size, cut=cut or tm.cut, fingerprint=data.fingerprint,
        # File names are bytes on Unix: one that is not UTF-8 arrives surrogate-escaped.
        paths=hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest(),
        view=f"{view}/float32" if exact else (
            view if np.dtype(TRAIN_CACHE_DTYPE) == np.float16
            else f"{view}/{np.dtype(TRAIN_CACHE_DTYPE).name}"),
    )

    def compute() -> np.ndarray:
        images = data.images(part, s.image_size)
        return _run_prefix(tm.traced(extractor or tm.feature_extractor()), images, view)

    return cache.get_or_compute(
        key, compute, meta={"backbone": s.backbone, "size": s.image_size, "cut": cut or tm.cut,
                            "part": part, "view": view},
        dtype=np.float32 if exact else TRAIN_CACHE_DTYPE)


def _run_prefix(forward: Any, images: np.ndarray, view: str) -> np.ndarray:
    import tensorflow as tf

    from tlsearch.model import augmentation_layers

    augment = []
    if view != "clean":
        level, index = view.split(":")
        # Views depend only on (level, index), so every trial shares them.
        augment = augmentation_layers(level, seed=1000 + 97 * int(index))

    def run(x: np.ndarray) -> Any:
        batch = tf.constant(x)
        for layer in augment:  # eagerly: inside the trace, each view would need its own
            batch = layer(batch, training=True)
        return forward(batch)

    return map_batches(run, images)
