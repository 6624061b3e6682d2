"""Report assembly: a study folder -> one plain dict the template renders.

Everything here is plain data (dicts, lists, numbers, strings): no Optuna, Keras or
Matplotlib objects leave this module, so the template and the plots can be tested on
hand-written contexts. Dataset strings (class and file names) are passed through
`display` (control and bidi characters shown as escapes, never interpreted); HTML
escaping is the template's job (Jinja2 autoescape) and the plots' (`plots.py`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.metrics import metric_value
from tlsearch.report.diagnosis import _diagnose, _finding
from tlsearch.report.script import keras_snippet
from tlsearch.report.stats import (
    BOOTSTRAP_RESAMPLES,
    NOT_THE_RECIPE,
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
    _fine_tunes,
    _recipe_rows,
    _short,
    _unfreeze_text,
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

#: Misclassified validation images shown in the gallery (the most confident first).
GALLERY_LIMIT = 24
THUMBNAIL_SIZE = 64


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


def _export_of(record: dict[str, Any] | None, trial: int) -> dict[str, Any] | None:
    """The last `tlsearch export` of the recommended trial, in words and figures."""
    if not record or record.get("trial") != trial or not record.get("exported_test"):
        return None
    parts = []
    soup, ensemble = record.get("soup"), record.get("ensemble")
    if soup and len(soup["ingredients"]) > 1:
        parts.append("weight soup of trials " + ", ".join(f"#{n}" for n in soup["ingredients"]))
    if ensemble and record.get("blend_floor"):
        parts.append(f"trial #{trial} averaged with its floor probe #{ensemble['members'][1]}")
    elif ensemble and len(ensemble["members"]) > 1:
        parts.append("ensemble of trials " + ", ".join(f"#{n}" for n in ensemble["members"]))
    if not parts:
        parts.append(f"trial #{trial} alone")
    views = record.get("views") or ["identity"]
    if len(views) > 1:
        parts.append("test-time views " + " + ".join(views))
    if record.get("temperature") is not None:
        parts.append(f"temperature {record['temperature']:.2f}")
    return {"what": ", ".join(parts), "test": record["exported_test"],
            "latency_ms": record.get("latency_ms"), "exported": record.get("exported"),
            "path": record.get("path")}


# -- the best model up close ------------------------------------------------------------------


def _thumbnail(path: Path) -> str | None:
    from PIL import Image

    from tlsearch.data import DecodeError, decode_image

    try:
        pixels = decode_image(path, THUMBNAIL_SIZE)
    except (DecodeError, OSError):
        return None
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _best_model(best: dict[str, Any], probs: np.ndarray | None, split: Any, data_dir: Path,
                classes: list[str], metric: str) -> dict[str, Any]:
    m = best["metrics"]
    per_class = [
        {"name": display(name), "precision": v.get("precision"), "recall": v.get("recall"),
         "f1": v.get("f1"), "support": v.get("support")}
        for name, v in (m.get("per_class") or {}).items()
    ]
    matrix = m.get("confusion_matrix")
    names = [display(c) for c in classes]
    pairs = []
    if matrix and len(matrix) == len(names):
        cm = np.asarray(matrix)
        support = cm.sum(axis=1)
        for i in range(len(cm)):
            for j in range(len(cm)):
                if i != j and cm[i, j]:
                    pairs.append({"true": names[i], "pred": names[j], "count": int(cm[i, j]),
                                  "share": float(cm[i, j] / support[i]) if support[i] else None})
        pairs.sort(key=lambda p: (-p["count"], -(p["share"] or 0)))
    out: dict[str, Any] = {"per_class": per_class, "classes": names,
                           "confusion": matrix if matrix and len(matrix) == len(names) else None,
                           "pairs": pairs[:8], "gallery": [], "gallery_note": None,
                           "misclassified": None, "gallery_more": 0}
    if probs is None or split is None:
        out["gallery_note"] = "No validation predictions were saved with this trial."
        return out
    paths, labels = split.paths("val"), split.labels("val")
    if len(paths) != len(probs) or probs.shape[1] != len(classes):
        out["gallery_note"] = ("The saved validation predictions do not match the split "
                               f"({len(probs)} rows, {len(paths)} validation images).")
        return out
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    out["misclassified"] = int(len(wrong))
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    missing = 0
    for i in order[:GALLERY_LIMIT]:
        thumb = _thumbnail(data_dir / paths[i])
        missing += thumb is None
        out["gallery"].append({
            "path": display(paths[i]), "true": names[labels[i]], "pred": names[pred[i]],
            "confidence": float(probs[i, pred[i]]),
            "true_prob": float(probs[i, labels[i]]), "png": thumb,
        })
    if not len(wrong):
        out["gallery_note"] = "Every validation image was classified correctly."
    elif missing:
        out["gallery_note"] = (f"{missing} image(s) could not be read from {display(data_dir)} "
                               "(moved or deleted since the search).")
    if len(wrong) > GALLERY_LIMIT:
        out["gallery_more"] = int(len(wrong) - GALLERY_LIMIT)
    return out


# -- health --------------------------------------------------------------------------------


def _doctor(data_dir: Path, config: Any) -> tuple[dict[str, Any] | None, str | None]:
    from tlsearch.doctor import diagnose

    if not data_dir.is_dir():
        return None, f"The data folder {display(data_dir)} is not available; no data diagnosis."
    report = diagnose(data_dir, val_fraction=config.val_fraction,
                      test_fraction=config.test_fraction, seed=config.seed)
    d = report.to_dict()
    dups = report.duplicates
    return {
        "usable": report.usable, "problem": display(report.problem) if report.problem else None,
        "layout": report.layout, "accepted": report.accepted,
        "classes": [{"label": display(c.label), "train": c.train, "val": c.val, "test": c.test,
                     "total": c.total} for c in report.classes],
        "max_class": max((c.total for c in report.classes), default=0),
        "imbalance_ratio": report.imbalance_ratio,
        "small_classes": [display(c) for c in report.small_classes],
        "empty_classes": [display(c) for c in report.empty_classes],
        "skipped": [{"reason": g.reason, "explanation": g.explanation, "count": len(g.files),
                     "examples": [display(f.path) for f in g.files[:3]]} for g in report.skipped],
        "skipped_count": report.skipped_count,
        "ignored": len(report.ignored),
        "exact_duplicates": sum(1 for g in dups if g.kind == "exact"),
        "near_duplicates": sum(1 for g in dups if g.kind == "near"),
        "leaked_val": report.leaked_val, "leaked_test": report.leaked_test,
        "conflicting_labels": report.conflicting_labels,
        "recommendations": [display(r) for r in report.recommendations],
        "modes": d.get("modes", []), "notes": d.get("notes", []),
    }, None


def _search_health(trials: list[dict[str, Any]]) -> dict[str, Any]:
    counts = Counter(t["state"] for t in trials)
    failures = defaultdict(list)
    for t in trials:
        if t["state"] == "failed":
            failures[t["failure_reason"] or "unknown"].append(t)
    by_number = {t["number"]: t for t in trials}
    recovered = []
    for t in trials:
        if t["retry_of"] is not None:
            original = by_number.get(t["retry_of"])
            recovered.append({
                "number": t["number"], "retry_of": t["retry_of"], "state": t["state"],
                "reason": (original or {}).get("failure_reason") or "unknown",
                "resumed_from_step": t["resumed_from_step"] or 0,
                "retry_mode": t["retry_mode"],
            })
    retries = {t["retry_of"]: t for t in trials if t["retry_of"] is not None}
    crashed = []
    for t in trials:
        reason = t["failure_reason"] or ""
        if t["state"] == "failed" and reason.startswith("crashed:"):
            retry = retries.get(t["number"])
            crashed.append({"number": t["number"], "signal": reason.split(":", 1)[1],
                            "retry": retry["number"] if retry else None,
                            "retry_state": retry["state"] if retry else None})
    hits = sum(int((t["cache"] or {}).get("hits", 0)) for t in trials)
    misses = sum(int((t["cache"] or {}).get("misses", 0)) for t in trials)
    return {
        "counts": dict(sorted(counts.items())), "total": len(trials),
        "failures": [{"reason": r, "count": len(ts), "trials": [t["number"] for t in ts],
                      "detail": display(ts[0]["failure_detail"])[:300]}
                     for r, ts in sorted(failures.items(), key=lambda kv: -len(kv[1]))],
        "recovered": recovered,
        "crashed": crashed,
        "cache_hits": hits, "cache_misses": misses,
        "cached_trials": sum(1 for t in trials if t["cached"]),
        "without_result": [t["number"] for t in trials if not t["has_result"]
                           and t["state"] in ("complete", "failed", "pruned")],
        "running": [t["number"] for t in trials if t["state"] == "running"],
    }


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


def _pixels(pixels: dict[str, Any] | None, best: dict[str, Any] | None,
            headline: dict[str, Any] | None,
            findings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The raw-pixel yardstick beside the recommendation (`headline`: its test score);
    a warning when it does as well (on test where both were scored, else validation)."""
    if not pixels or pixels.get("val") is None:
        return None
    ours = (headline or {}).get("value") if best else None
    where = "test" if ours is not None and pixels.get("test") is not None else "validation"
    ref = pixels["test"] if where == "test" else pixels["val"]
    if best is not None and ours is None:
        ours = best["value"]
    gain = None if ours is None else 100.0 * (ours - ref)
    if gain is not None and gain <= 0:
        findings[:] = [f for f in findings if f["title"] != "No problems detected"]
        findings.insert(0, _finding(
            "warn", "Raw pixels do as well",
            f"A logistic regression on the raw {pixels['size']} px pixels scores {ref:.3f} on "
            f"{where}, {abs(gain):.1f} points {'above' if gain < 0 else 'level with'} the "
            "recommendation: the pretrained features do not see what separates these "
            "classes, and the transfer recipe is not earning its cost.",
            advice="Try larger images, another backbone family, or a model trained from "
                   "scratch."))
    return dict(pixels, where=where, reference=ref, gain_points=gain)


