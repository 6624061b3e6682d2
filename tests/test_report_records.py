"""Trial records read from Optuna trials and their result files."""

from __future__ import annotations

import json

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tlsearch.report.records import _trial_record
from tlsearch.strategy import Strategy


def test_a_failed_retry_reads_the_storage_and_its_result_file(tmp_path):
    strategy = Strategy("mobilenet_v2", 96).to_dict()
    (tmp_path / "result.json").write_text(json.dumps({
        "strategy": strategy, "metrics": {"accuracy": 0.5}, "timings": {"total": 12.0},
        "history": [{"step": 1}, "not an epoch"], "val_probabilities": [[0.2, 0.8]]}))
    trial = create_trial(state=TrialState.FAIL, params={"head_lr": 0.01},
                         distributions={"head_lr": FloatDistribution(1e-4, 1.0, log=True)},
                         user_attrs={"failure_reason": "nan_loss", "retry_of": 3,
                                     "resumed_from_checkpoint": True})
    record, probs = _trial_record(trial, tmp_path)
    assert (record.state, record.value, record.failure_reason) == ("failed", None, "nan_loss")
    assert record.distributions == {"head_lr": {"kind": "float", "log": True}}
    assert (record.retry_of, record.retry_mode, record.seconds) == (3, "checkpoint", 12.0)
    assert record.history == [{"step": 1}] and record.has_result
    assert probs.shape == (1, 2)
    plain = record.to_dict()
    json.dumps(plain)  # the template's view is plain data
    assert plain["short"] == record.short and record.short.startswith("mobilenet_v2@96 · head only")


def test_a_trial_without_result_file_still_reads(tmp_path):
    record, probs = _trial_record(create_trial(value=0.7), tmp_path)
    assert (record.state, record.value, record.retry_mode) == ("complete", 0.7, "scratch")
    assert probs is None and not record.has_result and record.short == "(no strategy recorded)"
