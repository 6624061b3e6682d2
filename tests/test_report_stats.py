"""Outcomes per strategy value, on hand-made trial records."""

from __future__ import annotations

from tlsearch.report.records import TrialRecord
from tlsearch.report.stats import _aggregates
from tlsearch.strategy import Strategy

TUNED = Strategy("mobilenet_v2", 96, unfreeze_blocks=2, finetune_epochs=3).to_dict()
HEAD_ONLY = Strategy("mobilenet_v2", 96).to_dict()


def test_aggregates_group_by_value_and_ignore_dead_workers():
    trials = [TrialRecord(0, "complete", value=0.9, strategy=TUNED),
              TrialRecord(1, "complete", value=0.7, strategy=HEAD_ONLY),
              TrialRecord(2, "failed", failure_reason="nan_loss", strategy=HEAD_ONLY),
              # A worker stopped by Ctrl-C says nothing about its recipe.
              TrialRecord(3, "failed", failure_reason="interrupted", strategy=TUNED)]
    by_key = {agg["key"]: {r["value"]: r for r in agg["rows"]} for agg in _aggregates(trials)}
    assert by_key["unfreeze_blocks"]["2"]["trials"] == 1
    head_only = by_key["unfreeze_blocks"]["0"]
    assert (head_only["trials"], head_only["failed"], head_only["reasons"]) == (2, 1,
                                                                                {"nan_loss": 1})
    assert head_only["best"] == head_only["median"] == 0.7
    # One backbone, and BatchNorm is a choice only where something is unfrozen: no rows.
    assert "backbone" not in by_key and "bn_mode" not in by_key
