"""Dataset diagnostics: what is in a data folder and what will go wrong with it.

`diagnose` builds a `DoctorReport` from `tlsearch.data` (the same scan and the same
split a search would use): counts per class and split, imbalance, classes too small
to learn, skipped files by reason, exact and near duplicates (within a class,
across classes = conflicting labels, across splits = leakage), image sizes, colour
modes and plain-language recommendations. `render` prints it with Rich.
"""

from __future__ import annotations

import dataclasses
import statistics
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tlsearch.data import (
    DEFAULT_MAX_PIXELS,
    NOTES,
    REASONS,
    DatasetError,
    ImageIndex,
    ImageRecord,
    SkippedFile,
    Split,
    make_split,
    scan,
)
from tlsearch.duplicates import NEAR_DUPLICATE_DISTANCE, DuplicateSets, find_duplicates

__all__ = [
    "NEAR_DUPLICATE_DISTANCE",
    "SMALL_CLASS",
    "ClassCounts",
    "DoctorReport",
    "DuplicateGroup",
    "SizeStats",
    "SkippedGroup",
    "diagnose",
    "render",
]

#: Classes with fewer accepted images than this are reported as too small to learn.
SMALL_CLASS = 5
#: Imbalance ratios from here on are reported as imbalanced.
IMBALANCE_RATIO = 1.5
#: Images with a side shorter than this are reported as tiny.
TINY_SIDE = 32

_ASPECT_BUCKETS = (  # (label, upper bound of width/height)
    ("taller than 1:2", 0.5),
    ("1:2 to 3:4", 0.75),
    ("3:4 to 4:3", 4 / 3),
    ("4:3 to 2:1", 2.0),
    ("wider than 2:1", float("inf")),
)
_WITHIN_CLASS = "within_class"
_ACROSS_CLASSES = "across_classes"
_ACROSS_SPLITS = "across_splits"
# Bidirectional controls can make a file name display as a different one (U+202E).
_BIDI_CONTROLS = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


@dataclass(frozen=True)
class ClassCounts:
    """Accepted images of one class, per split part."""

    label: str
    train: int
    val: int
    test: int
    total: int


@dataclass(frozen=True)
class SkippedGroup:
    """All files skipped for one reason."""

    reason: str
    explanation: str
    files: tuple[SkippedFile, ...]


@dataclass(frozen=True)
class DuplicateGroup:
    """Images with identical bytes (``"exact"``) or perceptual hashes within reach (``"near"``).

    `scopes` holds ``"across_classes"`` (conflicting labels) and/or ``"across_splits"``
    (leakage), or ``"within_class"`` when neither applies.
    """

    kind: str
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    parts: tuple[str | None, ...]
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class SizeStats:
    """Width/height distribution of accepted images (as displayed, after EXIF rotation)."""

    width_min: int
    width_median: float
    width_max: int
    height_min: int
    height_median: float
    height_max: int
    aspect: tuple[tuple[str, int], ...]  # (width:height bucket, images)
    tiny: int  # images with a side < TINY_SIDE


