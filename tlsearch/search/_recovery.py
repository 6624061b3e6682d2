"""Trials whose worker is gone: heartbeats, stale and crashed trials, and their retries
from the last checkpoint."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tlsearch.search._storage import StudyHandle


def _process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot, Linux), to tell a reused PID."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None

def _pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether the worker process `pid` (started at `started`, if known) still runs."""
    if pid == os.getpid():
        # This process is between trials whenever it checks: a RUNNING trial that names
        # it was left behind by an earlier, aborted search loop in this same process.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: dead
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        return True
    # The PID was reused by a newer process (after a reboot, say): the worker is gone.
    return started is None or _process_start(pid) in (None, started)

def recover_stale_trials(handle: StudyHandle, *, stale_after: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone and enqueue a retry from their checkpoint.

    A worker is gone when it ran on this host and its process no longer exists, or
    when its heartbeat file (touched every epoch) is older than `stale_after` seconds.
    Returns the numbers of the recovered trials.
    """
    import optuna
    from optuna.trial import TrialState

    study = handle.study
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        # The freshest sign of life: the heartbeat in the storage (seen from every
        # machine), the local heartbeat file, or the trial's start.
        beats = [float(trial.user_attrs.get("heartbeat") or 0.0)]
        if trial.datetime_start:
            beats.append(trial.datetime_start.timestamp())
        try:
            beats.append((handle.trial_dir(trial.number) / "heartbeat").stat().st_mtime)
        except OSError:
            pass
        age = time.time() - max(beats)
        same_host_dead = worker.get("host") == host and not _pid_alive(
            int(worker.get("pid", 0)), worker.get("started"))
        if not (same_host_dead or age > stale_after):
            continue
        supervisor = worker.get("supervisor") or {}
        if (same_host_dead and age <= stale_after and supervisor.get("pid") != os.getpid()
                and _pid_alive(int(supervisor.get("pid", 0)), supervisor.get("started"))):
            continue  # its supervisor records how it died (crashed:SIGSEGV) and retries it
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", "worker_died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker recovered it first
        _enqueue_retry(handle, trial)
        recovered.append(trial.number)
    return recovered

def _enqueue_retry(handle: StudyHandle, trial: Any, **extra: Any) -> None:
    # The checkpoint is only here when the dead worker ran on this machine or the study
    # folder is shared; otherwise the retry starts from scratch, and says so.
    ckpt = handle.trial_dir(trial.number) / "checkpoint"
    has_ckpt = (ckpt / "latest.json").exists()
    attrs = {
        "retry_of": trial.number,
        "strategy": trial.user_attrs.get("strategy"),
        "resume_from": str(ckpt) if has_ckpt else None,
        "retry_mode": "checkpoint" if has_ckpt else "scratch",
        "baseline": trial.user_attrs.get("baseline"),
        **extra,
    }
    handle.study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)

def fail_crashed_trials(handle: StudyHandle, pid: int, signal_name: str) -> list[dict[str, Any]]:
    """Fail the RUNNING trials of a worker process that died natively, and retry each once.

    The reason names the signal (`crashed:SIGSEGV`). A trial that is itself the retry
    of a crash stays failed, so one strategy that always crashes costs two attempts
    and the sampler moves on. Returns one record per trial: number, reason, retried.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    reason = f"crashed:{signal_name}"
    records = []
    for trial in handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or int(worker.get("pid", 0)) != pid:
            continue
        storage = handle.study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, "failure_reason", reason)
            storage.set_trial_user_attr(trial._trial_id, "crash_signal", signal_name)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # already recovered by someone else
        retried = trial.user_attrs.get("crash_retry_of") is None
        if retried:
            _enqueue_retry(handle, trial, crash_retry_of=trial.number)
        records.append({"number": trial.number, "reason": reason, "retried": retried})
    return records

class _Heartbeat:
    """Proof of life for a running trial, beaten from a thread so that a long epoch or
    a long prefix pass is not mistaken for a dead worker: touches the trial's local
    file and writes the time into the storage, where workers on other machines see it."""

    def __init__(self, trial: Any, path: Path, interval: float) -> None:
        self.trial, self.path, self.interval = trial, path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlsearch-heartbeat",
                                        daemon=True)

    def beat(self) -> None:
        self.path.touch()
        try:
            self.trial.set_user_attr("heartbeat", time.time())
        except Exception:  # a finished trial or a storage hiccup: the next beat retries
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> _Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
