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

from tests.conftest import write_colour_dataset
from tlsearch.cli import app
from tlsearch.study import SearchConfig, SearchError, run_search

TINY_SPACE = """\
name: tiny
backbones:
  tiny_cnn: [32]
unfreeze_blocks: [0, 1]
head_epochs: {head_epochs}
finetune_epochs: {finetune_epochs}
head_lr: {{low: 1.0e-3, high: 3.0e-2, log: true}}
batch_size: 16
head_dropout: 0.0
"""


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
    with pytest.raises(SearchError, match="different search space"):
        run_search(_config(tmp_path, data, space, trials=3, overrides=("head_epochs=3",)))


def test_nan_trials_fail_and_the_search_stops(setup):
    tmp_path, data, space = setup
    outcome = run_search(_config(tmp_path, data, space, trials=10), nan_at_step=1)
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
