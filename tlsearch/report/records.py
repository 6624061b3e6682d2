"""A study folder read into trial records: the storage's trials, each with its
`result.json` (when there is one), the saved split and notes on what could not be read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.report.stats import _finite
from tlsearch.report.wording import _short

__all__ = ["TrialRecord"]


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial as the report reads it, from the storage and its `result.json`.

    Every field but `number` and `state` has a default, so a test can write a record by
    hand. Frozen, yet its dicts and lists are the loaded data itself: read them only.
    The template and the plots see `to_dict()`.
    """

    number: int
    #: complete | pruned | failed | running | waiting
    state: str
    #: The objective, for a complete trial only.
    value: float | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Searched parameter -> {kind, log}, from Optuna's distributions.
    distributions: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: `Strategy.to_dict()`, or None when the trial never recorded one.
    strategy: dict[str, Any] | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: One dict per epoch (step, phase, train/val loss and accuracy).
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Step -> score reported to the pruner.
    intermediate: dict[int, float] = dataclasses.field(default_factory=dict)
    seconds: float | None = None
    latency_ms: float | None = None
    params_total: int | None = None
    cached: bool | None = None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)
    failure_reason: str | None = None
    failure_detail: str = ""
    retry_of: int | None = None
    #: Where the retry started: the dead trial's checkpoint (same machine or a shared
    #: study folder) or scratch (its checkpoint was on another machine).
    retry_mode: str = "scratch"
    resumed_from_step: int | None = None
    baseline: str | None = None
    #: The trial whose backbone this linear probe checks.
    floor: int | None = None
    #: {source, trial, value}: enqueued from --prior.
    prior: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    has_result: bool = False
    #: ISO start time, to the second.
    started: str | None = None
    #: Place among the complete trials, best first (set by the assembly).
    rank: int | None = None
    #: Within --max-latency-ms / --max-params (set by the assembly).
    eligible: bool = True

    @property
    def short(self) -> str:
        """The strategy in one line, for tables and evidence."""
        return _short(self.strategy)

    def to_dict(self) -> dict[str, Any]:
        """The record as the plain dict the template and the plots read."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["short"] = self.short
        return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclasses.dataclass
class _Loaded:
    handle: Any
    trials: list[TrialRecord]
    probs: dict[int, np.ndarray]
    split: Any | None
    notes: list[str]


def _load(study_dir: Path) -> _Loaded:
    from tlsearch.search import SearchError, load_config, open_study
    from tlsearch.space import SpaceError

    study_dir = Path(study_dir)
    config = load_config(study_dir)  # opens where it is, if moved
    notes: list[str] = []
    try:
        handle = open_study(config, create=False)
    except (SpaceError, SearchError) as exc:
        # The space YAML was a temporary file since deleted, or it was edited after the
        # study started: the trials are still there to report on.
        handle = _open_without_space(config, exc, notes)
    trials, probs = [], {}
    for t in handle.study.get_trials(deepcopy=False):
        record, p = _trial_record(t, handle.trial_dir(t.number))
        trials.append(record)
        if p is not None:
            probs[t.number] = p
    split = None
    split_path = study_dir / "split.json"
    if split_path.exists():
        from tlsearch.data import DatasetError, Split

        try:
            split = Split.load(split_path)
        except DatasetError as exc:
            notes.append(f"The saved split could not be read ({exc}).")
    else:
        notes.append("The study has no saved split yet (split.json).")
    return _Loaded(handle, trials, probs, split, notes)


def _open_without_space(config: Any, exc: Exception, notes: list[str]) -> Any:
    import optuna

    from tlsearch.search import SearchError, StudyHandle, make_storage

    try:
        study = optuna.load_study(study_name=config.study,
                                  storage=make_storage(config.storage, config.study_dir))
    except KeyError:
        raise SearchError(f"no study named {config.study!r} in {config.study_dir}") from None
    notes.append(f"The search space could not be reloaded ({str(exc).splitlines()[0][:300]}); "
                 "the report uses the trials alone.")
    return StudyHandle(config=config, study=study, space=None)


def _trial_record(t: Any, tdir: Path) -> tuple[TrialRecord, np.ndarray | None]:
    """One Optuna trial as a record, with its validation probabilities (if saved)."""
    attrs = t.user_attrs
    result = _read_json(tdir / "result.json") or {}
    strategy = attrs.get("strategy") or result.get("strategy")
    metrics = result.get("metrics") or attrs.get("metrics") or {}
    timings = result.get("timings") or {}
    seconds = _finite(attrs.get("seconds")) or _finite(timings.get("total"))
    if seconds is None and t.duration is not None:
        seconds = t.duration.total_seconds()
    distributions = {}
    for name, dist in t.distributions.items():
        kind = type(dist).__name__.replace("Distribution", "").lower()
        distributions[name] = {"kind": kind, "log": bool(getattr(dist, "log", False))}
    history = [h for h in result.get("history") or [] if isinstance(h, dict)]
    record = TrialRecord(
        number=t.number,
        # Optuna's FAIL reads "failed", as `TrialResult.state` does.
        state="failed" if t.state.name == "FAIL" else t.state.name.lower(),
        value=_finite(t.value) if t.state.name == "COMPLETE" else None,
        params=dict(t.params),
        distributions=distributions,
        strategy=strategy,
        metrics=metrics,
        history=history,
        intermediate={int(k): v for k, v in t.intermediate_values.items()},
        seconds=seconds,
        latency_ms=_finite(attrs.get("latency_ms", result.get("latency_ms"))),
        params_total=attrs.get("params_total") or (result.get("params") or {}).get("total"),
        cached=attrs.get("cached", result.get("cached")),
        cache=attrs.get("cache") or result.get("cache") or {},
        failure_reason=attrs.get("failure_reason") or result.get("failure_reason"),
        failure_detail=attrs.get("failure_detail") or result.get("failure_detail") or "",
        retry_of=attrs.get("retry_of"),
        retry_mode=attrs.get("retry_mode") or ("checkpoint" if attrs.get(
            "resumed_from_checkpoint") else "scratch"),
        resumed_from_step=attrs.get("resumed_from_step", result.get("resumed_from_step")),
        baseline=attrs.get("baseline"),
        floor=attrs.get("floor"),
        prior=attrs.get("prior"),
        notes=list(result.get("notes") or []),
        has_result=bool(result),
        started=t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
    )
    probs = result.get("val_probabilities")
    array = None
    if probs:
        try:
            array = np.asarray(probs, dtype=np.float64)
            if array.ndim != 2:
                array = None
        except (TypeError, ValueError):
            array = None
    return record, array
