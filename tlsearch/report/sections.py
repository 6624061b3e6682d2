"""The report's sections, each from the trial records: the recommendation's companions
(export, blend and selection in words), baselines, ranking, leaderboard rows, limits,
the raw-pixel yardstick, the best model up close (gallery), data and search health."""

from __future__ import annotations

import base64
import dataclasses
import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.report.diagnosis import _finding
from tlsearch.report.records import TrialRecord
from tlsearch.report.stats import NOT_THE_RECIPE, _finite
from tlsearch.report.wording import METRIC_LABELS, _fine_tunes, _short, _unfreeze_text, display

__all__ = ["GALLERY_LIMIT"]

#: Misclassified validation images shown in the gallery (the most confident first).
GALLERY_LIMIT = 24
THUMBNAIL_SIZE = 64


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


def _best_model(best: TrialRecord, probs: np.ndarray | None, split: Any, data_dir: Path,
                classes: list[str], metric: str) -> dict[str, Any]:
    m = best.metrics
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


def _search_health(trials: list[TrialRecord]) -> dict[str, Any]:
    counts = Counter(t.state for t in trials)
    failures = defaultdict(list)
    for t in trials:
        if t.state == "failed":
            failures[t.failure_reason or "unknown"].append(t)
    by_number = {t.number: t for t in trials}
    recovered = []
    for t in trials:
        if t.retry_of is not None:
            original = by_number.get(t.retry_of)
            recovered.append({
                "number": t.number, "retry_of": t.retry_of, "state": t.state,
                "reason": (original.failure_reason if original else None) or "unknown",
                "resumed_from_step": t.resumed_from_step or 0,
                "retry_mode": t.retry_mode,
            })
    retries = {t.retry_of: t for t in trials if t.retry_of is not None}
    crashed = []
    for t in trials:
        reason = t.failure_reason or ""
        if t.state == "failed" and reason.startswith("crashed:"):
            retry = retries.get(t.number)
            crashed.append({"number": t.number, "signal": reason.split(":", 1)[1],
                            "retry": retry.number if retry else None,
                            "retry_state": retry.state if retry else None})
    hits = sum(int((t.cache or {}).get("hits", 0)) for t in trials)
    misses = sum(int((t.cache or {}).get("misses", 0)) for t in trials)
    return {
        "counts": dict(sorted(counts.items())), "total": len(trials),
        "failures": [{"reason": r, "count": len(ts), "trials": [t.number for t in ts],
                      "detail": display(ts[0].failure_detail)[:300]}
                     for r, ts in sorted(failures.items(), key=lambda kv: -len(kv[1]))],
        "recovered": recovered,
        "crashed": crashed,
        "cache_hits": hits, "cache_misses": misses,
        "cached_trials": sum(1 for t in trials if t.cached),
        "without_result": [t.number for t in trials if not t.has_result
                           and t.state in ("complete", "failed", "pruned")],
        "running": [t.number for t in trials if t.state == "running"],
    }


