"""End-to-end searches on the tiny backbone: resume, kill recovery, status, storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_SPACE, write_colour_dataset
from tlsearch import faults
from tlsearch.cli import app
from tlsearch.search import SearchConfig, SearchError, run_search


@pytest.fixture
def setup(tmp_path):
    data = write_colour_dataset(tmp_path / "data", {"red": 20, "green": 20, "blue": 20})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    return tmp_path, data, space


def _config(tmp_path, data, space, **kw) -> SearchConfig:
    base = dict(data_dir=str(data), space=str(space), study="s", out=str(tmp_path / "studies"),
                trials=3, weights="none", cache_dir=str(tmp_path / "cache"), pruner="none")
    base.update(kw)
    return SearchConfig(**base)


def test_search_completes_and_rerun_continues(setup):
    import optuna

    tmp_path, data, space = setup
    first = run_search(_config(tmp_path, data, space, trials=2))
    assert first.counts == {"complete": 2} and first.best is not None
    second = run_search(_config(tmp_path, data, space, trials=4))
    assert second.counts == {"complete": 4}
    study_dir = tmp_path / "studies" / "s"
    # Optuna's own API reads the embedded storage (as optuna-dashboard would).
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="s", storage=JournalStorage(
        JournalFileBackend(str(study_dir / "journal.log"))))
    numbers = [t.number for t in study.trials]
    assert numbers == [0, 1, 2, 3]
    assert all((study_dir / "trials" / f"{n:04d}" / "result.json").exists() for n in numbers)
    assert json.loads((study_dir / "split.json").read_text())["format"]


def test_changed_dataset_or_space_is_refused(setup):
    tmp_path, data, space = setup
    run_search(_config(tmp_path, data, space, trials=1))
    (data / "red" / "000.png").unlink()
    with pytest.raises(SearchError, match="changed"):
        run_search(_config(tmp_path, data, space, trials=2))
    forced = run_search(_config(tmp_path, data, space, trials=2, force=True))
    assert forced.counts["complete"] == 2
    # --force is not saved: a later resume refuses the next change of the data.
    assert json.loads((tmp_path / "studies" / "s" / "config.json").read_text())["force"] is False
    (data / "red" / "001.png").unlink()
    result = CliRunner().invoke(app, ["resume", "s", "--out", str(tmp_path / "studies"),
                                      "--trials", "3", "--no-isolate"])
    assert result.exit_code != 0 and "changed" in result.output
    with pytest.raises(SearchError, match="different search space"):
        run_search(_config(tmp_path, data, space, trials=3, overrides=("head_epochs=3",)))


def test_nan_trials_fail_and_the_search_stops(setup):
    tmp_path, data, space = setup
    # No baselines: the linear_probe baseline trains no epochs, so no loss can turn NaN.
    with faults.inject(nan_at_step=1):
        outcome = run_search(_config(tmp_path, data, space, trials=10, baselines=False))
    assert outcome.stopped == "all_failed" and outcome.best is None
    assert outcome.counts == {"fail": 5}


def test_sigkill_mid_trial_is_recovered_from_checkpoint(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    data = write_colour_dataset(tmp_path / "data", {"red": 20, "green": 20, "blue": 20})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=6, finetune_epochs=6)
                     .replace("[0, 1]", "[1]"))
    args = [sys.executable, "-m", "tlsearch.cli", "search", str(data), "--space", str(space),
            "--study", "k", "--out", str(tmp_path / "studies"), "--trials", "2",
            "--weights", "none", "--cache-dir", str(tmp_path / "cache"), "--pruner", "none"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "studies" / "k" / "trials" / "0000" / "checkpoint" / "latest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if latest.exists() and json.loads(latest.read_text())["global_step"] >= 3:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_step = json.loads(latest.read_text())["global_step"]
    assert 3 <= killed_step < 12
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recovered trial(s) [0]" in done.stdout
    study = optuna.load_study(study_name="k", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "studies" / "k" / "journal.log"))))
    states = {t.number: t.state.name for t in study.trials}
    assert states[0] == "FAIL" and study.trials[0].user_attrs["failure_reason"] == "worker_died"
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.state.name == "COMPLETE"
    result = json.loads((tmp_path / "studies" / "k" / "trials" / "0001" / "result.json")
                        .read_text())
    assert result["resumed_from_step"] == killed_step
    steps = [h["step"] for h in result["history"]]
    assert steps == list(range(1, 13)), "every epoch exactly once"
    assert sum(1 for t in study.trials if t.state.name == "COMPLETE") == 2


def test_cli_search_status_and_errors(setup):
    tmp_path, data, space = setup
    runner = CliRunner()
    base = ["search", str(data), "--space", str(space), "--study", "c", "--out",
            str(tmp_path / "studies"), "--weights", "none", "--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(app, base + ["--trials", "1"])
    assert result.exit_code == 0, result.output
    assert "Recommendation" in result.output
    status = runner.invoke(app, ["status", "c", "--out", str(tmp_path / "studies")])
    assert status.exit_code == 0 and "Leaderboard" in status.output
    as_json = runner.invoke(app, ["status", "c", "--out", str(tmp_path / "studies"), "--json"])
    assert json.loads(as_json.stdout)["counts"] == {"complete": 1}
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("backbones: {tiny_cnn: [32]}\nbakcbones: 1\n")
    for extra, needle in [
        (["--space", str(bad_key)], "bakcbones"),
        (["--set", "bn_mode=[frozn]"], "bn_mode"),
        (["--storage", "redis://x"], "unknown storage"),
        (["--weights", "/nope.h5"], "--weights"),
        (["--trials", "0"], "--trials"),
    ]:
        r = runner.invoke(app, base + ["--study", "e"] + extra)
        assert r.exit_code != 0, extra
        assert needle in r.output, (extra, r.output)
        assert "Traceback" not in r.output
    missing = runner.invoke(app, ["status", "nope", "--out", str(tmp_path / "studies")])
    assert missing.exit_code != 0 and "no study" in missing.output


def test_baselines_run_first_once_each_marked_and_unpruned(setup):
    import dataclasses

    from tlsearch.report import build_report
    from tlsearch.search import open_study

    tmp_path, data, space = setup
    config = _config(tmp_path, data, space, trials=6, pruner="median")
    run_search(config)
    run_search(dataclasses.replace(config, trials=7))  # re-running enqueues nothing again
    trials = open_study(config, create=False).study.get_trials()
    base = {t.user_attrs["baseline"]: t for t in trials if t.user_attrs.get("baseline")}
    assert set(base) == {"keras_io", "fastai_fine_tune", "linear_probe"}
    assert sorted(t.number for t in base.values()) == [0, 1, 2]
    # Complete (never pruned), and invisible to the sampler: no searchable params.
    assert all(t.state.name == "COMPLETE" and t.params == {} for t in base.values())
    keras_io = base["keras_io"].user_attrs["strategy"]
    assert (keras_io["unfreeze_blocks"], keras_io["backbone_lr"], keras_io["bn_mode"]) == (
        -1, 1e-5, "frozen")
    assert base["fastai_fine_tune"].user_attrs["strategy"]["head_epochs"] == 1
    assert base["linear_probe"].user_attrs["strategy"]["finetune_epochs"] == 0
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 7
    html = build_report(config.study_dir, tmp_path / "r.html").read_text()
    assert 'id="baselines"' in html and "keras.io guide" in html
    # Each recipe's source and where it departs from it are named.
    assert 'href="https://keras.io/guides/transfer_learning/"' in html
    assert "recompiles everything at 1e-5" in html and "fastai: 2e-3 in the frozen epoch" in html


def test_ranking_and_keep_top_backbones_restrict_the_search(tmp_path):
    from tlsearch.search import open_study

    data = write_colour_dataset(tmp_path / "data", {"red": 16, "green": 16, "blue": 16})
    space = tmp_path / "two.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1)
                     .replace("tiny_cnn: [32]", "tiny_cnn: [32, 48]"))
    config = _config(tmp_path, data, space, trials=3, keep_top_backbones=1)
    events = []
    run_search(config, on_event=lambda kind, info: events.append((kind, info)))
    study = open_study(config, create=False).study
    ranking = study.user_attrs["ranking"]
    assert {r["key"] for r in ranking} == {"tiny_cnn@32", "tiny_cnn@48"}
    assert ranking[0]["probe_balanced_accuracy"] >= ranking[1]["probe_balanced_accuracy"]
    kept = study.user_attrs["kept_backbones"]
    assert kept == [ranking[0]["key"]]
    sizes = {t.user_attrs["strategy"]["image_size"] for t in study.get_trials()}
    assert sizes == {int(kept[0].split("@")[1])}
    assert sum(k == "rank" for k, _ in events) == 2
    # --ranker picks the order: by compute, the 48 px pair comes first and is kept.
    by_size = _config(tmp_path, data, space, trials=1, keep_top_backbones=1, ranker="size",
                      study="z")
    run_search(by_size)
    sized = open_study(by_size, create=False).study
    assert sized.user_attrs["ranker"] == "size"
    assert sized.user_attrs["kept_backbones"] == ["tiny_cnn@48"]


def test_constraints_limit_the_recommendation(setup):
    tmp_path, data, space = setup
    runner = CliRunner()
    out = tmp_path / "studies"
    base = ["search", str(data), "--space", str(space), "--study", "c", "--out", str(out),
            "--weights", "none", "--cache-dir", str(tmp_path / "c"), "--trials", "2",
            "--pruner", "none"]
    result = runner.invoke(app, base + ["--max-params", "1"])
    assert result.exit_code == 0, result.output
    assert "Recommendation" not in result.output
    status = runner.invoke(app, ["status", "c", "--out", str(out), "--json"])
    summary = json.loads(status.stdout)
    assert summary["best"] is None and summary["excluded_by_constraints"] == 2
    from tlsearch.report import build_report

    html = build_report(out / "c", tmp_path / "c.html").read_text()
    assert "No trial meets the constraints" in html


def test_no_rank_and_latency_limit(tmp_path):
    from tlsearch.search import open_study

    data = write_colour_dataset(tmp_path / "data", {"red": 16, "green": 16, "blue": 16})
    space = tmp_path / "two.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1)
                     .replace("tiny_cnn: [32]", "tiny_cnn: [32, 48]"))
    config = _config(tmp_path, data, space, trials=1, rank=False, max_latency_ms=1e-6)
    outcome = run_search(config)
    study = open_study(config, create=False).study
    assert "ranking" not in study.user_attrs  # --no-rank: no pass before the trials
    assert outcome.counts == {"complete": 1} and outcome.best is None  # nothing that fast


def test_two_workers_with_one_seed_draw_different_start_up_points():
    import optuna

    from tlsearch.search._storage import _make_sampler

    storage = optuna.storages.InMemoryStorage()
    # Two workers: two study objects over one storage, each with its own sampler built
    # from the same --seed, as every worker process builds it.
    first, second = (optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                         sampler=_make_sampler(7)) for _ in range(2))
    a, b = first.ask(), second.ask()
    assert (a.number, b.number) == (0, 1)
    draws = [t.suggest_float("lr", 1e-4, 1.0, log=True) for t in (a, b)]
    assert draws[0] != draws[1]
    # Reproducible from the seed: trial 0 of a fresh one-worker study draws the same.
    again = optuna.create_study(sampler=_make_sampler(7)).ask()
    assert again.suggest_float("lr", 1e-4, 1.0, log=True) == draws[0]


class _AlwaysPrune:
    """A pruner that stops every trial the first time it is asked."""

    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize(("unfreeze", "stopped_at", "pruning_steps"),
                         [(0, 1, [1]), (1, 3, [1])])
def test_a_fine_tuning_trial_meets_the_pruner_only_after_fine_tuning(
        trial_data, unfreeze, stopped_at, pruning_steps):
    import optuna
    from optuna.pruners import BasePruner

    from tlsearch.search import pruning_offset
    from tlsearch.search._optuna import _OptunaReporter
    from tlsearch.strategy import Strategy
    from tlsearch.train import TrialPruned, run_trial

    strategy = Strategy(backbone="tiny_cnn", image_size=32, weights="none", head_epochs=2,
                        finetune_epochs=3, unfreeze_blocks=unfreeze, head_lr=3e-2,
                        backbone_lr=3e-3, batch_size=16, head_dropout=0.0, seed=1)
    pruner = type("AlwaysPrune", (_AlwaysPrune, BasePruner), {})()
    trial = optuna.create_study(direction="maximize", pruner=pruner).ask()
    epochs: list[int] = []
    reporter = _OptunaReporter(trial, lambda info: epochs.append(info["step"]),
                               offset=pruning_offset(strategy))
    with pytest.raises(TrialPruned):
        run_trial(strategy, trial_data, reporter)
    # Head-only: judged after its first epoch. Fine-tuning: its two warm-up epochs are
    # not shown to the pruner; it is judged after its first fine-tuning epoch (step 3).
    assert epochs[-1] == stopped_at
    assert sorted(trial.storage.get_trial(trial._trial_id).intermediate_values) == pruning_steps


def test_a_moved_study_opens_where_it_is_and_never_where_it_was(study_copy, finished_study,
                                                                 tmp_path, monkeypatch):
    """A copied (or moved) study folder, used from another working directory: export,
    report, status and priors read and write the copy; the folder it was created in is
    left byte for byte as it was, and a study that is gone leaves nothing behind."""
    from tlsearch.cli import app
    from tlsearch.export import EXPORT_ATTR
    from tlsearch.priors import load_priors
    from tlsearch.search import load_config, open_study

    studies, _ = study_copy
    original = finished_study / "studies" / "s"
    before = {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    runner = CliRunner()
    done = runner.invoke(app, ["export", "s", "--studies", str(studies), "--out",
                               str(tmp_path / "model"), "--no-tta"])
    assert done.exit_code == 0, done.output
    assert load_config(studies / "s").study_dir == studies / "s"
    assert EXPORT_ATTR in open_study(load_config(studies / "s"), create=False).study.user_attrs
    assert runner.invoke(app, ["status", "s", "--out", str(studies)]).exit_code == 0
    assert runner.invoke(app, ["report", "s", "--studies", str(studies), "--out",
                               str(tmp_path / "r.html")]).exit_code == 0
    assert load_priors([studies / "s"], top=1)
    assert {p.name: p.read_bytes() for p in original.iterdir() if p.is_file()} == before
    # A study that is not there: one line, and no empty study left in its place.
    gone = runner.invoke(app, ["export", "s", "--studies", str(tmp_path / "nowhere"),
                               "--out", str(tmp_path / "m2")])
    assert gone.exit_code != 0 and "no study" in gone.output
    assert not (tmp_path / "nowhere").exists()
