"""Which trial to recommend: the top validation score, or the simplest within one SE of it.

The trial with the highest validation score is the winner of many comparisons on a few
hundred images, so part of its lead is luck (the "optimism" the report measures on the
test split). Breiman's one-standard-error rule turns that into a choice: among the
trials whose validation score is within one standard error of the best, recommend the
one with the fewest trained parameters (a linear head before a fine-tuned backbone).
The standard error is that of the *difference* to the best trial, from a paired
bootstrap over the same validation images, so two trials that err on the same images
are told apart by what they do differently.

Measured on 12 benchmark runs (3 datasets x 2 seeds, on the ImageNet backbones and on
the self-pretrained one; benchmarks/RESULTS-transfer*.md), the rule scored higher on test
than the top trial once (+0.2 points), equal in 6 and lower in 5 (down to -7.2), -1.1
points on average: on validation sets of 40-155 images the standard error of balanced
accuracy is 2-4 points, so the rule nearly always falls back to a linear probe. So the
default is "best" and the rule is `--select 1se`.

Only trials whose model is kept on disk (the best few, the baselines and the floor
check) are candidates: the recommendation is always one that `tlsearch export` can
ship. Nothing here reads the test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tlsearch.options import RULES

__all__ = ["RULES", "Candidate", "Selection", "floor_partner", "paired_standard_error",
           "select"]

RESAMPLES = 1000
SEED = 0


@dataclass(frozen=True)
class Candidate:
    number: int
    value: float  # the validation score the study recorded
    trainable: int | None  # parameters the trial trained (None: unknown, never preferred)


@dataclass(frozen=True)
class Selection:
    chosen: int
    best: int  # the trial with the highest validation score
    rule: str
    #: Standard error of (best − chosen) on validation; None when the best is chosen
    #: without a comparison (rule "best", or no saved validation predictions).
    standard_error: float | None = None
    margin: float = 0.0  # best's validation score minus the chosen trial's

    def to_dict(self) -> dict[str, object]:
        return {"chosen": self.chosen, "best": self.best, "rule": self.rule,
                "standard_error": self.standard_error, "margin": self.margin}


def paired_standard_error(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray,
                          metric: str, *, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """Bootstrap standard error of metric(a) − metric(b) over the same images."""
    from tlsearch.metrics import metric_value

    labels = np.asarray(labels, dtype=np.int64)
    pred_a, pred_b = np.asarray(probs_a).argmax(axis=1), np.asarray(probs_b).argmax(axis=1)
    k = np.asarray(probs_a).shape[1]
    if np.array_equal(pred_a, pred_b):
        return 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(labels), size=(resamples, len(labels)))
    diffs = [metric_value(metric, labels[i], pred_a[i], k)
             - metric_value(metric, labels[i], pred_b[i], k) for i in idx]
    return float(np.std(diffs, ddof=1))


def select(candidates: Sequence[Candidate], labels: np.ndarray | None,
           probs: Mapping[int, np.ndarray], metric: str, *, rule: str = "1se") -> Selection | None:
    """The trial to recommend among `candidates` (eligible trials with a kept model).

    Under "1se", a candidate is admissible when the best trial's lead over it is at most
    one paired standard error; the admissible one with the fewest trained parameters is
    chosen (ties: higher validation score, then earlier trial). Candidates without saved
    validation predictions are never preferred over the best.
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r} (choose from {', '.join(RULES)})")
    if not candidates:
        return None
    ordered = sorted(candidates, key=lambda c: (-c.value, c.number))
    best = ordered[0]
    if rule == "best" or labels is None or best.number not in probs:
        return Selection(chosen=best.number, best=best.number, rule=rule)
    n = len(labels)
    chosen, chosen_se = best, None
    for cand in ordered[1:]:
        p = probs.get(cand.number)
        if cand.trainable is None or p is None or len(p) != n or best.trainable is None:
            continue
        if cand.trainable >= chosen.trainable:
            continue  # not simpler than what is chosen already
        se = paired_standard_error(labels, probs[best.number], p, metric)
        if best.value - cand.value <= se:
            chosen, chosen_se = cand, se
    return Selection(chosen=chosen.number, best=best.number, rule=rule,
                     standard_error=chosen_se, margin=float(best.value - chosen.value))


