"""Probabilities that mean what they say: temperature scaling, fitted on validation.

A fine-tuned network's softmax is usually over-confident (Guo et al., ICML 2017, *On
Calibration of Modern Neural Networks*). Temperature scaling divides the logits by one
scalar T, fitted by minimising the negative log-likelihood of the validation split; it
never changes which class is predicted, so accuracy is untouched. The exported model
carries T inside its graph by dividing the final Dense layer's kernel and bias by it
(softmax((xW + b) / T) = softmax(x(W / T) + b / T)): no new layer, no custom object.

T is fitted on the validation predictions every trial records; the held-out test split
only measures the result (expected calibration error, ECE, with 15 equal-width bins),
so calibration is applied by default and nothing is chosen on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BINS", "Reliability", "calibrate", "expected_calibration_error",
           "fit_temperature", "reliability", "scale_head"]

#: Equal-width confidence bins for ECE and the reliability diagram.
BINS = 15
_FLOOR = 1e-30  # log(0) guard: a float32 softmax can underflow to exactly zero


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, None))


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities the temperature-scaled model gives."""
    from scipy.special import softmax

    return softmax(_log(probs) / temperature, axis=1)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, *,
                    members: list[np.ndarray] | None = None) -> float:
    """The T in [0.05, 20] minimising the negative log-likelihood of `labels`.

    1.0 (no change) when validation has no error: the likelihood of a perfectly
    separated set only grows as T shrinks, so the "fit" would be the bound (measured on
    faces vs non-faces: T = 0.05, probabilities of 0 and 1 on every test image).
    `members`: the probabilities of an ensemble's members (`probs` is their mean); T is
    then fitted for the ensemble the export builds, the mean of each member scaled by T.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax, softmax

    labels = np.asarray(labels, dtype=np.int64)
    if (np.asarray(probs).argmax(axis=1) == labels).all():
        return 1.0
    parts = [_log(p) for p in (members if members else [probs])]
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        t = np.exp(log_t)
        if len(parts) == 1:
            return float(-log_softmax(parts[0] / t, axis=1)[rows, labels].mean())
        mean = np.mean([softmax(z / t, axis=1) for z in parts], axis=0)
        return float(-np.log(np.clip(mean[rows, labels], _FLOOR, None)).mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: mean confidence, accuracy and images (empty bins left out)."""

    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    count: tuple[int, ...]

    def to_dict(self) -> dict[str, list]:
        return {"confidence": list(self.confidence), "accuracy": list(self.accuracy),
                "count": list(self.count)}


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = [(confidence[which == b].mean(), correct[which == b].mean(), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]
    return Reliability(*(tuple(col) for col in zip(*rows, strict=True))) if rows else \
        Reliability((), (), ())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over bins of |accuracy - confidence| weighted by the bin's share of images."""
    table = reliability(probs, labels, bins)
    total = sum(table.count)
    return float(sum(n * abs(a - c) for c, a, n in zip(
        table.confidence, table.accuracy, table.count, strict=True)) / max(total, 1))


def scale_head(model: Any, temperature: float) -> None:
    """Divide the final Dense layer (`head_logits`) of an exported model by T, in place
    (every member's, in an ensemble)."""
    layers = _find_all(model, "head_logits")
    if not layers:
        raise KeyError("no layer named 'head_logits' in the model")
    for layer in layers:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel / temperature, bias / temperature])


def _find_all(model: Any, name: str) -> list[Any]:
    found = []
    for layer in model.layers:
        if layer.name == name:
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += _find_all(layer, name)
    return found
