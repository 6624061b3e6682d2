"""Exact and perceptual near-duplicate images: found once, used by the split and the doctor.

Exact duplicates share their bytes (the scan's sha256). Near duplicates are images whose
64-bit perceptual hashes (`imagehash.phash` of the image decoded at 64 px) differ in at
most `NEAR_DUPLICATE_DISTANCE` bits: resized, recompressed or lightly edited copies. A
search keeps every set on one side of each split (`tlsearch.data.make_split` takes
them as groups), so no validation or test image has a copy in training; `doctor`
reports the sets with their labels and parts.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from tlsearch.data import DecodeError, ImageIndex, ImageRecord, decode_image
from tlsearch.data._scan import _parallel_map

__all__ = ["NEAR_DUPLICATE_DISTANCE", "DuplicateSets", "find_duplicates"]

#: Largest Hamming distance between 64-bit perceptual hashes counted as near-duplicate.
NEAR_DUPLICATE_DISTANCE = 4

_HASH_DECODE_SIZE = 64  # phash works on 32x32 grayscale; more is wasted work
_HASH_CHUNK = 512  # rows per block of the pairwise distance matrix
# phash sets a bit per DCT coefficient above the median, so about 32 of 64 bits are
# set; far fewer means ties at the median (a nearly uniform image), where the hash
# says nothing and would match every other plain image.
_HASH_MIN_BITS = 16


class DuplicateSets:
    """The exact and the near sets of one index (each a list of 2+ records)."""

    def __init__(self, exact: list[list[ImageRecord]], near: list[list[ImageRecord]]) -> None:
        self.exact, self.near = exact, near

    def groups(self) -> dict[str, int]:
        """Path -> group id for every image in a set; sets that share an image (an
        exact copy of a near duplicate) are one group."""
        parent: dict[str, str] = {}

        def root(path: str) -> str:
            while parent.setdefault(path, path) != path:
                parent[path] = parent[parent[path]]
                path = parent[path]
            return path

        for members in self.exact + self.near:
            first = root(members[0].path)
            for record in members[1:]:
                parent[root(record.path)] = first
        roots = sorted({root(p) for p in parent})
        ids = {r: i for i, r in enumerate(roots)}
        return {path: ids[root(path)] for path in parent}


def find_duplicates(index: ImageIndex, *, progress: bool = False) -> DuplicateSets:
    """Exact sets (same bytes) and near sets (perceptual hashes within reach)."""
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in index.records:
        by_hash[record.sha256].append(record)
    exact = [sorted(m, key=lambda r: r.path) for m in by_hash.values() if len(m) > 1]
    return DuplicateSets(sorted(exact, key=lambda m: m[0].path),
                         _near_sets(index, progress=progress))


def _phash(root: Path, record: ImageRecord) -> int | None:
    try:
        pixels = decode_image(root / record.path, _HASH_DECODE_SIZE)
    except DecodeError:  # changed since the scan; it takes no part
        return None
    bits = imagehash.phash(Image.fromarray(pixels)).hash.flatten()
    if bits.sum() < _HASH_MIN_BITS:  # too plain to compare; exact copies are still found
        return None
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _near_sets(index: ImageIndex, *, progress: bool) -> list[list[ImageRecord]]:
    """Connected sets of images whose hashes differ in at most NEAR_DUPLICATE_DISTANCE bits.

    Exact copies are not counted as near pairs, and nearly uniform images (whose hash
    is meaningless) are left out. Pairwise distances are computed in row blocks,
    which is quick for tens of thousands of images.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    hashes = _parallel_map(lambda r: _phash(index.root, r), index.records, workers=None,
                           progress=progress, description="Hashing")
    records = [r for r, h in zip(index.records, hashes, strict=True) if h is not None]
    if len(records) < 2:
        return []
    bits = np.array([h for h in hashes if h is not None], dtype=np.uint64)
    content = np.unique([r.sha256 for r in records], return_inverse=True)[1]
    rows, cols = [], []
    for start in range(0, len(bits), _HASH_CHUNK):
        block = bits[start : start + _HASH_CHUNK]
        near = np.bitwise_count(block[:, None] ^ bits[None, :]) <= NEAR_DUPLICATE_DISTANCE
        i, j = np.nonzero(near)
        i += start
        keep = (j > i) & (content[i] != content[j])
        rows.append(i[keep])
        cols.append(j[keep])
    i, j = np.concatenate(rows), np.concatenate(cols)
    if not len(i):
        return []
    n = len(records)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[ImageRecord]] = defaultdict(list)
    for node in np.union1d(i, j):
        members[int(component[node])].append(records[node])
    sets = [sorted(m, key=lambda r: r.path) for m in members.values()]
    return sorted(sets, key=lambda m: m[0].path)
