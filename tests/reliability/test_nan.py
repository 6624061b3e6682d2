"""NaN injection: diverging trials fail as nan_loss, are never best, and never loop."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.reliability.helpers import tiny_search
from tlsearch import faults
from tlsearch.cli import app
from tlsearch.search import SearchConfig, open_study, run_search

pytestmark = pytest.mark.reliability


def test_some_trials_diverge_the_search_finishes(tmp_path, figures):
    _, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    config = SearchConfig(data_dir=str(tmp_path / "data"), space=str(tmp_path / "tiny.yaml"),
                          study="n", out=str(studies), weights="none",
                          cache_dir=str(tmp_path / "cache"), pruner="none", baselines=False,
                          trials=5)
    poisoned = {1, 3}
    with faults.inject(nan_trials=poisoned):
        outcome = run_search(config)
    trials = open_study(config, create=False).study.get_trials()
    failed = {t.number for t in trials if t.state.name == "FAIL"}
    reasons = {t.user_attrs.get("failure_reason") for t in trials if t.number in failed}
    figures.add("trials forced to NaN", len(poisoned))
    figures.add("ended failed with nan_loss", len(failed & poisoned), str(len(poisoned)))
    figures.add("a NaN trial chosen as best", outcome.best["number"] in poisoned, "False")
    assert failed == poisoned and reasons == {"nan_loss"}
    assert outcome.stopped == "done" and outcome.best["number"] not in poisoned


def test_every_trial_diverging_stops_with_a_clear_message(tmp_path, figures):
    _, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    with faults.inject(nan_at_step=1):
        result = CliRunner().invoke(app, [
            "search", str(tmp_path / "data"), "--space", str(tmp_path / "tiny.yaml"),
            "--study", "all", "--out", str(studies), "--weights", "none", "--cache-dir",
            str(tmp_path / "cache"), "--pruner", "none", "--no-baselines", "--trials", "20",
            "--no-isolate"])
    trials = open_study(SearchConfig(data_dir=str(tmp_path / "data"), study="all",
                                     space=str(tmp_path / "tiny.yaml"), out=str(studies)),
                        create=False).study.get_trials()
    figures.add("all-NaN study: trials run before stopping", len(trials), "5 (then stop)")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "failed" in result.output.lower() and len(trials) == 5
