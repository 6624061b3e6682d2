"""Classification scores from labels or probabilities.

`compute_metrics` is the full report of a trial's validation predictions (and of the
holdout's, and the export's choices), through scikit-learn. The few numbers needed many
times are written in NumPy, checked against scikit-learn (`tests/test_metrics.py`),
because they run where scikit-learn's input checks cost more than the arithmetic: a
thousand bootstrap resamples, and every epoch of every trial (scikit-learn's seven
metric calls of `compute_metrics` took 17 ms an epoch, a fifth of a head-only trial's
wall time on the textures demo; these take well under one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tlsearch.options import OBJECTIVES

__all__ = ["OBJECTIVES", "compute_metrics", "epoch_scores", "metric_value"]




def compute_metrics(y_true: np.ndarray, probs: np.ndarray,
                    classes: Sequence[str]) -> dict[str, Any]:
    """Validation metrics from probabilities, all through scikit-learn."""
    from sklearn import metrics as M

    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = M.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    k = min(3, len(classes) - 1) if len(classes) > 2 else 1
    out: dict[str, Any] = {
        "balanced_accuracy": float(M.balanced_accuracy_score(y_true, y_pred)),
        "accuracy": float(M.accuracy_score(y_true, y_pred)),
        "macro_f1": float(M.f1_score(y_true, y_pred, labels=labels, average="macro",
                                     zero_division=0)),
        f"top{k}_accuracy": float(M.top_k_accuracy_score(y_true, probs, k=k, labels=labels))
        if len(classes) > 2 else float(M.accuracy_score(y_true, y_pred)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f),
                   "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": M.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "log_loss": float(M.log_loss(y_true, _normalised(probs), labels=labels)),
    }
    return out


def _normalised(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, 1e-7, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def metric_value(name: str, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """`balanced_accuracy`, `accuracy` or `macro_f1`, as scikit-learn computes them.

    Written in numpy so that a thousand bootstrap resamples stay fast.
    """
    if name == "accuracy":
        return float(np.mean(y_true == y_pred))
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support = cm.sum(axis=1)
    tp = np.diag(cm)
    if name == "balanced_accuracy":  # mean recall over the classes present in y_true
        present = support > 0
        return float(np.mean(tp[present] / support[present]))
    if name == "macro_f1":  # every class counts; 0 where undefined (zero_division=0)
        predicted = cm.sum(axis=0)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        return float(np.mean(f1))
    raise ValueError(f"unknown metric {name!r}")


def epoch_scores(y_true: np.ndarray, probs: np.ndarray, metric: str) -> dict[str, float]:
    """What a trial records after each epoch: `balanced_accuracy`, `accuracy`, `metric`
    and `log_loss` (probabilities clipped to 1e-7 and renormalised, as
    `compute_metrics` does), from validation probabilities (n, k)."""
    y_true = np.asarray(y_true)
    k = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    out = {name: metric_value(name, y_true, y_pred, k)
           for name in {"balanced_accuracy", "accuracy", metric}}
    clipped = np.clip(probs, 1e-7, 1.0)
    own = clipped[np.arange(len(y_true)), y_true] / clipped.sum(axis=1)
    out["log_loss"] = float(-np.log(own).mean())
    return out
