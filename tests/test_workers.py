"""Several workers on one study: the embedded journal and a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import TINY_SPACE, write_colour_dataset
from tlsearch import faults
from tlsearch.search import SearchConfig, SearchError, open_study, run_workers, threads_per_worker


def _config(tmp_path, data, space, **kw) -> SearchConfig:
    base = dict(data_dir=str(data), space=str(space), study="w", out=str(tmp_path / "studies"),
                weights="none", cache_dir=str(tmp_path / "cache"), pruner="none")
    base.update(kw)
    return SearchConfig(**base)


def test_threads_are_shared_out():
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(4, cores=2) == 1
    assert threads_per_worker(2, cores=16) == 8


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_k_workers_finish_exactly_k_times_m_trials(backend, small_study, request):
    tmp_path, data, space = small_study
    workers, per_worker = 4, 2
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    config = _config(tmp_path, data, space, trials=workers * per_worker, storage=storage,
                     study=f"k-{backend}")
    # An enqueued trial (as the baseline recipes are) must be taken by exactly one worker.
    handle = open_study(config)
    handle.study.enqueue_trial({"backbone": "tiny_cnn@32", "unfreeze_blocks": 0,
                                "head_lr": 0.01}, user_attrs={"baseline": "probe"})
    events = []
    outcome = run_workers(config, workers, on_event=lambda k, i: events.append((k, i)))
    trials = open_study(config, create=False).study.get_trials()
    table = [(t.number, t.state.name, t.user_attrs.get("worker"), str(t.datetime_start))
             for t in trials]
    assert outcome.stopped == "done"
    assert outcome.counts == {"complete": workers * per_worker}, (table, events)
    assert sorted(t.number for t in trials) == list(range(workers * per_worker))
    baselines = [t for t in trials if t.user_attrs.get("baseline") == "probe"]
    assert len(baselines) == 1 and baselines[0].params["head_lr"] == 0.01
    # Work really was shared: more than one worker process ran trials.
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) > 1 and os.getpid() not in pids
    assert {i["worker"] for k, i in events if k == "trial_start"} >= {0, 1}


def test_sqlite_is_refused_for_several_workers(small_study):
    tmp_path, data, space = small_study
    config = _config(tmp_path, data, space, trials=2,
                     storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(SearchError, match="SQLite storage is for one worker"):
        run_workers(config, 2)


def test_killed_worker_trial_is_recovered_by_the_others(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    data = write_colour_dataset(tmp_path / "data", {"red": 20, "green": 20, "blue": 20})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=5, finetune_epochs=5)
                     .replace("[0, 1]", "[1]"))
    study_dir = tmp_path / "studies" / "kill"
    args = [sys.executable, "-m", "tlsearch.cli", "search", str(data), "--space", str(space),
            "--study", "kill", "--out", str(tmp_path / "studies"), "--trials", "4",
            "--weights", "none", "--cache-dir", str(tmp_path / "cache"), "--pruner", "none",
            "--workers", "3"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    parent = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        journal = study_dir / "journal.log"
        if not journal.exists():
            continue
        try:
            study = optuna.load_study(study_name="kill",
                                      storage=JournalStorage(JournalFileBackend(str(journal))))
        except KeyError:  # the journal exists but the study is not in it yet
            continue
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            latest = study_dir / "trials" / f"{t.number:04d}" / "checkpoint" / "latest.json"
            if "worker" in t.user_attrs and latest.exists() and \
                    json.loads(latest.read_text())["global_step"] >= 2:
                victim = t
                break
    assert victim is not None, "no trial reached step 2 while the workers ran"
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    output, _ = parent.communicate(timeout=300)
    assert parent.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="kill", storage=JournalStorage(
        JournalFileBackend(str(study_dir / "journal.log"))))
    dead = study.trials[victim.number]
    # Its supervisor saw it die and says how (the OOM killer's signal looks the same).
    assert dead.state.name == "FAIL" and dead.user_attrs["failure_reason"] == "crashed:SIGKILL"
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].user_attrs["retry_mode"] == "checkpoint"
    assert retries[0].user_attrs["resumed_from_step"] >= 2
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4
    assert "died (SIGKILL)" in output


@pytest.mark.parametrize(("workers", "how"), [(1, "SIGABRT"), (1, "SIGSEGV"), (2, "SIGABRT")])
def test_a_trial_that_crashes_natively_does_not_end_the_search(small_study, workers, how):
    tmp_path, data, space = small_study
    config = _config(tmp_path, data, space, trials=4, study=f"crash-{workers}-{how}")
    events = []
    with faults.inject(crash_trials={1: how}):
        outcome = run_workers(config, workers, on_event=lambda k, i: events.append((k, i)))
    trials = open_study(config, create=False).study.get_trials()
    crashed = trials[1]
    assert crashed.state.name == "FAIL"
    assert crashed.user_attrs["failure_reason"] == f"crashed:{how}"
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].user_attrs["retry_mode"] == "checkpoint"
    assert retries[0].user_attrs["resumed_from_step"] >= 1  # from its last checkpoint
    assert outcome.stopped == "done" and outcome.counts == {"complete": 4, "fail": 1}
    assert outcome.crashed == [{"number": 1, "reason": f"crashed:{how}", "retried": True}]
    assert any(k == "notice" and f"died ({how})" in i["message"] for k, i in events)


def test_a_trial_that_crashes_again_stays_failed_and_the_sampler_moves_on(small_study):
    from tlsearch.report import build_report

    tmp_path, data, space = small_study
    config = _config(tmp_path, data, space, trials=3, study="crash-always")
    with faults.inject(crash_trials={0: "SIGSEGV:always"}):
        outcome = run_workers(config, 1)
    trials = open_study(config, create=False).study.get_trials()
    reasons = [t.user_attrs.get("failure_reason") for t in trials if t.state.name == "FAIL"]
    assert reasons == ["crashed:SIGSEGV", "crashed:SIGSEGV"]  # the trial and its one retry
    assert trials[1].user_attrs["crash_retry_of"] == 0
    assert not any(t.user_attrs.get("crash_retry_of") == 1 for t in trials)
    # The failed retry counts as finished (the retried original does not).
    assert outcome.stopped == "done" and outcome.counts == {"complete": 2, "fail": 2}
    html = build_report(config.study_dir, tmp_path / "r.html").read_text()
    assert "Crashed trials" in html and "SIGSEGV" in html
    assert "a crash retry is not retried again" in html


def test_a_worker_past_its_memory_limit_is_replaced_between_trials(small_study):
    tmp_path, data, space = small_study
    config = _config(tmp_path, data, space, trials=3, study="recycle", worker_memory_mb=1.0)
    events = []
    outcome = run_workers(config, 1, on_event=lambda k, i: events.append((k, i)))
    trials = open_study(config, create=False).study.get_trials()
    assert outcome.stopped == "done" and outcome.counts == {"complete": 3}
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 3  # a fresh one each
    assert sum("replaced by a fresh one" in i.get("message", "") for k, i in events) == 3
