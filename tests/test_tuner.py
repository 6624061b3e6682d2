"""`--engine keras-tuner`: KerasTuner's oracle driving the trial engine, resumable."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tlsearch.cli import app
from tlsearch.search import SearchConfig, SearchError, open_study, run_keras_tuner
from tlsearch.search._tuner import _HpTrial


def test_space_compiles_to_keras_tuner_hyperparameters(small_study):
    import keras_tuner as kt

    from tlsearch.space import load_space

    _, _, space_path = small_study
    space = load_space(str(space_path), known_backbones={"tiny_cnn"})
    hp = kt.HyperParameters()
    strategy = space.sample(_HpTrial(hp, number=3), weights="none", seed=10)
    names = {p.name for p in hp.space}
    assert {"unfreeze_blocks", "head_lr"} <= names  # one backbone: fixed, not searched
    head_lr = next(p for p in hp.space if p.name == "head_lr")
    assert isinstance(head_lr, kt.engine.hyperparameters.Float) and head_lr.sampling == "log"
    assert strategy.seed == 13 and strategy.backbone == "tiny_cnn"


def test_keras_tuner_engine_completes_resumes_and_reports(small_study):
    tmp_path, data, space = small_study
    config = SearchConfig(data_dir=str(data), space=str(space), study="kt",
                          out=str(tmp_path / "studies"), weights="none",
                          cache_dir=str(tmp_path / "cache"), engine="keras-tuner",
                          baselines=False, trials=4)
    # Hyperband's first bracket: three trials stopped at 1 epoch, the best promoted to 3.
    first = run_keras_tuner(config, oracle="hyperband")
    assert first.counts == {"pruned": 3, "complete": 1}
    assert (tmp_path / "studies" / "kt" / "keras_tuner" / "oracle.json").exists()
    second = run_keras_tuner(dataclasses.replace(config, trials=6), oracle="hyperband")
    assert sum(second.counts.get(k, 0) for k in ("complete", "pruned")) == 6
    trials = open_study(config, create=False).study.get_trials()
    kt_ids = [t.user_attrs["kt_trial_id"] for t in trials]
    assert len(set(kt_ids)) == len(kt_ids) == 6, "resuming re-ran no KerasTuner trial"
    promoted = [t for t in trials if t.state.name == "COMPLETE"][0]
    assert promoted.user_attrs["resumed_from_step"] == 1  # continued, not restarted
    assert any(t.state.name == "COMPLETE" for t in trials)
    runner = CliRunner()
    status = runner.invoke(app, ["status", "kt", "--out", str(tmp_path / "studies"), "--json"])
    assert status.exit_code == 0
    summary = json.loads(status.stdout)
    assert summary["best"] is not None and summary["best"]["strategy"]["backbone"] == "tiny_cnn"
    report = runner.invoke(app, ["report", "kt", "--studies", str(tmp_path / "studies"),
                                 "--out", str(tmp_path / "kt.html")])
    assert report.exit_code == 0, report.output
    assert "tlsearch export kt" in (tmp_path / "kt.html").read_text()


def test_cli_engine_flag_and_refusals(small_study):
    tmp_path, data, space = small_study
    runner = CliRunner()
    base = ["search", str(data), "--space", str(space), "--study", "e", "--out",
            str(tmp_path / "studies"), "--weights", "none", "--cache-dir", str(tmp_path / "c"),
            "--engine", "keras-tuner", "--kt-oracle", "bayesian", "--trials", "2",
            "--no-baselines"]
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert "Recommendation" in result.output
    refused = runner.invoke(app, base + ["--workers", "2"])
    assert refused.exit_code != 0 and "one worker" in refused.output
    bad = runner.invoke(app, base[:-4] + ["--engine", "ray"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    # The bayesian oracle prunes nothing: an explicit other pruner is refused, not ignored.
    pruned = runner.invoke(app, base + ["--pruner", "median"])
    assert pruned.exit_code != 0 and "--pruner median cannot drive" in pruned.output
    saved = json.loads((tmp_path / "studies" / "e" / "config.json").read_text())
    assert saved["pruner"] == "none"  # what the oracle did, for resume and the report


def test_keras_tuner_engine_honours_the_timeout(small_study):
    tmp_path, data, space = small_study
    config = SearchConfig(data_dir=str(data), space=str(space), study="t",
                          out=str(tmp_path / "studies"), weights="none", trials=20,
                          cache_dir=str(tmp_path / "cache"), engine="keras-tuner",
                          baselines=False, pruner="none", timeout=0.01)
    outcome = run_keras_tuner(config, oracle="bayesian")
    assert outcome.stopped == "timeout"
    assert sum(outcome.counts.values()) == 1  # the trial running at the deadline ends
    wrong = dataclasses.replace(config, pruner="hyperband")
    with pytest.raises(SearchError, match="cannot drive"):
        run_keras_tuner(wrong, oracle="bayesian")


def test_failing_trials_stop_the_keras_tuner_search(small_study, monkeypatch):
    import tlsearch.train as train

    tmp_path, data, space = small_study
    monkeypatch.setattr(train, "run_trial", lambda strategy, *a, metric="balanced_accuracy",
                        **kw: train._failed(strategy, metric, "nan_loss", "diverged", None))
    config = SearchConfig(data_dir=str(data), space=str(space), study="f",
                          out=str(tmp_path / "studies"), weights="none", trials=20,
                          cache_dir=str(tmp_path / "cache"), engine="keras-tuner",
                          baselines=False, pruner="none")
    outcome = run_keras_tuner(config, oracle="bayesian")
    assert outcome.stopped == "all_failed" and outcome.best is None
    trials = open_study(config, create=False).study.get_trials()
    assert len(trials) == 5 and {t.user_attrs["failure_reason"] for t in trials} == {"nan_loss"}
