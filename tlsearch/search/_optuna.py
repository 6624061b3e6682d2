"""The Optuna engine: the search loop that asks the study for trials, trains them
(pruned by the study's pruner) and records how each ended, until the study has
`--trials` finished trials. Several processes may run it on one study (`_workers`)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlsearch.faults import active as active_faults
from tlsearch.search._config import SearchConfig, SearchError
from tlsearch.search._prepare import _enqueue_floor, prepare_search
from tlsearch.search._recorder import TrialRecorder, disk_error, disk_failure
from tlsearch.search._recovery import (
    _enqueue_retry,
    _Heartbeat,
    _process_start,
    recover_stale_trials,
)
from tlsearch.search._storage import StudyHandle, _admission, _finished_count
from tlsearch.search._summary import SearchOutcome, study_summary

#: Consecutive failed trials after which a search stops instead of looping.
MAX_CONSECUTIVE_FAILURES = 5


def pruning_offset(strategy: Any) -> int:
    """Epochs of a trial the pruner does not see: a fine-tuning strategy's head warm-up.

    The pruner judges what a strategy is. Its warm-up epochs train the same head on the
    same frozen features as every head-only trial, so judged there (Hyperband's first
    rungs fall inside a 5-epoch warm-up) unfreeze depth, BatchNorm mode and backbone
    learning rate would never decide who survives. A fine-tuning trial therefore reports
    its fine-tuning epochs as pruning steps 1, 2, ...; a head-only trial its epochs.
    """
    return strategy.head_epochs if strategy.fine_tunes else 0

class _OptunaReporter:
    def __init__(self, trial: Any, on_epoch: Callable[[dict], None] | None, *,
                 prunable: bool = True, crash_with: str | None = None, offset: int = 0):
        self.trial, self.on_epoch, self.prunable = trial, on_epoch, prunable
        self.crash_with, self.offset = crash_with, offset
        self.reported = False

    def report(self, value: float, step: int) -> None:
        if self.crash_with:  # test hook: die natively mid-trial, after a checkpoint
            _crash(self.crash_with)
        if step > self.offset:  # see `pruning_offset`
            self.trial.report(value, step - self.offset)
            self.reported = True
        if self.on_epoch:
            self.on_epoch({"trial": self.trial.number, "step": step, "value": value})

    def should_stop(self) -> bool:
        # Baselines are the yardstick: they run their whole recipe.
        return self.prunable and self.reported and self.trial.should_prune()

def _crash(how: str) -> None:
    import signal

    if how.startswith("SIGABRT"):
        os.abort()
    os.kill(os.getpid(), getattr(signal, how.split(":")[0]))

def _resident_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0

def run_search(config: SearchConfig, *, on_event: Callable[[str, dict], None] | None = None,
               supervisor: dict[str, Any] | None = None) -> SearchOutcome:
    """Run (or continue) a search until `config.trials` trials are finished.

    Args:
        on_event: progress callback, called as `on_event(kind, info)` with kind one of
            "notice", "data", "rank", "trial_start", "epoch", "trial_end".
        supervisor: pid/start of the process supervising this one (`workers.py`), which
            records and retries this worker's trial if it dies; recorded with each trial.
    """
    from optuna.trial import TrialState

    from tlsearch.backbones import WeightsUnavailableError
    from tlsearch.strategy import Strategy
    from tlsearch.train import TrialPruned, run_trial

    emit = on_event or (lambda kind, info: None)
    faults = active_faults()
    prepared = prepare_search(config, emit)
    recorder = TrialRecorder(prepared.handle, emit)
    handle, study, space = prepared.handle, prepared.handle.study, prepared.space
    metric, data, cache, weights = prepared.metric, prepared.data, prepared.cache, prepared.weights

    recovered = recover_stale_trials(handle, stale_after=config.stale_after)
    if recovered:
        emit("notice", {"message": f"recovered trial(s) {recovered} left running by a dead "
                                   "worker; retrying from their checkpoints"})

    started = time.monotonic()
    consecutive_failures = 0
    stopped = "done"
    beat_every = max(1.0, min(30.0, config.stale_after / 4))
    while True:
        # Other workers may be on this study: take over their dead trials, and count
        # their running ones, so K workers finish exactly `trials` trials between them.
        again = recover_stale_trials(handle, stale_after=config.stale_after)
        if again:
            recovered += again
            emit("notice", {"message": f"recovered trial(s) {again} of a dead worker"})
        if config.timeout is not None and time.monotonic() - started > config.timeout:
            stopped = "timeout"
            break
        with _admission(handle):
            finished = _finished_count(study, with_running=True)
            if finished >= config.trials:
                break
            if finished == config.trials - 1:  # the last slot checks the floor
                _enqueue_floor(handle, emit)
            trial = study.ask()
            # Claim it at once: a trial without an owner can only be recovered by age.
            trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid(),
                                           "started": _process_start(os.getpid()),
                                           "supervisor": supervisor})
        attrs = trial.user_attrs  # enqueued retries carry their strategy and checkpoint
        fixed = bool(attrs.get("baseline")) or attrs.get("floor") is not None
        if attrs.get("strategy"):
            if not fixed:  # baselines and the floor stay out of the sampler's sight
                space.sample(trial, weights="none", seed=config.seed)  # registers params
            strategy = Strategy.from_dict(attrs["strategy"])
        else:
            strategy = space.sample(trial, weights="none", seed=config.seed)
            strategy = strategy.replace(weights=weights[strategy.backbone])
        tdir = handle.trial_dir(trial.number)
        tdir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("strategy", strategy.to_dict())
        resume_from = attrs.get("resume_from")
        if resume_from and Path(resume_from).exists() and Path(resume_from) != tdir / "checkpoint":
            shutil.copytree(resume_from, tdir / "checkpoint", dirs_exist_ok=True)
            trial.set_user_attr("resumed_from_checkpoint", True)
        emit("trial_start", {"number": trial.number, "strategy": strategy,
                             "finished": _finished_count(study), "total": config.trials,
                             "retry_of": attrs.get("retry_of"),
                             "baseline": attrs.get("baseline"), "floor": attrs.get("floor")})
        trial.set_user_attr("pruning_offset", pruning_offset(strategy))
        reporter = _OptunaReporter(trial, lambda info: emit("epoch", info),
                                   prunable=not fixed,
                                   crash_with=faults.crash_signal(trial.number, attrs),
                                   offset=pruning_offset(strategy))
        try:
            with _Heartbeat(trial, tdir / "heartbeat", beat_every):
                result = run_trial(strategy, data, reporter, checkpoint_dir=tdir / "checkpoint",
                                   resume_from=tdir / "checkpoint", metric=metric,
                                   feature_cache=cache, reuse_backbone=True,
                                   nan_at_step=faults.nan_step(trial.number))
        except TrialPruned as exc:
            recorder.write(trial.number, strategy, timings=exc.timings)
            study.tell(trial, state=TrialState.PRUNED)
            consecutive_failures = 0
            recorder.ended(trial.number, "pruned")
            continue
        except KeyboardInterrupt:
            recorder.fail_live(trial, "interrupted")
            _enqueue_retry(handle, study.get_trials(deepcopy=False)[trial.number])
            stopped = "interrupted"
            break
        except WeightsUnavailableError as exc:
            recorder.fail_live(trial, "weights_unavailable")
            raise SearchError(str(exc)) from None
        except OSError as exc:
            _stop_on_disk_error(handle, recorder, trial, exc)
        try:
            recorder.write(trial.number, strategy, result=result)
        except OSError as exc:
            _stop_on_disk_error(handle, recorder, trial, exc)
        for key, value in recorder.attributes(result).items():
            trial.set_user_attr(key, value)
        if result.state == "failed":
            study.tell(trial, state=TrialState.FAIL)
            consecutive_failures += 1
            recorder.ended(trial.number, "failed", result)
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                stopped = "all_failed"
                break
            continue
        consecutive_failures = 0
        recorder.keep_if_top(trial.number, result)
        study.tell(trial, result.objective)
        recorder.ended(trial.number, "complete", result)
        if config.worker_memory_mb and _resident_mb() > config.worker_memory_mb:
            stopped = "recycle"  # the supervisor starts a fresh worker in its place
            break
    summary = study_summary(handle)
    return SearchOutcome(best=summary["best"], counts=summary["counts"], stopped=stopped,
                         recovered=recovered, study_dir=handle.dir,
                         selection=summary["selection"])


def _stop_on_disk_error(handle: StudyHandle, recorder: TrialRecorder, trial: Any,
                        exc: OSError) -> None:
    """A write failed for lack of space or permission: requeue the trial (its last
    checkpoint, if one was written, is kept) and stop with one line saying what to do.
    Any other error is raised as it is."""
    reason = disk_failure(exc)
    if reason is None:
        raise exc
    try:  # the storage may live on the same full disk: best effort, recovery covers it
        recorder.fail_live(trial, reason)
        _enqueue_retry(handle, handle.study.get_trials(deepcopy=False)[trial.number])
    except Exception:
        pass
    raise disk_error(exc) from None