def _constraints(config: Any, complete: list[dict[str, Any]]) -> dict[str, Any]:
    """Mark each complete trial `eligible` under --max-latency-ms / --max-params."""
    from tlsearch.study import meets_constraints

    for t in complete:
        t["eligible"] = meets_constraints(config, t["latency_ms"], t["params_total"])
    limits = []
    if getattr(config, "max_latency_ms", None) is not None:
        limits.append(f"at most {config.max_latency_ms:g} ms per image on CPU")
    if getattr(config, "max_params", None) is not None:
        limits.append(f"at most {config.max_params:,} parameters")
    excluded = [t["number"] for t in complete if not t["eligible"]]
    return {"limits": limits, "excluded": excluded,
            "none_eligible": bool(complete) and len(excluded) == len(complete)}


def _baselines(trials: list[dict[str, Any]], best: dict[str, Any] | None,
               metric: str, test_scores: dict[str, Any],
               headline: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each standard recipe's trial, and how the recommendation (on test: `headline`)
    compares with it."""
    from tlsearch.baselines import BASELINES

    titles = {b.name: b.title for b in BASELINES}
    recipes = {b.name: b for b in BASELINES}
    rows = []
    for t in trials:
        name = t["baseline"] or ("floor" if t.get("floor") is not None else None)
        if name == "floor":
            titles["floor"] = (f"linear probe on trial #{t['floor']}'s backbone and size "
                               "(the floor check)")
        if not name or t["state"] in ("waiting",) or (
                t["failure_reason"] in NOT_THE_RECIPE and t["state"] == "failed"):
            continue
        recipe = recipes.get(name)
        row = {"name": display(name), "title": titles.get(name, display(name)),
               "source": recipe.source if recipe else "",
               "deviations": recipe.deviations if recipe else "",
               "number": t["number"], "state": t["state"], "value": t["value"],
               "seconds": t["seconds"], "gain_points": None, "time_ratio": None,
               "is_best": best is not None and best["number"] == t["number"],
               "test": (test_scores.get(str(t["number"])) or {}).get("value"),
               "test_gain_points": None}
        best_test = (headline or {}).get("value") if best else None
        if best_test is not None and row["test"] is not None:
            row["test_gain_points"] = 100.0 * (best_test - row["test"])
        if best is not None and t["state"] == "complete" and t["value"] is not None:
            row["gain_points"] = 100.0 * (best["value"] - t["value"])
            if best["seconds"] and t["seconds"]:
                row["time_ratio"] = best["seconds"] / t["seconds"]
        rows.append(row)
    return rows


def _blend_text(blend: dict[str, Any] | None, test_scores: dict[str, Any], trial: int,
                trials: list[dict[str, Any]]) -> str | None:
    """What the floor blend is and what it changed on test, in one sentence."""
    if not blend:
        return None
    partner = blend["members"][1]
    alone = (test_scores.get(str(trial)) or {}).get("value")
    floor = (test_scores.get(str(partner)) or {}).get("value")
    figures = "; ".join(f"{what} {value:.3f}" for what, value in (
        (f"trial #{trial} alone", alone), (f"the probe #{partner} alone", floor))
        if value is not None)
    return (f"The recommendation is trial #{trial} averaged with the linear probe on its own "
            f"backbone and size (trial #{partner}): the mean of the two models' probabilities, "
            "each first temperature-scaled on validation so that an over-confident "
            "fine-tune cannot outvote the probe. "
            "Whether fine-tuning beats that probe is decided on a few dozen validation images, "
            "by less than their noise; the average keeps most of a real gain and does not "
            f"sink below the probe when the lead was luck. On test: {figures}. "
            "Search with --no-blend-floor to recommend the trial alone; it costs the "
            "probe's forward pass at prediction time.")


def _selection_text(selection: Any, complete: list[dict[str, Any]], metric: str) -> str | None:
    """Why this trial and not the top of the leaderboard, in one sentence (None when
    the recommendation is the best validation score)."""
    if selection is None or selection.chosen == selection.best:
        return None
    label = METRIC_LABELS.get(metric, metric)
    best = next((t for t in complete if t["number"] == selection.best), None)
    top = f"trial #{selection.best}" + (f" ({_short(best['strategy'])})" if best else "")
    return (f"Recommended over {top}, whose {label} on validation is "
            f"{100 * selection.margin:.1f} points higher: that lead is within one standard "
            f"error of the difference ({100 * (selection.standard_error or 0):.1f} points, "
            "paired bootstrap over the validation images), and this trial trains fewer "
            "parameters. Search with --select best to recommend the top trial instead.")


def _ranking(rows: list[dict[str, Any]], complete: list[dict[str, Any]],
             ranker: str = "probe") -> dict[str, Any]:
    """The ranking (by `ranker`, the one that ordered the study) next to what training
    found, with their rank correlation."""
    if not rows:
        return {"rows": [], "spearman": None, "note": None, "agreement": [], "ranker": ranker}
    best_by_key: dict[str, float] = {}
    for t in complete:
        s = t["strategy"] or {}
        key = f"{s.get('backbone')}@{s.get('image_size')}"
        best_by_key[key] = max(best_by_key.get(key, -1.0), t["value"])
    table = [{"key": display(r["key"]), "logme": r["logme"],
              "probe": r.get("probe_balanced_accuracy"), "best": best_by_key.get(r["key"]),
              "knn": r.get("knn"), "hscore": r.get("hscore"), "sfda": _finite(r.get("sfda")),
              "size": r.get("size"),
              "kept": True} for r in rows]
    both = [(r.get(ranker), r["best"]) for r in table
            if r["best"] is not None and _finite(r.get(ranker)) is not None]
    spearman, note = None, None
    if len(both) >= 3:
        from scipy.stats import spearmanr

        value = spearmanr([a for a, _ in both], [b for _, b in both]).statistic
        spearman = None if value != value else float(value)  # NaN when a side is constant
    else:
        note = (f"{len(both)} ranked backbone(s) have a completed trial: too few for a rank "
                "correlation (needs 3).")
    from tlsearch.rank import RANKERS, ranker_agreement

    agreement = [{"name": name, "what": RANKERS[name], **values}
                 for name, values in ranker_agreement(rows, best_by_key).items()]
    return {"rows": table, "spearman": spearman, "note": note, "agreement": agreement,
            "ranker": ranker}


def _board_row(t: dict[str, Any]) -> dict[str, Any]:
    s = t["strategy"] or {}
    return {
        "rank": t.get("rank"), "number": t["number"], "value": t["value"],
        "baseline": display(t["baseline"]) if t.get("baseline") else None,
        "prior": (f"{display(t['prior']['source'])} #{t['prior']['trial']}"
                  if t.get("prior") else None),
        "eligible": t.get("eligible", True),
        "accuracy": t["metrics"].get("accuracy"),
        "balanced_accuracy": t["metrics"].get("balanced_accuracy"),
        "macro_f1": t["metrics"].get("macro_f1"),
        "backbone": f"{s.get('backbone')}@{s.get('image_size')}" if s else "?",
        "unfreeze": ("0" if not _fine_tunes(s) else _unfreeze_text(s["unfreeze_blocks"])
                     + (" (gradual)" if s.get("gradual") else "")) if s else "?",
        "bn_mode": s.get("bn_mode") if s and _fine_tunes(s) else "—",
        "head_lr": s.get("head_lr"),
        "backbone_lr": s.get("backbone_lr") if s and _fine_tunes(s) else None,
        "augmentation": s.get("augmentation"), "imbalance": s.get("imbalance"),
        "epochs": (s["head_epochs"] + (s["finetune_epochs"] if _fine_tunes(s) else 0))
        if s else None,
        "seconds": t["seconds"], "latency_ms": t["latency_ms"],
        "retry_of": t["retry_of"],
    }


