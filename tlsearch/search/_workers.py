"""Supervised worker processes on one study: every `tlsearch search`, `--workers N`.

Optuna's own distributed mode is the scheduler: every worker runs the ordinary
`run_search` loop against the same storage (the journal file is safe for local
processes, PostgreSQL/MySQL for many machines), and the sampler's constant liar keeps
them from proposing the same point. This module starts the processes, gives each its
share of the CPU, funnels their progress events to one display, and replaces a worker
that dies natively (a crashed trial is a failed trial, never the end of the search).
Workers live across trials: the backbone pool, traced steps and open caches are theirs,
and only a crash or the memory limit costs a cold start.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import queue as queue_lib
import signal
import time
from collections.abc import Callable
from typing import Any

from tlsearch.search._config import SearchConfig, SearchError
from tlsearch.search._optuna import MAX_CONSECUTIVE_FAILURES
from tlsearch.search._prepare import prepare_split
from tlsearch.search._recovery import _process_start, fail_crashed_trials
from tlsearch.search._storage import open_study
from tlsearch.search._summary import SearchOutcome, study_summary

__all__ = ["run_workers", "signal_name", "threads_per_worker"]

#: Seconds a worker may take to exit after Ctrl-C before it is terminated.
EXIT_GRACE = 60.0


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads per worker so that N workers do not oversubscribe the CPU."""
    if cores is None:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _worker_main(config_json: str, worker: int, threads: int, events: Any,
                 supervisor: dict[str, Any]) -> None:
    """Child process entry: one ordinary search loop, events sent back as JSON."""
    _die_with_parent()
    # Before TensorFlow is imported: its thread pools are sized once, at start-up.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore")

    from tlsearch.errors import expected_errors, one_line
    from tlsearch.native import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tlsearch.search._optuna import run_search

    def send(kind: str, info: dict[str, Any]) -> None:
        info = dict(info, worker=worker)
        if "strategy" in info and hasattr(info["strategy"], "to_dict"):
            info["strategy"] = info["strategy"].to_dict()
        events.put(json.dumps([kind, info], default=str))

    config = SearchConfig.from_dict(json.loads(config_json))
    try:
        outcome = run_search(config, on_event=send, supervisor=supervisor)
        send("worker_end", {"stopped": outcome.stopped, "recovered": outcome.recovered})
    except KeyboardInterrupt:
        send("worker_end", {"stopped": "interrupted", "recovered": []})
    except expected_errors() as exc:  # weights, storage, dataset, space: one line
        send("worker_end", {"stopped": "error", "error": one_line(exc), "recovered": []})
    except Exception as exc:  # reported by the parent as one line; the study is intact
        send("worker_end", {"stopped": "error", "recovered": [],
                            "error": f"worker {worker} crashed: {type(exc).__name__}: {exc}"})


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this worker when its supervisor dies (Linux), so that a
    killed search leaves no orphan training on: its trial is recovered by the next run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the orphan finishes its trial and the storage stays consistent
    if os.getppid() == 1:  # the parent died before the call above took effect
        os._exit(1)


def signal_name(exitcode: int | None) -> str:
    """`SIGSEGV` for a process killed by signal 11 (exit code -11), else `exit:N`."""
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal:{-exitcode}"
    return f"exit:{exitcode}"


