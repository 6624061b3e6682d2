"""The report's statistics: the score's bootstrap interval, the cost/score Pareto front,
outcomes per strategy value, parameter importance and the cost summary."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from tlsearch.metrics import metric_value
from tlsearch.report.wording import _fine_tunes, _value_text

if TYPE_CHECKING:  # records.py reads `_finite` from here
    from tlsearch.report.records import TrialRecord

__all__ = ["BOOTSTRAP_RESAMPLES", "bootstrap_interval", "pareto_front"]

#: Bootstrap resamples of the validation set for the score's interval.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
#: Failure reasons that are about the worker, not the strategy it was training.
NOT_THE_RECIPE = ("interrupted", "worker_died")
#: Strategy fields compared value by value in the diagnosis ("which BN mode failed").
AGGREGATE_KEYS = (
    ("backbone", "backbone"),
    ("unfreeze_blocks", "unfrozen blocks"),
    ("gradual", "gradual unfreezing"),
    ("bn_mode", "BatchNorm mode"),
    ("augmentation", "augmentation"),
    ("imbalance", "imbalance remedy"),
    ("optimizer", "optimizer"),
    ("schedule", "LR schedule"),
    ("batch_size", "batch size"),
    ("head_hidden_units", "head hidden units"),
    ("head_epochs", "head epochs"),
    ("finetune_epochs", "fine-tune epochs"),
)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def bootstrap_interval(y_true: np.ndarray, probs: np.ndarray, metric: str, *,
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Point value and percentile bootstrap interval of `metric` over validation images.

    Returns:
        (value, low, high), resampling images with replacement `resamples` times.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1)
    k = np.asarray(probs).shape[1]
    value = metric_value(metric, y_true, y_pred, k)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(resamples, len(y_true)))
    scores = np.array([metric_value(metric, y_true[i], y_pred[i], k) for i in idx])
    alpha = (1 - level) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return value, float(low), float(high)


def pareto_front(points: list[tuple[int, float, float]]) -> list[int]:
    """Trial numbers not dominated in (higher objective, lower cost).

    Args:
        points: (trial number, objective, cost) triples.
    """
    front = []
    for number, value, cost in points:
        dominated = any(
            (v2 >= value and c2 <= cost) and (v2 > value or c2 < cost)
            for n2, v2, c2 in points if n2 != number
        )
        if not dominated:
            front.append(number)
    return sorted(front)


def _aggregates(trials: list[TrialRecord]) -> list[dict[str, Any]]:
    """Outcomes per value of each strategy field that varied across trials."""
    out = []
    # A trial stopped by its worker dying or by Ctrl-C says nothing about its recipe.
    with_strategy = [t for t in trials
                     if t.strategy and t.state in ("complete", "pruned", "failed")
                     and t.failure_reason not in NOT_THE_RECIPE]
    for key, label in AGGREGATE_KEYS:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t in with_strategy:
            s = t.strategy
            if key == "backbone":
                value = f"{s['backbone']}@{s['image_size']}"
            elif key in ("bn_mode", "gradual", "finetune_epochs") and not _fine_tunes(s):
                continue  # meaningless when nothing is unfrozen
            elif key == "unfreeze_blocks" and not _fine_tunes(s):
                value = "0"
            else:
                value = _value_text(key, s.get(key))
            groups[value].append(t)
        if len(groups) < 2:
            continue
        rows = []
        for value, members in sorted(groups.items(), key=lambda kv: kv[0]):
            values = [t.value for t in members if t.value is not None]
            reasons = Counter(t.failure_reason or "unknown" for t in members
                              if t.state == "failed")
            rows.append({
                "value": value, "trials": len(members),
                "complete": sum(t.state == "complete" for t in members),
                "pruned": sum(t.state == "pruned" for t in members),
                "failed": sum(t.state == "failed" for t in members),
                "reasons": dict(reasons),
                "best": max(values) if values else None,
                "median": _median(values),
            })
        out.append({"key": key, "label": label, "rows": rows})
    return out


def _importance(study: Any, complete: list[TrialRecord],
                searched: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameter importances, or a note saying why there are none."""
    varying = [name for name in searched
               if len({json.dumps(t.params.get(name), default=str) for t in complete
                       if name in t.params}) > 1]
    if len(complete) < 2:
        return {"values": [], "note": "Parameter importance needs at least two completed "
                                      f"trials; this study has {len(complete)}."}
    if not varying:
        return {"values": [], "note": "No searched parameter varied across the completed trials, "
                                      "so there is nothing to rank."}
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, params=varying)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {"values": [], "note": f"Optuna could not rank the parameters ({exc})."}
    note = None
    if len(complete) < 10:
        note = (f"Only {len(complete)} completed trials: read the ranking as a hint, "
                "not a measurement.")
    return {"values": [(k, float(v)) for k, v in values.items()], "note": note,
            "evaluator": "PED-ANOVA (Optuna's default)"}


def _cost_summary(complete: list[TrialRecord]) -> str | None:
    if len(complete) < 2:
        return None
    best = complete[0]
    near = [t for t in complete if t.value >= best.value - 0.01]
    timed = [t for t in near if t.latency_ms is not None]
    if not timed:
        return None
    fastest = min(timed, key=lambda t: t.latency_ms)
    if fastest.number == best.number:
        return (f"The recommended trial is also the fastest at prediction among those within "
                f"1 point of it ({fastest.latency_ms:.1f} ms per image on CPU).")
    return (f"Trial #{fastest.number} scores within 1 point of the best and predicts in "
            f"{fastest.latency_ms:.1f} ms per image on CPU (the best: "
            f"{best.latency_ms:.1f} ms); prefer it where speed matters.")
