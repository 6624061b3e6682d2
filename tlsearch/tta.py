"""Test-time augmentation: average the model's probabilities over a few fixed views.

The views come from the strategy's own augmentation (a model trained with flips and
zooms has learned those are the same image): every level above `none` flips
horizontally and zooms in by 10% (a centre crop resized back). `export` measures the
views on the validation split and adopts them only if they score higher there than a
single view; the test split is not consulted. `predict` applies what was adopted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["VIEWS", "choose_views", "tta_probabilities", "views_for"]

#: The zoom view keeps the central 90% of each side.
ZOOM = 0.9


def _hflip(x: np.ndarray) -> np.ndarray:
    return x[:, :, ::-1]


def _zoom(x: np.ndarray) -> np.ndarray:
    from tlsearch.data import RESIZE_METHOD, RESIZE_METHODS

    size = x.shape[1]
    keep = max(1, round(size * ZOOM))
    start = (size - keep) // 2
    out = np.empty_like(x)
    for i, image in enumerate(np.asarray(x, dtype=np.uint8)):
        crop = Image.fromarray(image[start:start + keep, start:start + keep])
        out[i] = np.asarray(crop.resize((size, size), RESIZE_METHODS[RESIZE_METHOD]))
    return out


#: Name -> transform of a batch of decoded RGB images (N, size, size, 3), 0-255.
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x, "hflip": _hflip, "zoom": _zoom,
}


def views_for(augmentation: str) -> tuple[str, ...]:
    """The views a strategy trained with `augmentation` is invariant to."""
    return ("identity",) if augmentation == "none" else ("identity", "hflip", "zoom")


def tta_probabilities(model: Any, x: np.ndarray, views: Sequence[str], *,
                      batch_size: int = 64) -> np.ndarray:
    """Mean probabilities of `model` over `views` of the decoded images `x`."""
    total = None
    for view in views:
        seen = VIEWS[view](x).astype(np.float32)
        probs = np.concatenate([np.asarray(model(seen[i:i + batch_size], training=False))
                                for i in range(0, len(seen), batch_size)]).astype(np.float64)
        total = probs if total is None else total + probs
    return total / len(views)


def choose_views(model: Any, x_val: np.ndarray, y_val: np.ndarray, augmentation: str,
                 score: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, Any]:
    """Adopt the strategy's views if they beat one view on validation; both scores kept."""
    plain = score(y_val, tta_probabilities(model, x_val, ("identity",)))
    views = views_for(augmentation)
    if len(views) == 1:
        return {"views": ["identity"], "val_plain": plain, "val_tta": None, "candidates": []}
    tta = score(y_val, tta_probabilities(model, x_val, views))
    return {"views": list(views) if tta > plain else ["identity"], "val_plain": plain,
            "val_tta": tta, "candidates": list(views)}
