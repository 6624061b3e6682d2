"""Report assembly: a study folder -> one plain dict the template renders.

The parts have their own modules: `records` (the study read into trial records),
`stats`, `diagnosis`, `sections`, `wording` (a recipe in words) and `script` (the
standalone Keras script); `build_context` puts them together.

Everything in the context is plain data (dicts, lists, numbers, strings): no Optuna,
Keras or Matplotlib object and no trial record (the context holds its `to_dict()`)
leaves it, so the template and the plots can be tested on hand-written contexts.
Dataset strings (class and file names) are passed through `display` (control and bidi
characters shown as escapes, never interpreted); HTML escaping is the template's job
(Jinja2 autoescape) and the plots' (`plots.py`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.report.diagnosis import _diagnose
from tlsearch.report.records import _load
from tlsearch.report.script import keras_snippet
from tlsearch.report.sections import (
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
    _importance,
    bootstrap_interval,
    pareto_front,
)
from tlsearch.report.wording import (
    METRIC_LABELS,
    _describe,
    _recipe_rows,
    _weights_text,
    display,
)

__all__ = ["build_context"]


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

    complete = sorted((t for t in trials if t.state == "complete" and t.value is not None),
                      key=lambda t: (-t.value, t.number))
    complete = [dataclasses.replace(t, rank=rank) for rank, t in enumerate(complete, start=1)]
    complete, constraints = _constraints(config, complete)
    # The ranked and checked records stand for their trials everywhere below.
    marked = {t.number: t for t in complete}
    trials = [marked.get(t.number, t) for t in trials]
    from tlsearch.recommend import recommend_trial

    selection = recommend_trial(handle)
    best = next((t for t in complete if selection and t.number == selection.chosen), None)

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

    blend = blend_of(holdout, best.number) if best is not None else None
    # The headline: the trial alone, or averaged with its floor probe (`--blend-floor`).
    headline = blend or (test_scores.get(str(best.number)) if best is not None else None)
    recommendation = None
    if best is not None:
        s = best.strategy or {}
        spec = spec_of(s)
        ci = None
        probs = loaded.probs.get(best.number)
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
        within = [t.number for t in complete[1:]
                  if ci is not None and t.value >= ci["low"]]
        weights_text, weights_warning = _weights_text(s.get("weights", "imagenet"), spec_of(s))
        recommendation = {
            "test": headline, "n_test": holdout.get("n_test"),
            "test_val": blend["val_value"] if blend else best.value,
            "blend": _blend_text(blend, test_scores, best.number, trials),
            "export": _export_of(handle.study.user_attrs.get("export"), best.number),
            "trial": best.number, "value": best.value, "ci": ci, "ci_note": ci_note,
            "n_val": n_val, "resamples": BOOTSTRAP_RESAMPLES,
            "within_interval": within,
            "selection": _selection_text(selection, complete, metric),
            "describe": _describe(s),
            "rows": _recipe_rows(s, spec, best.params_total) if s else [],
            "weights": s.get("weights"), "weights_text": weights_text,
            "weights_warning": weights_warning,
            "metrics": {METRIC_LABELS[k]: best.metrics.get(k) for k in METRIC_LABELS
                        if best.metrics.get(k) is not None and k != metric},
            "latency_ms": best.latency_ms, "seconds": best.seconds,
            "export_command": f"tlsearch export {config.study} --out exported/{config.study}",
            "snippet": keras_snippet(s, spec, data_dir=str(config.data_dir),
                                     val_fraction=config.val_fraction, trial=best.number,
                                     study=config.study) if s else "",
            "strategy_json": json.dumps(s, indent=2, sort_keys=True),
        }

    aggregates = _aggregates(trials)
    searched = {}
    for t in trials:
        for name, dist in t.distributions.items():
            searched.setdefault(name, dist)
    importance = _importance(handle.study, complete, searched)
    leaderboard = [_board_row(t) for t in complete[:max(top, 1)]]
    cost_points = [(t.number, t.value, t.seconds) for t in complete
                   if t.seconds is not None]
    latency_points = [(t.number, t.value, t.latency_ms) for t in complete
                      if t.latency_ms is not None]
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
        "trials": [t.to_dict() for t in trials],
        "complete": [t.to_dict() for t in complete],
        "best": best.to_dict() if best is not None else None,
        "recommendation": recommendation,
        "leaderboard": leaderboard,
        "top": top,
        "curves": [t.to_dict() for t in complete[:max(top, 1)] if t.history],
        "importance": importance,
        "searched": searched,
        "aggregates": aggregates,
        "doctor": doctor,
        "doctor_note": doctor_note,
        "search": _search_health(trials),
        "constraints": constraints,
        "baselines": _baselines(trials, best, metric, test_scores, headline=headline),
        "ranking": _ranking(handle.study.user_attrs.get("ranking") or [], complete,
                            handle.study.user_attrs.get("ranker") or "logme"),
        "cost": {"time": cost_points, "latency": latency_points,
                 "time_front": pareto_front(cost_points),
                 "latency_front": pareto_front(latency_points),
                 "summary": _cost_summary(complete)},
        "notes": notes,
    }
    context["findings"] = _diagnose(trials, best, aggregates, len(classes), metric, doctor, n_val,
                                    merged_groups=split.merged_groups if split else 0)
    context["pixels"] = _pixels(holdout.get("pixels"), best, headline, context["findings"])
    context["best_model"] = (_best_model(best, loaded.probs.get(best.number), split,
                                         Path(config.data_dir), classes, metric)
                             if best is not None else None)
    return context


