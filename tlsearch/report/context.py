"""Report assembly: a study folder -> one plain dict the template renders.

Everything here is plain data (dicts, lists, numbers, strings): no Optuna, Keras or
Matplotlib objects leave this module, so the template and the plots can be tested on
hand-written contexts. Dataset strings (class and file names) are passed through
`display` (control and bidi characters shown as escapes, never interpreted); HTML
escaping is the template's job (Jinja2 autoescape) and the plots' (`plots.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.metrics import metric_value
from tlsearch.report.diagnosis import _diagnose
from tlsearch.report.script import keras_snippet
from tlsearch.report.sections import (
    GALLERY_LIMIT,
    _baselines,
    _best_model,
    _blend_text,
    _board_row,
    _constraints,
    _doctor,
    _export_of,
    _pixels,
    _ranking,
    _search_health,
    _selection_text,
)
from tlsearch.report.stats import (
    BOOTSTRAP_RESAMPLES,
    _aggregates,
    _cost_summary,
    _finite,
    _importance,
    bootstrap_interval,
    pareto_front,
)
from tlsearch.report.wording import (
    METRIC_LABELS,
    _describe,
    _recipe_rows,
    _short,
    _weights_text,
    display,
)

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "GALLERY_LIMIT",
    "build_context",
    "bootstrap_interval",
    "display",
    "keras_snippet",
    "metric_value",
    "pareto_front",
]


# -- small helpers -----------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- loading ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Loaded:
    handle: Any
    trials: list[dict[str, Any]]
    probs: dict[int, np.ndarray]
    split: Any | None
    notes: list[str]


def _load(study_dir: Path) -> _Loaded:
    from tlsearch.space import SpaceError
    from tlsearch.study import SearchError, load_config, open_study

    study_dir = Path(study_dir)
    # The folder as given wins over the `out` recorded when the study was created,
    # so a study that was moved (or is addressed from another folder) still opens.
    config = dataclasses.replace(load_config(study_dir), out=str(study_dir.parent),
                                 study=study_dir.name)
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

    from tlsearch.study import SearchError, StudyHandle, make_storage

    try:
        study = optuna.load_study(study_name=config.study,
                                  storage=make_storage(config.storage, config.study_dir))
    except KeyError:
        raise SearchError(f"no study named {config.study!r} in {config.study_dir}") from None
    notes.append(f"The search space could not be reloaded ({str(exc).splitlines()[0][:300]}); "
                 "the report uses the trials alone.")
    return StudyHandle(config=config, study=study, space=None)


def _trial_record(t: Any, tdir: Path) -> tuple[dict[str, Any], np.ndarray | None]:
    """One trial as plain data, from the storage and its `result.json` (if any)."""
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
    record = {
        "number": t.number,
        # Optuna's FAIL reads "failed", as `TrialResult.state` does.
        "state": "failed" if t.state.name == "FAIL" else t.state.name.lower(),
        "value": _finite(t.value) if t.state.name == "COMPLETE" else None,
        "params": dict(t.params),
        "distributions": distributions,
        "strategy": strategy,
        "short": _short(strategy),
        "metrics": metrics,
        "history": history,
        "intermediate": {int(k): v for k, v in t.intermediate_values.items()},
        "seconds": seconds,
        "latency_ms": _finite(attrs.get("latency_ms", result.get("latency_ms"))),
        "params_total": attrs.get("params_total") or (result.get("params") or {}).get("total"),
        "cached": attrs.get("cached", result.get("cached")),
        "cache": attrs.get("cache") or result.get("cache") or {},
        "failure_reason": attrs.get("failure_reason") or result.get("failure_reason"),
        "failure_detail": attrs.get("failure_detail") or result.get("failure_detail") or "",
        "retry_of": attrs.get("retry_of"),
        # Where the retry started: the dead trial's checkpoint (same machine or a shared
        # study folder) or scratch (its checkpoint was on another machine).
        "retry_mode": attrs.get("retry_mode") or ("checkpoint" if attrs.get(
            "resumed_from_checkpoint") else "scratch"),
        "resumed_from_step": attrs.get("resumed_from_step", result.get("resumed_from_step")),
        "baseline": attrs.get("baseline"),
        "floor": attrs.get("floor"),  # the trial whose backbone this linear probe checks
        "prior": attrs.get("prior"),  # {source, trial, value}: enqueued from --prior
        "notes": list(result.get("notes") or []),
        "has_result": bool(result),
        "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
    }
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


# -- the whole context ----------------------------------------------------------------------


def build_context(study_dir: Path, *, top: int = 5, with_doctor: bool = True) -> dict[str, Any]:
    """Everything the report shows, as plain data.

    Args:
        study_dir: the study folder (`studies/<name>`).
        top: how many trials the leaderboard and the learning curves show.
        with_doctor: run the dataset doctor on the study's data folder.

    Raises:
        SearchError: the folder holds no study.
    """
    from tlsearch import __version__
    from tlsearch.backbones import UnknownBackboneError, get_spec

    loaded = _load(study_dir)
    handle, trials, notes = loaded.handle, loaded.trials, loaded.notes
    config = handle.config
    metric = handle.study.user_attrs.get("metric") or config.metric or "balanced_accuracy"
    split = loaded.split
    classes = list(split.classes) if split else []
    labels = split.labels("val") if split else None
    n_val = len(labels) if labels is not None else 0

    complete = sorted((t for t in trials if t["state"] == "complete" and t["value"] is not None),
                      key=lambda t: (-t["value"], t["number"]))
    for rank, t in enumerate(complete, start=1):
        t["rank"] = rank
    constraints = _constraints(config, complete)
    from tlsearch.recommend import recommend_trial

    selection = recommend_trial(handle)
    best = next((t for t in complete if selection and t["number"] == selection.chosen), None)

    def spec_of(s: dict[str, Any] | None) -> Any:
        try:
            return get_spec(s["backbone"]) if s else None
        except UnknownBackboneError:
            return None

    doctor, doctor_note = (None, None)
    if with_doctor:
        try:
            doctor, doctor_note = _doctor(Path(config.data_dir), config)
        except Exception as exc:  # the diagnosis is a section, never a reason to fail
            doctor_note = f"The data diagnosis failed: {display(exc)}"

    holdout = handle.study.user_attrs.get("holdout") or {}
    test_scores = holdout.get("scores") or {}
    from tlsearch.holdout import blend_of

    blend = blend_of(holdout, best["number"]) if best is not None else None
    # The headline: the trial alone, or averaged with its floor probe (`--blend-floor`).
    headline = blend or (test_scores.get(str(best["number"])) if best is not None else None)
    recommendation = None
    if best is not None:
        s = best["strategy"] or {}
        spec = spec_of(s)
        ci = None
        probs = loaded.probs.get(best["number"])
        partner = loaded.probs.get(blend["members"][1]) if blend else None
        if probs is not None and partner is not None and np.shape(partner) == np.shape(probs):
            probs = (np.asarray(probs) + np.asarray(partner)) / 2  # the blend's interval
        ci_note = None
        if probs is not None and labels is not None and len(probs) == len(labels) and len(labels):
            if metric in METRIC_LABELS:
                value, low, high = bootstrap_interval(labels, probs, metric)
                ci = {"low": low, "high": high, "value": value}
            else:
                ci_note = f"no interval for metric {metric}"
        else:
            ci_note = "no saved validation predictions, so no interval"
        within = [t["number"] for t in complete[1:]
                  if ci is not None and t["value"] >= ci["low"]]
        weights_text, weights_warning = _weights_text(s.get("weights", "imagenet"), spec_of(s))
        recommendation = {
            "test": headline, "n_test": holdout.get("n_test"),
            "test_val": blend["val_value"] if blend else best["value"],
            "blend": _blend_text(blend, test_scores, best["number"], trials),
            "export": _export_of(handle.study.user_attrs.get("export"), best["number"]),
            "trial": best["number"], "value": best["value"], "ci": ci, "ci_note": ci_note,
            "n_val": n_val, "resamples": BOOTSTRAP_RESAMPLES,
            "within_interval": within,
            "selection": _selection_text(selection, complete, metric),
            "describe": _describe(s),
            "rows": _recipe_rows(s, spec, best["params_total"]) if s else [],
            "weights": s.get("weights"), "weights_text": weights_text,
            "weights_warning": weights_warning,
            "metrics": {METRIC_LABELS[k]: best["metrics"].get(k) for k in METRIC_LABELS
                        if best["metrics"].get(k) is not None and k != metric},
            "latency_ms": best["latency_ms"], "seconds": best["seconds"],
            "export_command": f"tlsearch export {config.study} --out exported/{config.study}",
            "snippet": keras_snippet(s, spec, data_dir=str(config.data_dir),
                                     val_fraction=config.val_fraction, trial=best["number"],
                                     study=config.study) if s else "",
            "strategy_json": json.dumps(s, indent=2, sort_keys=True),
        }

    aggregates = _aggregates(trials)
    searched = {}
    for t in trials:
        for name, dist in t["distributions"].items():
            searched.setdefault(name, dist)
    importance = _importance(handle.study, complete, searched)
    leaderboard = [_board_row(t) for t in complete[:max(top, 1)]]
    cost_points = [(t["number"], t["value"], t["seconds"]) for t in complete
                   if t["seconds"] is not None]
    latency_points = [(t["number"], t["value"], t["latency_ms"]) for t in complete
                      if t["latency_ms"] is not None]
    context = {
        "study": config.study,
        "study_dir": str(study_dir),
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "version": __version__,
        "metric": metric,
        "metric_label": METRIC_LABELS.get(metric, metric),
        "config": {"data_dir": display(config.data_dir), "space": display(config.space),
                   "weights": display(config.weights), "pruner": config.pruner,
                   "trials": config.trials, "seed": config.seed,
                   "val_fraction": config.val_fraction, "storage": config.storage},
        "classes": [display(c) for c in classes],
        "n_classes": len(classes),
        "n_val": n_val,
        "n_train": len(split.train) if split else 0,
        "trials": trials,
        "complete": complete,
        "best": best,
        "recommendation": recommendation,
        "leaderboard": leaderboard,
        "top": top,
        "curves": [t for t in complete[:max(top, 1)] if t["history"]],
        "importance": importance,
        "searched": searched,
        "aggregates": aggregates,
        "doctor": doctor,
        "doctor_note": doctor_note,
        "search": _search_health(trials),
        "constraints": constraints,
        "baselines": _baselines(trials, best, metric, test_scores, headline),
        "ranking": _ranking(handle.study.user_attrs.get("ranking") or [], complete,
                            handle.study.user_attrs.get("ranker") or "logme"),
        "cost": {"time": cost_points, "latency": latency_points,
                 "time_front": pareto_front(cost_points),
                 "latency_front": pareto_front(latency_points),
                 "summary": _cost_summary(complete)},
        "notes": notes,
    }
    context["findings"] = _diagnose(trials, best, aggregates, len(classes), metric, doctor, n_val,
                                    split.merged_groups if split else 0)
    context["pixels"] = _pixels(holdout.get("pixels"), best, headline, context["findings"])
    context["best_model"] = (_best_model(best, loaded.probs.get(best["number"]), split,
                                         Path(config.data_dir), classes, metric)
                             if best is not None else None)
    return context


