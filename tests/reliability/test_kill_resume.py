"""Kill and resume: SIGKILL a searching worker at random points, resume each time."""

from __future__ import annotations

import random
import signal
import subprocess

import pytest

from tests.reliability.conftest import KILLS
from tests.reliability.helpers import ENV, load_study, tiny_search

pytestmark = pytest.mark.reliability


def test_random_sigkills_lose_nothing(tmp_path, figures):
    _, studies, args = tiny_search(tmp_path)
    rng = random.Random(0)
    trials_arg = ["--trials", "1000"]  # never reached: every run ends by a kill
    complete_seen: set[int] = set()
    finished_history: list[int] = []
    lost = hangs = 0
    for _ in range(KILLS):
        proc = subprocess.Popen(args + trials_arg, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # Process start (~5 s here), split and cache writes, training, checkpoint writes:
        # the kill lands anywhere in them.
        try:
            proc.wait(timeout=rng.uniform(4.0, 14.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if not (studies / "r" / "journal.log").exists():
            continue
        study = load_study(studies)
        complete = {t.number for t in study.trials if t.state.name == "COMPLETE"}
        lost += len(complete_seen - complete)
        complete_seen |= complete
        finished_history.append(len(complete))
    # One last run, not killed, must recover whatever was left running and finish.
    target = len(complete_seen) + 2
    try:
        done = subprocess.run(args + ["--trials", str(target)], env=ENV, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    except subprocess.TimeoutExpired:
        hangs += 1
    study = load_study(studies)
    trials = study.trials
    complete = {t.number for t in trials if t.state.name == "COMPLETE"}
    lost += len(complete_seen - complete)
    running = [t.number for t in trials if t.state.name == "RUNNING"]
    # A trial is duplicated if it (or a retry of it) completed twice.
    roots: dict[int, int] = {}
    for t in trials:
        origin = t.user_attrs.get("retry_of")
        roots[t.number] = roots.get(origin, origin) if origin is not None else t.number
    chains: dict[int, int] = {}
    for t in trials:
        if t.state.name == "COMPLETE":
            chains[roots[t.number]] = chains.get(roots[t.number], 0) + 1
    duplicated = sum(n - 1 for n in chains.values() if n > 1)
    # Epochs redone per kill: steps the killed trial had reported beyond the checkpoint
    # its retry resumed from.
    by_retry_of = {t.user_attrs.get("retry_of"): t for t in trials
                   if t.user_attrs.get("retry_of") is not None}
    redone = []
    for t in trials:
        retry = by_retry_of.get(t.number)
        if (t.user_attrs.get("failure_reason") == "worker_died" and retry is not None
                and retry.state.name == "COMPLETE" and t.intermediate_values):
            redone.append(max(0, max(t.intermediate_values) -
                              int(retry.user_attrs.get("resumed_from_step") or 0)))
    monotonic = all(a <= b for a, b in zip(finished_history, finished_history[1:], strict=False))
    killed = sum(t.user_attrs.get("failure_reason") == "worker_died" for t in trials)
    figures.add("kills", KILLS)
    figures.add("trials killed mid-run (worker_died)", killed)
    figures.add("completed trials lost", lost, "0")
    figures.add("completed trials duplicated", duplicated, "0")
    figures.add("stale RUNNING trials after recovery", len(running), "0")
    figures.add("resume hangs", hangs, "0")
    figures.add("epochs redone per kill (max)", max(redone, default=0), "<= 1")
    figures.add("progress monotonic", monotonic, "True")
    assert lost == 0 and duplicated == 0 and not running and hangs == 0
    assert max(redone, default=0) <= 1 and monotonic
    assert len(complete) >= target