@dataclass(frozen=True)
class DoctorReport:
    """Everything `diagnose` found. `problem` is set exactly when `usable` is False."""

    data_dir: str
    usable: bool
    problem: str | None
    layout: str | None = None
    fingerprint: str | None = None
    accepted: int = 0
    classes: tuple[ClassCounts, ...] = ()
    empty_classes: tuple[str, ...] = ()
    imbalance_ratio: float | None = None
    small_classes: tuple[str, ...] = ()
    skipped: tuple[SkippedGroup, ...] = ()
    ignored: tuple[str, ...] = ()
    duplicates: tuple[DuplicateGroup, ...] = ()
    leaked_val: int = 0  # val images duplicating (exactly or nearly) a training image
    leaked_test: int = 0
    conflicting_labels: int = 0  # duplicate groups whose images carry different labels
    sizes: SizeStats | None = None
    modes: tuple[tuple[str, int], ...] = ()
    formats: tuple[tuple[str, int], ...] = ()
    notes: tuple[tuple[str, int], ...] = ()
    recommendations: tuple[str, ...] = ()

    @property
    def skipped_count(self) -> int:
        return sum(len(group.files) for group in self.skipped)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; undecodable bytes in names appear as ``\\xNN``."""
        return _json_safe(dataclasses.asdict(self))


# --------------------------------------------------------------------------------
# Diagnosis


def diagnose(
    data_dir: Path,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> DoctorReport:
    """Examine a data folder with the scan and split a search would use.

    Never raises for an unusable folder: the report then has ``usable=False`` and a
    one-line `problem`, plus whatever could still be measured.

    Args:
        data_dir: The data folder.
        val_fraction, test_fraction, seed: As for `tlsearch.data.make_split`; used to
            find leakage across the parts the search would train and validate on.
        max_pixels: As for `tlsearch.data.scan`.
        progress: Show Rich progress bars on stderr.
    """
    data_dir = Path(data_dir)
    try:
        index = scan(data_dir, max_pixels=max_pixels, progress=progress)
    except DatasetError as exc:
        return DoctorReport(data_dir=str(data_dir), usable=False, problem=str(exc))
    problem = None
    split: Split | None = None
    sets = find_duplicates(index, progress=progress)
    try:  # the split a search makes: duplicates kept on one side
        split = make_split(index, val_fraction=val_fraction, test_fraction=test_fraction,
                           seed=seed, groups=sets.groups())
    except DatasetError as exc:
        problem = str(exc)
    part_of = _parts(index, split)

    classes = _class_counts(index, part_of)
    totals = {c.label: c.total for c in classes}
    ratio = max(totals.values()) / min(totals.values()) if len(totals) >= 2 else None
    duplicates = _duplicate_groups(sets, part_of)
    leaked_val, leaked_test = _leaks(duplicates)
    report = DoctorReport(
        data_dir=str(data_dir),
        usable=problem is None,
        problem=problem,
        layout=index.layout,
        fingerprint=index.fingerprint,
        accepted=len(index.records),
        classes=classes,
        empty_classes=index.empty_classes,
        imbalance_ratio=round(ratio, 2) if ratio is not None else None,
        small_classes=tuple(c.label for c in classes if c.total < SMALL_CLASS),
        skipped=_skipped_groups(index.skipped),
        ignored=index.ignored,
        duplicates=duplicates,
        leaked_val=leaked_val,
        leaked_test=leaked_test,
        conflicting_labels=sum(_ACROSS_CLASSES in d.scopes for d in duplicates),
        sizes=_size_stats(index.records),
        modes=_tally(r.mode for r in index.records),
        formats=_tally(r.format for r in index.records),
        notes=_tally(note for r in index.records for note in r.notes),
    )
    return dataclasses.replace(report, recommendations=_recommend(report))


def _parts(index: ImageIndex, split: Split | None) -> dict[str, str | None]:
    """Split part per path: the split's when there is one, else the folders' (if any)."""
    if split is not None:
        return {path: part for part in ("train", "val", "test") for path in split.paths(part)}
    return {r.path: r.split for r in index.records}


def _class_counts(index: ImageIndex, part_of: dict[str, str | None]) -> tuple[ClassCounts, ...]:
    counts: dict[str, Counter] = {label: Counter() for label in index.classes}
    for record in index.records:
        counts[record.label][part_of.get(record.path)] += 1
    return tuple(
        ClassCounts(label, c["train"], c["val"], c["test"], sum(c.values()))
        for label, c in counts.items()
    )


def _skipped_groups(skipped: tuple[SkippedFile, ...]) -> tuple[SkippedGroup, ...]:
    by_reason: dict[str, list[SkippedFile]] = defaultdict(list)
    for item in skipped:
        by_reason[item.reason].append(item)
    order = sorted(by_reason, key=lambda reason: (-len(by_reason[reason]), reason))
    return tuple(SkippedGroup(r, REASONS.get(r, r), tuple(by_reason[r])) for r in order)


def _group(kind: str, members: list[ImageRecord], part_of: dict[str, str | None]):
    members = sorted(members, key=lambda r: r.path)
    labels = tuple(r.label for r in members)
    parts = tuple(part_of.get(r.path) for r in members)
    scopes = []
    if len(set(labels)) > 1:
        scopes.append(_ACROSS_CLASSES)
    if len({p for p in parts if p is not None}) > 1:
        scopes.append(_ACROSS_SPLITS)
    return DuplicateGroup(
        kind, tuple(r.path for r in members), labels, parts, tuple(scopes) or (_WITHIN_CLASS,)
    )


def _duplicate_groups(sets: DuplicateSets, part_of: dict[str, str | None]
                      ) -> tuple[DuplicateGroup, ...]:
    return tuple(sorted([_group("exact", m, part_of) for m in sets.exact]
                        + [_group("near", m, part_of) for m in sets.near],
                        key=lambda g: (g.kind != "exact", g.paths)))


def _leaks(duplicates: tuple[DuplicateGroup, ...]) -> tuple[int, int]:
    """Distinct val and test images that (nearly) duplicate a training image."""
    val: set[str] = set()
    test: set[str] = set()
    for group in duplicates:
        if "train" not in group.parts:
            continue
        for path, part in zip(group.paths, group.parts, strict=True):
            {"val": val, "test": test}.get(part, set()).add(path)
    return len(val), len(test)


def _size_stats(records: tuple[ImageRecord, ...]) -> SizeStats | None:
    if not records:
        return None
    widths = [r.width for r in records]
    heights = [r.height for r in records]
    ratios = np.array(widths, dtype=float) / np.array(heights, dtype=float)
    edges = [bound for _, bound in _ASPECT_BUCKETS[:-1]]
    bucket = np.digitize(ratios, edges, right=True)
    aspect = tuple(
        (label, int((bucket == k).sum())) for k, (label, _) in enumerate(_ASPECT_BUCKETS)
    )
    return SizeStats(
        width_min=min(widths),
        width_median=float(statistics.median(widths)),
        width_max=max(widths),
        height_min=min(heights),
        height_median=float(statistics.median(heights)),
        height_max=max(heights),
        aspect=aspect,
        tiny=sum(min(w, h) < TINY_SIDE for w, h in zip(widths, heights, strict=True)),
    )


def _tally(values) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _recommend(report: DoctorReport) -> tuple[str, ...]:
    """Plain-language advice, most important first."""
    out: list[str] = []
    if report.problem:
        out.append(f"Not usable yet: {report.problem}")
    ratio = report.imbalance_ratio
    if ratio is not None:
        if ratio >= IMBALANCE_RATIO:
            most = max(report.classes, key=lambda c: c.total)
            least = min(report.classes, key=lambda c: c.total)
            out.append(
                f"Imbalance ratio {ratio:.1f}:1 ('{most.label}' {most.total} vs "
                f"'{least.label}' {least.total}) — imbalance remedies will be searched."
            )
        else:
            out.append(f"Classes are balanced (ratio {ratio:.1f}:1).")
    for label in report.small_classes:
        total = next(c.total for c in report.classes if c.label == label)
        out.append(
            f"Class '{label}' has only {_plural(total, 'image')}: too few to learn or "
            f"to validate; add more (aim for at least 20)."
        )
    if report.layout == "presplit":
        for c in report.classes:
            if c.total and not c.val:
                out.append(
                    f"Class '{c.label}' has no validation images: its accuracy cannot be measured."
                )
    for label in report.empty_classes:
        out.append(f"Folder '{label}' has no valid images and is left out.")
    if report.skipped:
        reasons = ", ".join(f"{len(g.files)} {g.reason}" for g in report.skipped)
        out.append(
            f"{_plural(report.skipped_count, 'file')} skipped ({reasons}); "
            "they are left out of training."
        )
    for part, count in (("validation", report.leaked_val), ("test", report.leaked_test)):
        if count:
            verb = "duplicates" if count == 1 else "duplicate"
            out.append(
                f"{_plural(count, part + ' image')} {verb} training images (leakage): "
                f"{part} scores will be optimistic. Remove them from one side."
            )
    if report.conflicting_labels:
        out.append(
            f"{_plural(report.conflicting_labels, 'duplicate group')} span more than one "
            "class (conflicting labels): fix the labels, the model cannot be right on both."
        )
    copies = sum(
        len(d.paths) - 1
        for d in report.duplicates
        if d.kind == "exact" and d.scopes == (_WITHIN_CLASS,)
    )
    if copies:
        out.append(
            f"{_plural(copies, 'redundant exact copy')} within a class: they over-weight "
            "those images; consider removing them."
        )
    sizes = report.sizes
    if sizes is not None and report.accepted:
        square = dict(sizes.aspect).get("3:4 to 4:3", 0)
        far = report.accepted - square
        if far / report.accepted > 0.1:
            out.append(
                f"{100 * far / report.accepted:.0f}% of images are far from square; images "
                "are squashed to a square (no crop), which distorts shapes."
            )
        if sizes.tiny:
            out.append(
                f"{_plural(sizes.tiny, 'image')} smaller than {TINY_SIDE} px on a side will be "
                "upscaled (blurry)."
            )
    if report.ignored:
        out.append(
            f"{_plural(len(report.ignored), 'file')} without an image extension ignored "
            f"(e.g. '{report.ignored[0]}')."
        )
    if report.usable and len(out) <= 1:
        out.append("No problems found.")
    return tuple(out)


# --------------------------------------------------------------------------------
# Output


def _json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return _undecodable_as_escapes(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _undecodable_as_escapes(text: str) -> str:
    """Turn surrogate escapes (non-UTF-8 bytes in file names) into visible ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that never came from a file name
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _display(text: str) -> str:
    """Dataset text made safe for a terminal: control and bidi characters as escapes."""
    text = _undecodable_as_escapes(text)
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) == "Cc" or ord(ch) in _BIDI_CONTROLS
        else ch
        for ch in text
    )


