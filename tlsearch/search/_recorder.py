"""A finished trial's bookkeeping, written once for both engines (Optuna, KerasTuner).

Whatever proposed the trial, its end is recorded the same way: `result.json` in its
folder, the attributes `status`, `report` and `export` read, its model kept if it
ranks among the best, one spelling of its state and one `trial_end` event. Only how
the state reaches the storage differs (a live Optuna trial is told; a KerasTuner trial
is added finished), so the engines pass that part in.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from tlsearch import kept
from tlsearch.atomic import write_json
from tlsearch.search._config import SearchError, meets_constraints
from tlsearch.search._storage import StudyHandle

#: errno values that mean "this disk cannot take the write", not "the code is wrong".
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
#: Complete trials whose final model is kept on disk for `tlsearch export`.
KEEP_TOP_MODELS = 3
MODEL_FILE = kept.MODEL_FILE  # or the head alone (`tlsearch.kept`)
#: How a trial ends, as result.json, events and the display spell it.
ENDS = ("complete", "pruned", "failed")


def optuna_state(end: str) -> Any:
    """The Optuna state a trial that ended as `end` (one of `ENDS`) is stored with."""
    from optuna.trial import TrialState

    return dict(zip(ENDS, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL),
                    strict=True))[end]


def disk_failure(exc: OSError) -> str | None:
    """The failure reason of a write the disk refused, or None for any other error."""
    if exc.errno not in DISK_ERRNOS:
        return None
    return {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full",
            errno.EROFS: "read_only"}.get(exc.errno, "not_writable")


def disk_error(exc: OSError) -> SearchError:
    """The one line a search stops with when the disk refused a write."""
    where = f" writing {exc.filename}" if exc.filename else ""
    return SearchError(f"{os.strerror(exc.errno)}{where}: free space (or fix permissions), "
                       "or use another --cache-dir/--out, then re-run the same command to "
                       "resume")


class TrialRecorder:
    """Records how each trial of one study ended; `emit` receives the `trial_end` events."""

    def __init__(self, handle: StudyHandle, emit: Callable[[str, dict], None]) -> None:
        self.handle, self.emit = handle, emit

    def write(self, number: int, strategy: Any, *, result: Any = None,
              timings: dict[str, float] | None = None) -> None:
        """The trial folder's `result.json`: the whole result, or (pruned, no result)
        the state, strategy and timings."""
        tdir = self.handle.trial_dir(number)
        tdir.mkdir(parents=True, exist_ok=True)
        if result is None:
            write_json(tdir / "result.json", {"state": "pruned", "strategy": strategy.to_dict(),
                                              "timings": timings})
            return
        data = result.to_dict()
        if result.val_probabilities is not None:
            data["val_probabilities"] = result.val_probabilities.tolist()
        write_json(tdir / "result.json", data)

    @staticmethod
    def attributes(result: Any) -> dict[str, Any]:
        """The user attributes a complete or failed trial is stored with."""
        if result.state == "failed":
            return {"failure_reason": result.failure_reason,
                    "failure_detail": result.failure_detail[:500]}
        return {
            "metrics": {k: result.metrics[k] for k in ("balanced_accuracy", "accuracy",
                                                       "macro_f1") if k in result.metrics},
            "latency_ms": result.latency_ms,
            "params_total": result.params.get("total"),
            "params_trainable": result.params.get("trainable_max"),
            "seconds": result.timings.get("total"),
            "cached": result.cached,
            "cache": result.cache,
            "resumed_from_step": result.resumed_from_step,
        }

    def keep_if_top(self, number: int, result: Any) -> None:
        """Save the trial's model if it may be recommended and ranks among the best few
        eligible trials (`meets_constraints`), or is a baseline recipe or the floor
        (scored on the test split at the end); drop the models that fell out."""
        from optuna.trial import TrialState

        config = self.handle.config
        ranked, keep = [], set()
        trials = self.handle.study.get_trials(deepcopy=False)
        for t in trials:
            value = result.objective if t.number == number else (
                t.value if t.state == TrialState.COMPLETE else None)
            if value is None:
                continue
            if t.user_attrs.get("baseline") or t.user_attrs.get("floor") is not None:
                keep.add(t.number)
            if meets_constraints(config, t.user_attrs.get("latency_ms"),
                                 t.user_attrs.get("params_total")):
                ranked.append((value, -t.number, t.number))
        keep |= {n for _, _, n in sorted(ranked, reverse=True)[:KEEP_TOP_MODELS]}
        if number in keep and result.model is not None:
            kept.save(self.handle.trial_dir(number), result)
        for t in trials:
            if t.number not in keep and t.number != number and t.state == TrialState.COMPLETE:
                kept.drop(self.handle.trial_dir(t.number))
        if number not in keep:
            kept.drop(self.handle.trial_dir(number))

    def ended(self, number: int, end: str, result: Any = None, *,
              value: float | None = None) -> None:
        """Announce the end: one event shape whatever the engine."""
        complete = end == "complete"
        self.emit("trial_end", {
            "number": number, "state": end,
            "value": (value if value is not None else result.objective) if complete else None,
            "reason": result.failure_reason if end == "failed" and result is not None else None,
            "seconds": result.timings.get("total") if complete and result is not None else None})

    def fail_live(self, trial: Any, reason: str) -> None:
        """Fail a running Optuna trial of this process with a reason."""
        trial.set_user_attr("failure_reason", reason)
        self.handle.study.tell(trial, state=optuna_state("failed"))