def _pixels(pixels: dict[str, Any] | None, best: TrialRecord | None,
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
        ours = best.value
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


def _constraints(config: Any, complete: list[TrialRecord]
                 ) -> tuple[list[TrialRecord], dict[str, Any]]:
    """The complete trials marked `eligible` under --max-latency-ms / --max-params, and
    those limits in words."""
    from tlsearch.search import meets_constraints

    complete = [dataclasses.replace(t, eligible=meets_constraints(config, t.latency_ms,
                                                                  t.params_total))
                for t in complete]
    limits = []
    if getattr(config, "max_latency_ms", None) is not None:
        limits.append(f"at most {config.max_latency_ms:g} ms per image on CPU")
    if getattr(config, "max_params", None) is not None:
        limits.append(f"at most {config.max_params:,} parameters")
    excluded = [t.number for t in complete if not t.eligible]
    return complete, {"limits": limits, "excluded": excluded,
                      "none_eligible": bool(complete) and len(excluded) == len(complete)}


def _baselines(trials: list[TrialRecord], best: TrialRecord | None,
               metric: str, test_scores: dict[str, Any], *,
               headline: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each standard recipe's trial, and how the recommendation (on test: `headline`)
    compares with it."""
    from tlsearch.baselines import BASELINES

    titles = {b.name: b.title for b in BASELINES}
    recipes = {b.name: b for b in BASELINES}
    rows = []
    for t in trials:
        name = t.baseline or ("floor" if t.floor is not None else None)
        if name == "floor":
            titles["floor"] = (f"linear probe on trial #{t.floor}'s backbone and size "
                               "(the floor check)")
        if not name or t.state in ("waiting",) or (
                t.failure_reason in NOT_THE_RECIPE and t.state == "failed"):
            continue
        recipe = recipes.get(name)
        row = {"name": display(name), "title": titles.get(name, display(name)),
               "source": recipe.source if recipe else "",
               "deviations": recipe.deviations if recipe else "",
               "number": t.number, "state": t.state, "value": t.value,
               "seconds": t.seconds, "gain_points": None, "time_ratio": None,
               "is_best": best is not None and best.number == t.number,
               "test": (test_scores.get(str(t.number)) or {}).get("value"),
               "test_gain_points": None}
        best_test = (headline or {}).get("value") if best else None
        if best_test is not None and row["test"] is not None:
            row["test_gain_points"] = 100.0 * (best_test - row["test"])
        if best is not None and t.state == "complete" and t.value is not None:
            row["gain_points"] = 100.0 * (best.value - t.value)
            if best.seconds and t.seconds:
                row["time_ratio"] = best.seconds / t.seconds
        rows.append(row)
    return rows


def _blend_text(blend: dict[str, Any] | None, test_scores: dict[str, Any], trial: int,
                trials: list[TrialRecord]) -> str | None:
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


def _selection_text(selection: Any, complete: list[TrialRecord], metric: str) -> str | None:
    """Why this trial and not the top of the leaderboard, in one sentence (None when
    the recommendation is the best validation score)."""
    if selection is None or selection.chosen == selection.best:
        return None
    label = METRIC_LABELS.get(metric, metric)
    best = next((t for t in complete if t.number == selection.best), None)
    top = f"trial #{selection.best}" + (f" ({_short(best.strategy)})" if best else "")
    return (f"Recommended over {top}, whose {label} on validation is "
            f"{100 * selection.margin:.1f} points higher: that lead is within one standard "
            f"error of the difference ({100 * (selection.standard_error or 0):.1f} points, "
            "paired bootstrap over the validation images), and this trial trains fewer "
            "parameters. Search with --select best to recommend the top trial instead.")


def _ranking(rows: list[dict[str, Any]], complete: list[TrialRecord],
             ranker: str = "probe") -> dict[str, Any]:
    """The ranking (by `ranker`, the one that ordered the study) next to what training
    found, with their rank correlation."""
    if not rows:
        return {"rows": [], "spearman": None, "note": None, "agreement": [], "ranker": ranker}
    best_by_key: dict[str, float] = {}
    for t in complete:
        s = t.strategy or {}
        key = f"{s.get('backbone')}@{s.get('image_size')}"
        best_by_key[key] = max(best_by_key.get(key, -1.0), t.value)
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


def _board_row(t: TrialRecord) -> dict[str, Any]:
    s = t.strategy or {}
    return {
        "rank": t.rank, "number": t.number, "value": t.value,
        "baseline": display(t.baseline) if t.baseline else None,
        "prior": f"{display(t.prior['source'])} #{t.prior['trial']}" if t.prior else None,
        "eligible": t.eligible,
        "accuracy": t.metrics.get("accuracy"),
        "balanced_accuracy": t.metrics.get("balanced_accuracy"),
        "macro_f1": t.metrics.get("macro_f1"),
        "backbone": f"{s.get('backbone')}@{s.get('image_size')}" if s else "?",
        "unfreeze": ("0" if not _fine_tunes(s) else _unfreeze_text(s["unfreeze_blocks"])
                     + (" (gradual)" if s.get("gradual") else "")) if s else "?",
        "bn_mode": s.get("bn_mode") if s and _fine_tunes(s) else "—",
        "head_lr": s.get("head_lr"),
        "backbone_lr": s.get("backbone_lr") if s and _fine_tunes(s) else None,
        "augmentation": s.get("augmentation"), "imbalance": s.get("imbalance"),
        "epochs": (s["head_epochs"] + (s["finetune_epochs"] if _fine_tunes(s) else 0))
        if s else None,
        "seconds": t.seconds, "latency_ms": t.latency_ms,
        "retry_of": t.retry_of,
    }
