"""The diagnosis rules, each on hand-made trial records (no study, no training)."""

from __future__ import annotations

import pytest

from tlsearch.report.diagnosis import (
    IMBALANCE_GAP,
    OVERFIT_GAP,
    _diagnose,
    _imbalance,
    _not_learning,
    _overfitting,
    _unstable,
)
from tlsearch.report.records import TrialRecord
from tlsearch.strategy import Strategy

STRATEGY = Strategy("mobilenet_v2", 96, unfreeze_blocks=2, finetune_epochs=3).to_dict()


def _trial(number: int, *, train: float, val: float, **kw) -> TrialRecord:
    """A complete trial whose kept epoch (step 1) had these train/val accuracies."""
    return TrialRecord(number, "complete", value=val, strategy=STRATEGY,
                       metrics={"best_step": 1, "balanced_accuracy": val},
                       history=[{"step": 1, "train_accuracy": train, "val_accuracy": val}], **kw)


@pytest.mark.parametrize(("gap", "best", "expected"), [
    (OVERFIT_GAP + 0.05, 0, ("warn", "Over-fitting")),  # the recommendation over-fits
    (OVERFIT_GAP + 0.05, 1, ("info", "Over-fitting")),  # another trial does
    (OVERFIT_GAP - 0.05, 0, ("ok", "No over-fitting")),
])
def test_overfitting_by_the_gap_at_the_kept_epoch(gap, best, expected):
    complete = [_trial(0, train=0.7 + gap, val=0.7), _trial(1, train=0.6, val=0.6)]
    [finding] = _overfitting(complete, complete[best])
    assert (finding["severity"], finding["title"]) == expected
    assert all(line.startswith("trial #0:") for line in finding["evidence"])


def test_scores_at_chance_are_not_learning():
    [finding] = _not_learning([_trial(0, train=0.26, val=0.25)], chance=0.25)
    assert (finding["severity"], finding["title"]) == ("warn", "Not learning")
    assert "head LR 0.001" in finding["evidence"][0]


def test_nan_failures_compare_learning_rates():
    nan = TrialRecord(1, "failed", failure_reason="nan_loss", failure_detail="NaN at step 4",
                      strategy=dict(STRATEGY, head_lr=0.1))
    complete = [_trial(0, train=0.8, val=0.8)]
    [finding] = _unstable([complete[0], nan], complete)
    assert (finding["severity"], finding["title"]) == ("warn", "Unstable training")
    assert "median head LR is 0.1, against 0.001" in finding["text"]
    assert finding["evidence"][0].startswith("trial #1: NaN at step 4 — mobilenet_v2@96")


def test_accuracy_above_balanced_accuracy_is_an_imbalance_symptom():
    per_class = {"big": {"recall": 1.0, "support": 40}, "small": {"recall": 0.2, "support": 5}}
    best = TrialRecord(0, "complete", value=0.8, metrics={
        "accuracy": 0.8 + IMBALANCE_GAP, "balanced_accuracy": 0.8, "per_class": per_class})
    [finding] = _imbalance(best, {"imbalance_ratio": 8.0}, "balanced accuracy")
    assert finding["title"] == "Imbalance symptoms"
    assert "lowest recall: class 'small' at 20.0%" in finding["evidence"][1]
    agree = TrialRecord(0, "complete", value=0.8,
                        metrics={"accuracy": 0.8, "balanced_accuracy": 0.8})
    assert _imbalance(agree, {"imbalance_ratio": 8.0}, "")[0]["title"] == "Imbalance handled"
    assert _imbalance(agree, None, "") == []


def test_a_clean_study_has_no_problems_and_warnings_come_first():
    complete = [_trial(0, train=0.8, val=0.8), _trial(1, train=0.75, val=0.75)]
    titles = [f["title"] for f in _diagnose(complete, complete[0], [], 4, "balanced_accuracy",
                                            None, 100)]
    assert titles == ["No over-fitting", "No problems detected"]
    nan = TrialRecord(2, "failed", failure_reason="nan_loss", strategy=STRATEGY)
    findings = _diagnose([*complete, nan], complete[0], [], 4, "balanced_accuracy", None, 100)
    assert [f["severity"] for f in findings] == ["warn", "ok"]