def run_workers(config: SearchConfig, workers: int = 1, *,
                on_event: Callable[[str, dict], None] | None = None) -> SearchOutcome:
    """Run `workers` supervised processes on one study until it has `config.trials`
    finished trials; `tlsearch search` uses it for one worker too.

    The parent creates the study and the split first, so workers never race to create
    them, then shows the workers' events as they arrive. A worker that dies natively
    (SIGSEGV, SIGABRT, the OOM killer's SIGKILL) does not end the search: its running
    trial is failed as `crashed:<SIGNAL>`, retried once from its last checkpoint, and a
    fresh worker takes its place. A worker past `config.worker_memory_mb` after a trial
    is replaced the same way. Ctrl-C reaches every worker (same process group): each
    checkpoints and requeues its running trial.
    """
    from tlsearch.strategy import Strategy

    if workers < 1:
        raise SearchError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and config.storage and config.storage.startswith("sqlite"):
        # SQLite serialises writers with a file lock that Optuna's retries do not cover:
        # several processes give "database is locked" under load.
        raise SearchError("SQLite storage is for one worker; use the default journal storage "
                          "or postgresql://... for --workers > 1")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    emit = on_event or (lambda kind, info: None)
    handle = open_study(config)
    prepare_split(handle)

    ctx = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    events = ctx.Queue()
    threads = threads_per_worker(workers)
    me = {"pid": os.getpid(), "started": _process_start(os.getpid())}
    started = time.monotonic()

    def spawn(i: int) -> Any:
        left = config.timeout
        if left is not None:  # a replacement worker gets what is left of the budget
            left = max(0.001, left - (time.monotonic() - started))
        payload = json.dumps(dataclasses.replace(config, timeout=left).to_dict())
        proc = ctx.Process(target=_worker_main, name=f"tlsearch-worker-{i}",
                           args=(payload, i, threads, events, me))
        proc.start()
        return proc

    if workers > 1:
        emit("notice", {"message": f"{workers} workers on study {config.study!r}, "
                                   f"{threads} TensorFlow thread(s) each"})
    procs = {i: spawn(i) for i in range(workers)}
    ends: dict[int, dict[str, Any]] = {}
    final: dict[int, dict[str, Any]] = {}
    crashes: list[dict[str, Any]] = []
    crashes_in_a_row = 0
    seen_data = False
    interrupted = False

    def pump(timeout: float) -> bool:
        nonlocal seen_data, crashes_in_a_row
        try:
            kind, info = json.loads(events.get(timeout=timeout))
        except queue_lib.Empty:
            return False
        if kind == "worker_end":
            ends[info["worker"]] = info
            return True
        if kind == "data":
            if seen_data:
                return True  # every worker (and every replacement) scans the same data
            seen_data = True
        if kind == "trial_end" and info.get("state") == "complete":
            crashes_in_a_row = 0
        if isinstance(info.get("strategy"), dict):
            info["strategy"] = Strategy.from_dict(info["strategy"])
        if workers == 1:
            info.pop("worker", None)  # one worker: no need to say which
        emit(kind, info)
        return True

    def drain() -> None:
        while pump(0.05):
            pass

    def reap() -> None:
        """Decide for each exited worker: finished, or replaced by a fresh one."""
        nonlocal crashes_in_a_row
        for i, proc in list(procs.items()):
            if proc.is_alive():
                continue
            proc.join()
            drain()  # its last events (worker_end) may still be in the queue
            end = ends.pop(i, None)
            if end is not None and end.get("stopped") == "recycle" and not interrupted:
                emit("notice", {"message": f"worker {i} passed {config.worker_memory_mb:g} MB; "
                                           "replaced by a fresh one"})
                procs[i] = spawn(i)
                continue
            if end is not None or proc.exitcode == 0 or interrupted:
                final[i] = end or {"stopped": "done", "recovered": []}
                del procs[i]
                continue
            name = signal_name(proc.exitcode)
            records = fail_crashed_trials(handle, proc.pid, name)
            crashes.extend(records)
            crashes_in_a_row += 1
            for rec in records:
                emit("trial_end", {"number": rec["number"], "state": "failed",
                                   "reason": rec["reason"], "worker": i})
            retried = [r["number"] for r in records if r["retried"]]
            emit("notice", {"message": f"worker {i} died ({name})"
                            + (f" in trial(s) {[r['number'] for r in records]}" if records else "")
                            + ("; retrying from the last checkpoint in a fresh worker"
                               if retried else "; starting a fresh worker")})
            if crashes_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                final[i] = {"stopped": "all_failed", "recovered": []}
                del procs[i]
                continue
            procs[i] = spawn(i)

    try:
        while procs:
            pump(0.5)
            reap()
    except KeyboardInterrupt:
        interrupted = True
        deadline = time.monotonic() + EXIT_GRACE
        while any([p.is_alive() for p in procs.values()]) and time.monotonic() < deadline:
            try:
                pump(0.5)
            except KeyboardInterrupt:
                break
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in procs.values():
            proc.join()
        drain()
        final.update({i: ends.get(i, {"stopped": "interrupted", "recovered": []})
                      for i in procs})

    errors = [e["error"] for e in final.values() if e.get("stopped") == "error"]
    stops = {e.get("stopped") for e in final.values()}
    if interrupted or "interrupted" in stops:
        stopped = "interrupted"
    elif errors:  # weights, storage, space: what stopped one worker stops the search
        raise SearchError(errors[0])
    elif "all_failed" in stops:
        stopped = "all_failed"
    elif "timeout" in stops:
        stopped = "timeout"
    else:
        stopped = "done"
    recovered = sorted({n for e in final.values() for n in e.get("recovered", [])})
    summary = study_summary(open_study(config, create=False))
    return SearchOutcome(best=summary["best"], counts=summary["counts"], stopped=stopped,
                         recovered=recovered, study_dir=handle.dir, crashed=crashes,
                         selection=summary["selection"])
