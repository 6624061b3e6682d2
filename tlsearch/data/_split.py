"""The train/validation/test split: stratified, seeded, duplicate groups kept on one
side, saved beside a study so every resume trains on the same images."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlsearch.atomic import atomic_write
from tlsearch.data._scan import PARTS, DatasetError, ImageIndex

_SPLIT_FORMAT = "tlsearch-split"


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
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), json.dumps(doc, ensure_ascii=True, indent=1))

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
