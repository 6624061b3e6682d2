"""A trial's kept model on disk: the whole Keras model, or only its head.

The best few trials of a study keep their final weights for `tlsearch export`, the
held-out scoring, soups and ensembles. A trial that trained only its head left the
backbone exactly as built from its weights file, so it keeps only the head
(`head.weights.h5`, Keras's own weights format) and `head.json` (strategy, classes and
the sha256 of the backbone's weights); loading builds the same backbone from the same
weights, checks the digest and loads the head: the same model, byte for byte, as
`model.keras` would have held. Saving `model.keras` cost 0.59 s per kept trial for
EfficientNet-Lite0 on 2 cores (the whole backbone's config and 4.7 M weights), as much
as a head-only trial's training; the head is 5 k-330 k weights. The price: loading
needs the backbone's weights where the search found them (ImageNet: its weights package;
`--weights PATH`: that file), which the digest checks and a clear error names.

Everything else keeps `model.keras`, loaded with `safe_mode=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.atomic import atomic_write, replacing

__all__ = ["HEAD_FILE", "HEAD_META", "MODEL_FILE", "drop", "exists", "load", "save", "stamp",
           "weights_digest"]

MODEL_FILE = "model.keras"
HEAD_FILE = "head.weights.h5"
HEAD_META = "head.json"
#: Bumped when the head-only layout changes: an older one is not loaded.
FORMAT = 1


def weights_digest(arrays: list[np.ndarray]) -> str:
    """sha256 over the shapes and bytes of a list of weight arrays, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def exists(trial_dir: Path) -> bool:
    """Whether the trial kept a model (either form)."""
    return (trial_dir / MODEL_FILE).is_file() or (
        (trial_dir / HEAD_META).is_file() and (trial_dir / HEAD_FILE).is_file())


def stamp(trial_dir: Path) -> int | None:
    """When the kept model was written (ns), or None: a changed model is scored again."""
    for name in (MODEL_FILE, HEAD_FILE):
        if name == MODEL_FILE or exists(trial_dir):
            try:
                return os.stat(trial_dir / name).st_mtime_ns
            except FileNotFoundError:
                continue
    return None


def drop(trial_dir: Path) -> None:
    for name in (HEAD_META, HEAD_FILE, MODEL_FILE):  # the manifest first: never half a pair
        (trial_dir / name).unlink(missing_ok=True)


def save(trial_dir: Path, result: Any) -> None:
    """Keep a complete trial's final model: only its head where `result.backbone_digest`
    says the backbone is as built, else the whole `model.keras`. Atomic per file; the
    head's manifest is written last, so a kill never leaves a head without weights."""
    drop(trial_dir)
    if result.backbone_digest is None:
        with replacing(trial_dir / MODEL_FILE) as tmp:
            result.model.save(tmp)
        return
    with replacing(trial_dir / HEAD_FILE) as tmp:
        result.model.get_layer("head").save_weights(tmp)
    meta = {"format": FORMAT, "strategy": result.strategy.to_dict(),
            "num_classes": int(result.model.output.shape[-1]),
            "backbone_sha256": result.backbone_digest}
    atomic_write(trial_dir / HEAD_META, json.dumps(meta, indent=1, sort_keys=True))


def load(trial_dir: Path) -> Any:
    """The trial's kept deployable model.

    Raises:
        ExportError: nothing kept, an unknown layout, or a backbone whose weights are no
            longer the ones it was trained on (a replaced weights file).
        UnsafeModelError: as `load_model_safely`.
    """
    from tlsearch.export import ExportError, load_model_safely

    if (trial_dir / MODEL_FILE).is_file():
        return load_model_safely(trial_dir / MODEL_FILE)
    if not exists(trial_dir):
        raise ExportError(f"{trial_dir.name}: no kept model")
    from tlsearch.model import build_transfer_model
    from tlsearch.strategy import Strategy

    try:
        meta = json.loads((trial_dir / HEAD_META).read_text())
        strategy = Strategy.from_dict(meta["strategy"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        num_classes, expected = int(meta["num_classes"]), str(meta["backbone_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"cannot read {trial_dir / HEAD_META}: {exc}") from None
    from tlsearch.backbones import WeightsError, WeightsUnavailableError

    try:
        tm = build_transfer_model(strategy, num_classes)
    except (WeightsError, WeightsUnavailableError) as exc:
        raise ExportError(f"{trial_dir.name} kept only its head, and its backbone cannot be "
                          f"built here: {exc}") from None
    if weights_digest(tm.backbone.get_weights()) != expected:
        raise ExportError(
            f"{trial_dir.name}: the backbone built from {strategy.weights} is not the one "
            "this head was trained on (its weights changed since the search); export it "
            "with --retrain train+val")
    try:
        tm.head.load_weights(trial_dir / HEAD_FILE)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load {trial_dir / HEAD_FILE}: {exc}") from None
    return tm.deployable()
