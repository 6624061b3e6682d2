"""What a study has found, read from its storage alone: the leaderboard, counts by
state, failures and the recommendation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsearch.search._config import meets_constraints
from tlsearch.search._storage import StudyHandle


@dataclass
class SearchOutcome:
    best: dict[str, Any] | None
    counts: dict[str, int]
    stopped: str  # "done" | "timeout" | "interrupted" | "all_failed"
    recovered: list[int] = field(default_factory=list)
    study_dir: Path | None = None
    crashed: list[dict[str, Any]] = field(default_factory=list)  # see fail_crashed_trials
    selection: dict[str, Any] | None = None  # tlsearch.recommend.Selection.to_dict()

def study_summary(handle: StudyHandle, *, top: int = 10) -> dict[str, Any]:
    """Leaderboard, counts by state and failures, from the storage alone."""
    from optuna.trial import TrialState

    from tlsearch.recommend import recommend_trial

    trials = handle.study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    complete.sort(key=lambda t: t.value, reverse=True)
    config = handle.config
    board = [{"number": t.number, "value": t.value, "strategy": t.user_attrs.get("strategy"),
              "seconds": t.user_attrs.get("seconds"), "latency_ms": t.user_attrs.get("latency_ms"),
              "params_total": t.user_attrs.get("params_total"),
              "baseline": t.user_attrs.get("baseline"),
              "eligible": meets_constraints(config, t.user_attrs.get("latency_ms"),
                                            t.user_attrs.get("params_total")),
              "metrics": t.user_attrs.get("metrics", {})} for t in complete]
    selection = recommend_trial(handle)
    best = next((row for row in board if selection and row["number"] == selection.chosen), None)
    failures = [{"number": t.number, "reason": t.user_attrs.get("failure_reason", "unknown"),
                 "detail": t.user_attrs.get("failure_detail", "")}
                for t in trials if t.state == TrialState.FAIL]
    return {"study": handle.config.study, "metric": handle.study.user_attrs.get("metric"),
            "counts": counts, "leaderboard": board[:top], "failures": failures,
            "best": best, "selection": selection.to_dict() if selection else None,
            "excluded_by_constraints": sum(not row["eligible"] for row in board),
            "ranking": handle.study.user_attrs.get("ranking") or [],
            # held-out test scores of the recommendation and baselines (tlsearch.holdout)
            "test": handle.study.user_attrs.get("holdout") or None}
