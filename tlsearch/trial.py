"""What a trial takes and gives, whatever drives it: the `Reporter` it reports each
epoch to, the `Replay` of a recorded schedule, the `TrialResult` it returns, and the
exceptions that stop it (pruned, failed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tlsearch.strategy import Strategy

__all__ = ["NullReporter", "Replay", "Reporter", "TrialFailed", "TrialPruned", "TrialResult"]


class TrialPruned(Exception):
    """The reporter asked the trial to stop (the pruner judged it hopeless).

    `timings` holds where the trial's time went up to then (as `TrialResult.timings`).
    """

    timings: dict[str, float] = {}


class TrialFailed(Exception):
    """The trial cannot produce a score; `reason` is a short code such as `nan_loss`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Reporter(Protocol):
    def report(self, value: float, step: int) -> None: ...

    def should_stop(self) -> bool: ...


class NullReporter:
    """Reports nowhere and never stops a trial."""

    def report(self, value: float, step: int) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@dataclass(frozen=True)
class Replay:
    """A finished trial's schedule, trained again with nothing selected (`--retrain`).

    The trial chose its epoch count (best epoch), the head solve's C and its epoch soup
    on validation; a retrain on train + validation repeats those choices instead of
    making them again on images it now trains on: `steps` epochs with the trial's
    per-epoch learning-rate multipliers (cosine, warm-up, plateau decay as they
    happened), its `head_C`, and the final weights kept (or the average of its weights
    at `soup_steps`).
    """

    steps: int
    lr_factors: tuple[float, ...]
    head_C: float | None  # None: the head started from Keras's initialisation
    #: The epochs whose weights the trial's epoch soup averaged (empty: none); the replay
    #: averages its own weights at the same steps, choosing nothing.
    soup_steps: tuple[int, ...] = ()

    @classmethod
    def of(cls, result: dict[str, Any]) -> Replay:
        """From a trial's `result.json` (`TrialResult.to_dict`)."""
        strategy = Strategy.from_dict(result["strategy"])
        steps = int(result["metrics"]["best_step"])
        factors = tuple(h["lr_head"] / strategy.head_lr for h in result["history"][:steps])
        solve = result.get("extra", {}).get("head_solve")
        if strategy.head_init != "random" and not solve:
            raise ValueError("the trial's head solve was not recorded (a study from before "
                             "tlsearch 0.5): its C cannot be repeated")
        soup = result.get("extra", {}).get("epoch_soup") or {}
        return cls(steps=steps, lr_factors=factors,
                   head_C=float(solve["C"]) if solve else None,
                   soup_steps=tuple(int(n) for n in soup.get("ingredients", ()))
                   if soup.get("adopted") else ())


@dataclass(frozen=True)
class TrialResult:
    """Everything a trial leaves behind, JSON-serialisable via `to_dict`."""

    strategy: Strategy
    state: str  # "complete" | "pruned" | "failed"
    objective: float | None
    metric_name: str
    metrics: dict[str, Any]
    history: tuple[dict[str, Any], ...]
    timings: dict[str, float]
    params: dict[str, int]
    latency_ms: float | None
    cached: bool
    cache: dict[str, int]
    val_probabilities: np.ndarray | None = None
    failure_reason: str | None = None
    failure_detail: str = ""
    resumed_from_step: int = 0
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    #: The deployable Keras model with the trial's final weights (complete trials only).
    model: Any = field(default=None, repr=False, compare=False)
    #: The digest of its backbone's weights where they are still as built (only the head
    #: trained): `tlsearch.kept` then keeps only the head.
    backbone_digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy.to_dict(), "state": self.state,
            "objective": self.objective, "metric_name": self.metric_name,
            "metrics": self.metrics, "history": list(self.history), "timings": self.timings,
            "params": self.params, "latency_ms": self.latency_ms, "cached": self.cached,
            "cache": self.cache, "failure_reason": self.failure_reason,
            "failure_detail": self.failure_detail, "resumed_from_step": self.resumed_from_step,
            "notes": list(self.notes), "extra": self.extra,
        }
