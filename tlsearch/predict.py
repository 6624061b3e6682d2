"""Predicting with an exported folder: exactly the training pipeline's pixels
(`tlsearch.data.decode_image`), so a single image is predicted as it was validated."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.export import MODEL_FILE, ExportError, load_model_safely

__all__ = ["ExportedModel", "Prediction", "format_predictions", "iter_image_paths",
           "load_exported", "predict_paths"]


@dataclass(frozen=True)
class Prediction:
    path: str
    top: tuple[tuple[str, float], ...] = ()
    probabilities: tuple[float, ...] = ()
    error: str | None = None  # a reason code from tlsearch.data when the file was unreadable


@dataclass
class ExportedModel:
    model: Any
    labels: list[str]
    image_size: int
    views: tuple[str, ...] = ("identity",)  # test-time augmentation adopted at export


def load_exported(model_dir: Path) -> ExportedModel:
    model_dir = Path(model_dir)
    for name in (MODEL_FILE, "labels.json", "strategy.json"):
        if not (model_dir / name).is_file():
            raise ExportError(f"{model_dir} is not an exported model folder (missing {name})")
    try:
        labels = json.loads((model_dir / "labels.json").read_text())
        size = int(json.loads((model_dir / "strategy.json").read_text())["image_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{model_dir}: labels.json or strategy.json is invalid ({exc})") from None
    from tlsearch.tta import VIEWS

    views: tuple[str, ...] = ("identity",)
    try:
        views = tuple(json.loads((model_dir / "export.json").read_text())["tta"]["views"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # an export from before test-time augmentation: one view
    if not views or any(v not in VIEWS for v in views):
        raise ExportError(f"{model_dir}/export.json names unknown test-time views {views}")
    model = load_model_safely(model_dir / MODEL_FILE)
    return ExportedModel(model=model, labels=[str(x) for x in labels], image_size=size,
                         views=views)


def iter_image_paths(inputs: Sequence[Path]) -> Iterator[Path]:
    """Files as given, and every non-hidden file under given folders, sorted."""
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield item


def predict_paths(exported: ExportedModel, paths: Sequence[Path], *, top_k: int = 3,
                  batch_size: int = 32, progress: Any = None) -> Iterator[Prediction]:
    """Predict files in batches; unreadable files yield a Prediction with its reason."""
    from tlsearch.data import DecodeError, decode_image

    k = max(1, min(top_k, len(exported.labels)))
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> Iterator[Prediction]:
        from tlsearch.tta import tta_probabilities

        x = np.stack([a for _, a in pending])
        probs = tta_probabilities(exported.model, x, exported.views, batch_size=len(x))
        for (path, _), row in zip(pending, probs, strict=True):
            order = np.argsort(-row)[:k]
            yield Prediction(str(path), tuple((exported.labels[i], float(row[i])) for i in order),
                             tuple(float(p) for p in row))
        pending.clear()

    for path in paths:
        try:
            pending.append((path, decode_image(path, exported.image_size)))
        except DecodeError as exc:
            yield Prediction(str(path), error=exc.reason)
        except OSError as exc:
            yield Prediction(str(path), error=f"unreadable: {exc.strerror or exc}")
        if progress is not None:
            progress()
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def format_predictions(predictions: Sequence[Prediction], fmt: str) -> str:
    """Render as `json` or `csv` (the table format is rendered by the CLI)."""
    if fmt == "json":
        return json.dumps([{"path": p.path, "error": p.error,
                            "top": [{"label": lab, "probability": prob} for lab, prob in p.top]}
                           for p in predictions], indent=2, ensure_ascii=True)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        width = max((len(p.top) for p in predictions), default=1)
        writer.writerow(["path", "error"] + [f"{c}{i + 1}" for i in range(width)
                                             for c in ("label", "probability")])
        for p in predictions:
            row = [p.path, p.error or ""]
            for lab, prob in p.top:
                row += [lab, f"{prob:.6f}"]
            writer.writerow(row)
        return buf.getvalue()
    raise ExportError(f"unknown format {fmt!r}")
