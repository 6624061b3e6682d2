"""Several worker processes on one study: `tlsearch search --workers N`.

Optuna's own distributed mode is the scheduler: every worker runs the ordinary
`run_search` loop against the same storage (the journal file is safe for local
processes, PostgreSQL/MySQL for many machines), and the sampler's constant liar keeps
them from proposing the same point. This module only starts the processes, gives each
its share of the CPU, and funnels their progress events to one display.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue as queue_lib
import time
from collections.abc import Callable
from typing import Any

from tlsearch.study import SearchConfig, SearchError, SearchOutcome

__all__ = ["run_workers", "threads_per_worker"]

#: Seconds a worker may take to exit after Ctrl-C before it is terminated.
EXIT_GRACE = 60.0


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads per worker so that N workers do not oversubscribe the CPU."""
    if cores is None:
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _worker_main(config_json: str, worker: int, threads: int, events: Any,
                 nan_at_step: int | None) -> None:
    """Child process entry: one ordinary search loop, events sent back as JSON."""
    # Before TensorFlow is imported: its thread pools are sized once, at start-up.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore")

    from tlsearch.study import run_search

    def send(kind: str, info: dict[str, Any]) -> None:
        info = dict(info, worker=worker)
        if "strategy" in info and hasattr(info["strategy"], "to_dict"):
            info["strategy"] = info["strategy"].to_dict()
        events.put(json.dumps([kind, info], default=str))

    config = SearchConfig.from_dict(json.loads(config_json))
    try:
        outcome = run_search(config, on_event=send, nan_at_step=nan_at_step)
        send("worker_end", {"stopped": outcome.stopped, "recovered": outcome.recovered})
    except KeyboardInterrupt:
        send("worker_end", {"stopped": "interrupted", "recovered": []})
    except SearchError as exc:
        send("worker_end", {"stopped": "error", "error": str(exc), "recovered": []})
    except Exception as exc:  # reported by the parent as one line; the study is intact
        send("worker_end", {"stopped": "error", "recovered": [],
                            "error": f"worker {worker} crashed: {type(exc).__name__}: {exc}"})


def run_workers(config: SearchConfig, workers: int, *,
                on_event: Callable[[str, dict], None] | None = None,
                nan_at_step: int | None = None) -> SearchOutcome:
    """Run `workers` processes on one study until it has `config.trials` finished trials.

    The parent creates the study and the split first, so workers never race to create
    them, then shows the workers' events as they arrive. Ctrl-C reaches every worker
    (same process group): each checkpoints and requeues its running trial.
    """
    from tlsearch.strategy import Strategy
    from tlsearch.study import open_study, prepare_split, study_summary

    if workers < 1:
        raise SearchError(f"--workers must be at least 1, got {workers}")
    if config.storage and config.storage.startswith("sqlite"):
        # SQLite serialises writers with a file lock that Optuna's retries do not cover:
        # several processes give "database is locked" under load.
        raise SearchError("SQLite storage is for one worker; use the default journal storage "
                          "or postgresql://... for --workers > 1")
    emit = on_event or (lambda kind, info: None)
    handle = open_study(config)
    prepare_split(handle)

    ctx = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    events = ctx.Queue()
    threads = threads_per_worker(workers)
    payload = json.dumps(config.to_dict())
    procs = [ctx.Process(target=_worker_main, name=f"tlsearch-worker-{i}",
                         args=(payload, i, threads, events, nan_at_step))
             for i in range(workers)]
    emit("notice", {"message": f"{workers} workers on study {config.study!r}, "
                               f"{threads} TensorFlow thread(s) each"})
    for proc in procs:
        proc.start()

    ends: dict[int, dict[str, Any]] = {}
    interrupted = False

    def pump(timeout: float) -> None:
        try:
            kind, info = json.loads(events.get(timeout=timeout))
        except queue_lib.Empty:
            return
        if kind == "worker_end":
            ends[info["worker"]] = info
            return
        if kind == "data" and info["worker"] != 0:
            return  # every worker scans the same data: say it once
        if isinstance(info.get("strategy"), dict):
            info["strategy"] = Strategy.from_dict(info["strategy"])
        emit(kind, info)

    def alive() -> bool:
        # is_alive() on every process (not any(), which stops early) reaps the exited ones
        return any([p.is_alive() for p in procs])

    try:
        while alive():
            pump(0.5)
    except KeyboardInterrupt:
        interrupted = True
        deadline = time.monotonic() + EXIT_GRACE
        while alive() and time.monotonic() < deadline:
            try:
                pump(0.5)
            except KeyboardInterrupt:
                break
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    for proc in procs:
        proc.join()
    while True:  # events still queued after the last worker exited
        try:
            kind, info = json.loads(events.get_nowait())
        except queue_lib.Empty:
            break
        if kind == "worker_end":
            ends[info["worker"]] = info

    errors = [e["error"] for e in ends.values() if e.get("stopped") == "error"]
    crashed = [i for i, p in enumerate(procs) if i not in ends and p.exitcode not in (0, None)]
    for i in crashed:
        emit("notice", {"message": f"worker {i} exited with code {procs[i].exitcode}; its "
                                   "running trial will be retried on the next run"})
    stops = {e.get("stopped") for e in ends.values()}
    if interrupted or "interrupted" in stops:
        stopped = "interrupted"
    elif errors and len(errors) == workers:
        raise SearchError(errors[0])
    elif "all_failed" in stops:
        stopped = "all_failed"
    elif "timeout" in stops:
        stopped = "timeout"
    else:
        stopped = "done"
    for message in errors:
        emit("notice", {"message": message})
    recovered = sorted({n for e in ends.values() for n in e.get("recovered", [])})
    summary = study_summary(open_study(config, create=False))
    return SearchOutcome(best=summary["best"], counts=summary["counts"], stopped=stopped,
                         recovered=recovered, study_dir=handle.dir)
