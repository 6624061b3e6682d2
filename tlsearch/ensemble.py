"""Prediction ensemble: average the probabilities of several kept trials' models.

Unlike a weight soup (`tlsearch.soup`), the members need not share an architecture:
different backbones fine-tuned differently make different mistakes, and their mean
probability is often better than any one of them (Caruana et al., ICML 2004,
*Ensemble selection from libraries of models*), at the cost of running every member.
The greedy recipe: start from the recommended trial, try the other kept models best
validation score first, keep one only if the ensemble's validation score improves.
Members must take images of the recommended trial's size, so one decoded image feeds
them all exactly as it fed each one in training; the held-out test split is never
consulted. The exported ensemble is one functional Keras model of built-in layers (the
members, then `Average`): it loads with `safe_mode=True` and no custom objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Ensemble", "build_ensemble_model", "greedy_ensemble"]


@dataclass(frozen=True)
class Ensemble:
    """The members kept (trial numbers, recommended first) and the validation scores."""

    members: tuple[int, ...]
    val_score: float
    first_val_score: float
    tried: tuple[tuple[int, float], ...] = field(default=())  # (trial, score with it)

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "val_score": self.val_score,
                "first_val_score": self.first_val_score,
                "tried": [list(t) for t in self.tried]}


def greedy_ensemble(candidates: Sequence[tuple[int, np.ndarray]],
                    score: Callable[[np.ndarray], float]) -> Ensemble:
    """Greedy forward selection on validation probabilities.

    Args:
        candidates: (trial, validation probabilities) in the order to try them: the
            recommended trial first, then the others best validation score first.
        score: validation score of a (n, classes) probability array.
    """
    first_number, first_probs = candidates[0]
    kept = [np.asarray(first_probs, dtype=np.float64)]
    members = [first_number]
    best = first = score(kept[0])
    tried = []
    for number, probs in candidates[1:]:
        value = score(np.mean([*kept, np.asarray(probs, dtype=np.float64)], axis=0))
        tried.append((number, value))
        if value > best:
            kept.append(np.asarray(probs, dtype=np.float64))
            members.append(number)
            best = value
    return Ensemble(members=tuple(members), val_score=best, first_val_score=first,
                    tried=tuple(tried))


def build_ensemble_model(models: Sequence[Any], names: Sequence[str]) -> Any:
    """One model: the members side by side on the same input, probabilities averaged.

    A single member is returned as it is (same graph, same predictions).
    """
    import keras

    if len(models) == 1:
        return models[0]
    for model, name in zip(models, names, strict=True):
        model.name = name  # nested models need distinct names in one functional graph
    inputs = keras.Input(models[0].input_shape[1:], name="image")
    outputs = keras.layers.Average(name="ensemble_mean")([m(inputs) for m in models])
    return keras.Model(inputs, outputs, name="tlsearch_ensemble")