def _text(value: object, style: str = "") -> Text:
    # Text objects are never parsed for markup or :emoji: codes, so a class named
    # "[bold]x[/bold]" prints literally (stronger than rich.markup.escape).
    return Text(_display(str(value)), style=style)


def _examples(paths: list[str], limit: int = 3) -> Text:
    shown = ", ".join(paths[:limit]) + (
        f" (+{len(paths) - limit} more)" if len(paths) > limit else ""
    )
    return _text(shown, "dim")


def render(report: DoctorReport, console: Console) -> None:
    """Print the report as Rich tables; dataset strings are shown literally and safely."""
    title = Text("Dataset doctor: ", style="bold") + _text(report.data_dir)
    console.print(title)
    if report.layout:
        console.print(
            Text.assemble(
                ("Layout ", "dim"),
                report.layout,
                ("  accepted ", "dim"),
                str(report.accepted),
                ("  skipped ", "dim"),
                str(report.skipped_count),
                ("  ignored ", "dim"),
                str(len(report.ignored)),
            )
        )
    if report.usable:
        console.print(Text("Usable: yes", style="bold green"))
    else:
        console.print(Text("Usable: no — ", style="bold red") + _text(report.problem or ""))

    if report.classes:
        table = Table(title="Images per class", title_justify="left")
        table.add_column("class")
        show_parts = [
            p for p in ("train", "val", "test") if any(getattr(c, p) for c in report.classes)
        ]
        for part in show_parts:
            table.add_column(part, justify="right")
        table.add_column("total", justify="right")
        for c in report.classes:
            style = "yellow" if c.label in report.small_classes else ""
            cells = [str(getattr(c, p)) for p in show_parts]
            table.add_row(_text(c.label, style), *cells, str(c.total))
        console.print(table)
        if report.imbalance_ratio is not None:
            console.print(
                Text(f"Imbalance ratio (largest/smallest): {report.imbalance_ratio:.1f}:1")
            )

    if report.skipped:
        table = Table(title="Skipped files", title_justify="left")
        for column in ("reason", "files", "meaning", "examples"):
            table.add_column(column, justify="right" if column == "files" else "left")
        for group in report.skipped:
            table.add_row(
                group.reason,
                str(len(group.files)),
                group.explanation,
                _examples([f.path for f in group.files]),
            )
        console.print(table)

    if report.duplicates:
        table = Table(title="Duplicates", title_justify="left")
        for column in ("kind", "scope", "groups", "images", "example"):
            table.add_column(column, justify="right" if column in ("groups", "images") else "left")
        buckets: dict[tuple[str, str], list[DuplicateGroup]] = defaultdict(list)
        for group in report.duplicates:
            buckets[(group.kind, ", ".join(group.scopes))].append(group)
        for (kind, scope), groups in sorted(buckets.items()):
            first = groups[0]
            example = " = ".join(
                f"{p} ({lab})" for p, lab in zip(first.paths, first.labels, strict=True)
            )
            table.add_row(
                kind,
                scope,
                str(len(groups)),
                str(sum(len(g.paths) for g in groups)),
                _examples([example], 1),
            )
        console.print(table)

    if report.sizes is not None:
        s = report.sizes
        table = Table(title="Images", title_justify="left", show_header=False)
        table.add_column("what", style="dim")
        table.add_column("value")
        table.add_row("width min/median/max", f"{s.width_min} / {s.width_median:g} / {s.width_max}")
        table.add_row(
            "height min/median/max", f"{s.height_min} / {s.height_median:g} / {s.height_max}"
        )
        table.add_row("aspect (width:height)", ", ".join(f"{k}: {v}" for k, v in s.aspect if v))
        table.add_row("colour modes", _text(", ".join(f"{k}: {v}" for k, v in report.modes)))
        table.add_row("formats", _text(", ".join(f"{k}: {v}" for k, v in report.formats)))
        if report.notes:
            table.add_row(
                "notes",
                "\n".join(f"{k}: {v} — {NOTES.get(k, '')}" for k, v in report.notes),
            )
        console.print(table)

    if report.recommendations:
        console.print(Text("Recommendations", style="bold"))
        for line in report.recommendations:
            console.print(Text("  • ") + _text(line))
