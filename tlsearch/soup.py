"""Greedy weight soup: average the kept fine-tuned models that share an architecture.

Wortsman et al., ICML 2022 (*Model soups*): models fine-tuned from the same pretrained
weights can be averaged weight by weight, and the average is often better than any one
of them at the cost of a single model. The greedy recipe: order the candidates by
validation score, start from the best, add each next one to the average only if the
soup's validation score improves. The uniform recipe, the paper's simpler baseline,
averages every candidate and selects nothing. Candidates are the study's trials that
kept their final weights and whose model has exactly the recommended trial's
architecture (same weight shapes: backbone, size, head); the held-out test split is
never consulted.

BatchNorm statistics are not weights to average: where an ingredient re-estimated them
on its own weights (`bn_mode: adapt`), the soup's are re-estimated under the soup's
weights on the training images (`reestimate_batchnorm`, as SWA does with
`torch.optim.swa_utils.update_bn`) before every validation score and at the end. Frozen
or affine-only BatchNorm keeps the pretrained statistics every ingredient shares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RECIPES", "Soup", "average_weights", "batchnorm_layers", "greedy_average",
           "greedy_soup", "reestimate_batchnorm", "uniform_soup"]

#: The soup recipes `tlsearch export --soup` offers.
RECIPES = ("greedy", "uniform")


@dataclass(frozen=True)
class Soup:
    """The ingredients kept (trial numbers, best first; for the `epochs` recipe, one
    trial's epoch steps) and the validation scores."""

    ingredients: tuple[int, ...]
    val_score: float
    first_val_score: float
    tried: tuple[tuple[int, float], ...] = field(default=())  # (trial, soup score with it)
    recipe: str = "greedy"

    def to_dict(self) -> dict[str, Any]:
        return {"ingredients": list(self.ingredients), "val_score": self.val_score,
                "first_val_score": self.first_val_score, "recipe": self.recipe,
                "tried": [list(t) for t in self.tried]}


def average_weights(weights: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of several models' weight lists (integer state, such as a
    random layer's seed, is taken from the first)."""
    out = []
    for arrays in zip(*weights, strict=True):
        first = arrays[0]
        if np.issubdtype(first.dtype, np.floating):
            out.append(np.mean(np.stack(arrays), axis=0).astype(first.dtype))
        else:
            out.append(first)
    return out


def batchnorm_layers(model: Any) -> list[Any]:
    """Every `BatchNormalization` layer of a (possibly nested) Keras model."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += batchnorm_layers(layer)
    return found


def reestimate_batchnorm(model: Any, images: np.ndarray, batch_size: int = 64) -> None:
    """Replace every BatchNorm layer's moving mean and variance by their size-weighted
    average over `images` under the model's current weights.

    The whole model runs in training mode batch by batch (`model.reestimate_statistics`);
    nothing but BN statistics changes (no optimizer runs, and dropout only perturbs what
    follows it, never the statistics before it).
    """
    from tlsearch.model import reestimate_statistics

    reestimate_statistics(batchnorm_layers(model), lambda x: model(x, training=True), images,
                          batch_size=batch_size)


def _same_shapes(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype
                                    for x, y in zip(a, b, strict=True))


Weights = list[np.ndarray]


def greedy_average(first: tuple[int, Weights, float],
                   candidates: Iterable[tuple[int, Weights]],
                   score: Callable[[Weights, tuple[int, ...]], float]
                   ) -> tuple[tuple[int, ...], Weights, float, tuple[tuple[int, float], ...]]:
    """The greedy recipe on weight lists, for both soups (of trials and of one trial's
    epochs): start from `first` (id, weights, validation score), add each candidate
    (id, weights) to the average only if `score(average, ids)` beats the best so far.

    Returns (ids kept, their average, its score, (id, score with it) per candidate).
    """
    first_id, first_weights, best = first
    kept, ids, tried = [first_weights], [first_id], []
    for cid, weights in candidates:
        value = score(average_weights([*kept, weights]), (*ids, cid))
        tried.append((cid, value))
        if value > best:
            kept.append(weights)
            ids.append(cid)
            best = value
    return tuple(ids), average_weights(kept), best, tuple(tried)


def greedy_soup(model: Any, candidates: Sequence[tuple[int, Path, float]],
                score: Callable[[Any], float], load: Callable[[Path], Any], *,
                refresh: Callable[[Any, tuple[int, ...]], None] | None = None) -> Soup:
    """Greedy soup into `model` (left holding the soup's weights).

    Args:
        model: the first candidate's loaded model; its weights are replaced.
        candidates: (trial, model file, validation score) in the order to try them:
            the first is the start (the recommended trial), then best score first.
        score: validation score of `model` with its current weights.
        load: loads a candidate's kept model (safely: `tlsearch.kept.load`).
        refresh: run on `model` and the trial numbers averaged into it after its
            weights change, before it is scored (and at the end): BatchNorm
            re-estimation where an ingredient adapted its statistics.
    """
    ordered = list(candidates)
    base = model.get_weights()
    first = score(model)

    def loaded() -> Iterator[tuple[int, Weights]]:
        for number, path, _ in ordered[1:]:
            weights = load(path).get_weights()
            if _same_shapes(base, weights):  # another architecture cannot be averaged in
                yield number, weights

    def scored(weights: Weights, members: tuple[int, ...]) -> float:
        model.set_weights(weights)
        if refresh is not None:
            refresh(model, members)
        return score(model)

    numbers, soup, best, tried = greedy_average((ordered[0][0], base, first), loaded(), scored)
    model.set_weights(soup)
    if refresh is not None and len(numbers) > 1:
        refresh(model, numbers)
    return Soup(ingredients=numbers, val_score=best, first_val_score=first, tried=tried)


def uniform_soup(model: Any, candidates: Sequence[tuple[int, Path, float]],
                 score: Callable[[Any], float], load: Callable[[Path], Any], *,
                 refresh: Callable[[Any, tuple[int, ...]], None] | None = None) -> Soup:
    """Uniform soup into `model`: the mean of every candidate with its architecture
    (arguments as `greedy_soup`'s; `tried` lists each ingredient after the first with
    the final soup's score, since nothing is chosen)."""
    base = model.get_weights()
    first = score(model)
    kept, numbers = [base], [candidates[0][0]]
    for number, path, _ in list(candidates)[1:]:
        weights = load(path).get_weights()
        if _same_shapes(base, weights):
            kept.append(weights)
            numbers.append(number)
    model.set_weights(average_weights(kept))
    if refresh is not None and len(kept) > 1:
        refresh(model, tuple(numbers))
    value = score(model) if len(kept) > 1 else first
    return Soup(ingredients=tuple(numbers), val_score=value, first_val_score=first,
                tried=tuple((n, value) for n in numbers[1:]), recipe="uniform")
