"""The yardstick no transfer recipe should lose to: a logistic regression on raw pixels.

Pretrained features only help when they see what separates the classes. On the digit demo
(8x8 strokes drawn onto photographs) a standardized logistic regression on 32 px grey
pixels scored 0.94 on test in that benchmark against 0.79-0.84 for every ImageNet recipe
(benchmarks/RESULTS-transfer-digits.md). A report that compares the recommendation only
with other transfer recipes cannot say that, so every study with a test split also fits
this probe on the training images and scores it on validation and, once, on test. It is a
yardstick, never a candidate: nothing is selected on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SIZE", "pixel_probe"]

#: Side of the RGB thumbnails the probe reads (32 x 32 x 3 = 3,072 inputs; colour kept:
#: it can be all that separates two classes).
SIZE = 32
#: A stratified sample of at most this many training images keeps the fit to seconds.
MAX_TRAIN = 4000


def _pixels(root: Path, paths: list[str], size: int) -> np.ndarray:
    from tlsearch.data import decode_image

    rgb = np.stack([decode_image(root / p, size) for p in paths]).astype(np.float32)
    return rgb.reshape(len(paths), -1) / 255.0


def pixel_probe(root: Path, split: Any, metric: str, *, size: int = SIZE,
                max_train: int = MAX_TRAIN, seed: int = 0) -> dict[str, Any]:
    """Fit StandardScaler + LogisticRegression on the train split's `size` px RGB pixels.

    Returns {"size", "n_train", "val", "test"}: the study metric on validation and on the
    test split (None where the split has no test part).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlsearch.head import one_blas_thread
    from tlsearch.metrics import metric_value

    paths, labels = split.paths("train"), split.labels("train")
    if len(paths) > max_train:
        paths, _, labels, _ = train_test_split(paths, labels, train_size=max_train,
                                               stratify=labels, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(_pixels(root, list(paths), size), labels)
    k = len(split.classes)

    def score(part: str) -> float | None:
        if not split.paths(part):
            return None
        predicted = model.predict(_pixels(root, split.paths(part), size))
        return metric_value(metric, split.labels(part), predicted, k)

    return {"size": size, "n_train": len(paths), "val": score("val"), "test": score("test")}
