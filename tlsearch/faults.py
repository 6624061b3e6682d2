"""Faults a test injects into a search: NaN losses and native crashes, on chosen trials.

Not part of any public signature: a test wraps the search in `inject(...)`, and the
places that honour a fault ask `active()`. The faults travel in an environment
variable, so worker processes (spawned, with their own interpreter) see them too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Faults", "active", "inject"]

_ENV = "_TLSEARCH_TEST_FAULTS"


@dataclass(frozen=True)
class Faults:
    #: Every trial's loss is non-finite from this training step on.
    nan_at_step: int | None = None
    #: These trials' losses are non-finite from their first step.
    nan_trials: frozenset[int] = frozenset()
    #: Trial number -> the signal it kills its process with after its first epoch
    #: (`"SIGSEGV"`); `"SIGSEGV:always"` crashes its crash retry too.
    crash_trials: Mapping[int, str] = field(default_factory=dict)

    def nan_step(self, number: int) -> int | None:
        """The step from which trial `number`'s loss is NaN, if any."""
        return 1 if number in self.nan_trials else self.nan_at_step

    def crash_signal(self, number: int, attrs: Mapping[str, Any]) -> str | None:
        """The signal trial `number` (with user attributes `attrs`) dies of, if any."""
        if number in self.crash_trials:
            return self.crash_trials[number]
        first = self.crash_trials.get(attrs.get("crash_retry_of"))
        return first if first and first.endswith(":always") else None


def active() -> Faults:
    """The faults injected around the running code (none outside a test)."""
    raw = os.environ.get(_ENV)
    if not raw:
        return Faults()
    data = json.loads(raw)
    return Faults(nan_at_step=data["nan_at_step"], nan_trials=frozenset(data["nan_trials"]),
                  crash_trials={int(k): v for k, v in data["crash_trials"].items()})


@contextmanager
def inject(*, nan_at_step: int | None = None, nan_trials: Collection[int] = (),
           crash_trials: Mapping[int, str] | None = None) -> Iterator[Faults]:
    """Inject faults into every search started inside the block (workers included)."""
    faults = Faults(nan_at_step=nan_at_step, nan_trials=frozenset(nan_trials),
                    crash_trials=dict(crash_trials or {}))
    before = os.environ.get(_ENV)
    os.environ[_ENV] = json.dumps({"nan_at_step": nan_at_step, "nan_trials": sorted(nan_trials),
                                   "crash_trials": {str(k): v for k, v in
                                                    faults.crash_trials.items()}})
    try:
        yield faults
    finally:
        if before is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = before