def recommend_trial(handle: object, rule: str | None = None) -> Selection | None:
    """The study's recommendation under `rule` (default: the study's `SearchConfig.select`),
    from the storage, the saved split and the kept trials' `result.json`; None with no
    eligible trial."""
    import json

    from optuna.trial import TrialState

    from tlsearch import kept
    from tlsearch.data import DatasetError, Split
    from tlsearch.search import SPLIT_FILE, meets_constraints

    study, config = handle.study, handle.config  # type: ignore[attr-defined]
    eligible = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       if t.value is not None and meets_constraints(
                           config, t.user_attrs.get("latency_ms"),
                           t.user_attrs.get("params_total"))),
                      key=lambda t: (-t.value, t.number))
    if not eligible:
        return None
    rule = rule or getattr(config, "select", "best")
    if rule == "best":
        return Selection(chosen=eligible[0].number, best=eligible[0].number, rule=rule)
    try:
        labels = Split.load(handle.dir / SPLIT_FILE).labels("val")  # type: ignore[attr-defined]
    except (OSError, DatasetError):
        labels = None
    metric = study.user_attrs.get("metric") or "balanced_accuracy"
    candidates, probs = [], {}
    for i, t in enumerate(eligible):
        tdir = handle.trial_dir(t.number)  # type: ignore[attr-defined]
        if i and not kept.exists(tdir):
            continue  # its model was dropped: it could not be exported
        try:
            result = json.loads((tdir / "result.json").read_text())
        except (OSError, ValueError):
            result = {}
        trainable = t.user_attrs.get("params_trainable") or (
            result.get("params") or {}).get("trainable_max")
        if result.get("val_probabilities") is not None:
            probs[t.number] = np.asarray(result["val_probabilities"], dtype=np.float64)
        candidates.append(Candidate(t.number, float(t.value), trainable))
    return select(candidates, labels, probs, metric, rule=rule)


def floor_partner(handle: object, chosen: int) -> int | None:
    """The kept linear probe on trial `chosen`'s backbone, size and weights, when
    `chosen` is anything but that probe (it fine-tunes, has a hidden layer, or is a
    head-only trial whose C, class weights, augmentation or SGD epochs were chosen on
    validation): the floor its recommendation is averaged with
    (`SearchConfig.blend_floor`, `tlsearch.holdout`).

    scikit-learn's exact probe (`head_init: probe`, the floor check and the linear_probe
    baseline) comes first, then (for a trial that trains the backbone or a hidden layer)
    other head-only solves, best validation score first. None when `chosen` is itself
    the exact probe or no such probe's model is kept.
    """
    from optuna.trial import TrialState

    from tlsearch import kept
    from tlsearch.baselines import is_linear_probe
    from tlsearch.strategy import Strategy

    complete = {t.number: t for t in handle.study.get_trials(  # type: ignore[attr-defined]
        deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None}
    if chosen not in complete:
        return None
    top = Strategy.from_dict(complete[chosen].user_attrs["strategy"])
    if top.head_init == "probe":
        return None
    linear = is_linear_probe(top)  # a head-only solve: only the exact probe is its floor
    probes = []
    for t in complete.values():
        s = Strategy.from_dict(t.user_attrs["strategy"])
        if t.number == chosen or (linear and s.head_init != "probe"):
            continue
        if (is_linear_probe(s) and (s.backbone, s.image_size, s.weights)
                == (top.backbone, top.image_size, top.weights)
                and kept.exists(handle.trial_dir(t.number))):  # type: ignore[attr-defined]
            probes.append((s.head_init != "probe", -t.value, t.number))
    return min(probes)[2] if probes else None
