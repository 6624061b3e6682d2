"""The held-out test split: the headline score, measured once, by nothing that selects.

Trials train on the train split and are selected (epochs, trials, constraints) on the
validation split; `TrialData` does not even carry the test paths. When a search ends,
the recommended trial and each baseline recipe predict the test images once, through
the same decoding and saved model as `tlsearch predict`, and the scores are stored in
the study. A later run scores only what is new (a changed recommendation after a
resume), so the test split is never consulted to choose anything.

The raw-pixel yardstick (`tlsearch.pixels`) is fitted on train and scored here too, once.

The recommended trial's probabilities are also calibrated (`tlsearch.calibration`):
the temperature is fitted on its recorded validation predictions, and the test split
measures the expected calibration error before and after.

When the recommendation fine-tunes and `SearchConfig.blend_floor` is on, the headline is
the mean of its probabilities and those of the linear probe on its own backbone and size
(`tlsearch.recommend.floor_partner`), each member first temperature-scaled by its own
validation temperature: a fixed rule, chosen before any test image is read. Fine-tuning
wins or loses against the probe on a few dozen validation images by less than their
noise; averaging the two keeps most of a real gain. Scaling each member first stops an
over-confident fine-tune from outvoting the probe on every image it is wrong about: over
16 benchmark runs the scaled blend held the probe's test score in 12, the plain mean in
11, and it was never worse (benchmarks/RESULTS-floor-policy.md). In weight space the
same idea is WiSE-FT (Wortsman et al., CVPR 2022, *Robust fine-tuning of zero-shot
models*); in output space it needs no shared architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlsearch import kept

__all__ = ["HOLDOUT_ATTR", "blend_of", "holdout_scores", "member_temperatures",
           "score_holdout", "score_of", "temperature_of"]

#: Bumped when the calibration measurement changes: older records are measured again.
CALIBRATION_VERSION = 2
#: Study user attribute holding the scores: {"n_test", "metric", "scores": {trial: {...}}}.
HOLDOUT_ATTR = "holdout"


def holdout_scores(handle: Any) -> dict[str, Any]:
    """What `score_holdout` stored (empty when the study has no test split)."""
    return dict(handle.study.user_attrs.get(HOLDOUT_ATTR) or {})


def score_of(record: dict[str, Any] | None, number: int) -> dict[str, Any] | None:
    """One trial's stored test score (value, low, high, metrics, baseline), or None."""
    return ((record or {}).get("scores") or {}).get(str(number))


def blend_of(record: dict[str, Any] | None, number: int) -> dict[str, Any] | None:
    """The stored floor blend of recommended trial `number` (members, test and validation
    scores, calibration), or None when its recommendation is the trial alone."""
    blend = (record or {}).get("blend")
    return blend if blend and blend["members"][0] == number else None


def _val_probs(trial_dir: Path) -> np.ndarray | None:
    import json

    try:
        return np.asarray(json.loads((trial_dir / "result.json").read_text())
                          ["val_probabilities"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def temperature_of(trial_dir: Path, split: Any) -> float | None:
    """The trial's temperature, fitted on its recorded validation predictions (None when
    it recorded none that match the split)."""
    from tlsearch.calibration import fit_temperature

    probs = _val_probs(trial_dir)
    labels = split.labels("val")
    if probs is None or probs.ndim != 2 or len(probs) != len(labels):
        return None
    return fit_temperature(probs, labels)


def member_temperatures(handle: Any, members: tuple[int, ...] | list[int],
                        split: Any) -> list[float]:
    """Each floor-blend member's own validation temperature (1.0 where it recorded no
    validation predictions): the blend averages the members' probabilities scaled by it."""
    found = [temperature_of(handle.trial_dir(n), split) for n in members]
    return [1.0 if t is None else t for t in found]


def _calibration(probs: np.ndarray, labels: np.ndarray, temperature: float, *,
                 members: list[np.ndarray] | None = None) -> dict[str, Any]:
    """ECE before and after temperature scaling; with `members` (an average's), each
    member is scaled by T and then averaged, as the exported ensemble does."""
    from tlsearch.calibration import calibrate, expected_calibration_error, reliability

    after = (calibrate(probs, temperature) if members is None
             else np.mean([calibrate(m, temperature) for m in members], axis=0))
    return {"version": CALIBRATION_VERSION, "temperature": temperature, "bins": 15,
            "ece_before": expected_calibration_error(probs, labels),
            "ece_after": expected_calibration_error(after, labels),
            "reliability_before": reliability(probs, labels).to_dict(),
            "reliability_after": reliability(after, labels).to_dict()}


def _predict(trial_dir: Path, paths: list[Path], size: int) -> np.ndarray:
    from tlsearch.data import decode_image

    model = kept.load(trial_dir)
    x = np.stack([decode_image(p, size) for p in paths]).astype(np.float32)
    return np.asarray(model.predict(x, verbose=0, batch_size=64), dtype=np.float64)


def _pixels(root: Path, split: Any, metric: str) -> dict[str, Any]:
    """The raw-pixel yardstick (`tlsearch.pixels`), or why it could not be measured."""
    from tlsearch.pixels import pixel_probe

    try:
        return dict(pixel_probe(root, split, metric), metric=metric)
    except Exception as exc:  # a yardstick is never a reason to lose the test scores
        return {"metric": metric, "error": f"{type(exc).__name__}: {exc}"[:300]}


def score_holdout(handle: Any) -> dict[str, Any] | None:
    """Score the recommended trial, the baselines and the floor check on the test split,
    each once.

    Returns the stored record, or None when the study's split has no test part.
    """
    from optuna.trial import TrialState

    from tlsearch.data import Split
    from tlsearch.metrics import compute_metrics
    from tlsearch.report.stats import bootstrap_interval
    from tlsearch.search import SPLIT_FILE, study_summary

    split = Split.load(handle.dir / SPLIT_FILE)
    if not split.test:
        return None
    metric = handle.study.user_attrs.get("metric") or handle.space.objective
    summary = study_summary(handle, top=1)
    best = summary["best"]
    complete = handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    wanted = {t.number: t.user_attrs.get("baseline") for t in complete
              if t.user_attrs.get("baseline") or t.user_attrs.get("floor") is not None}
    floors = {t.number: t.user_attrs["floor"] for t in complete
              if t.user_attrs.get("floor") is not None}
    if best is not None:
        from tlsearch.recommend import RULES, recommend_trial

        wanted.setdefault(best["number"], None)
        # What each selection rule would recommend, measured after the choice: the report
        # and the benchmarks can say what the rule changes; nothing selects on it.
        for rule in set(RULES) - {summary["selection"]["rule"]}:  # its own is `best`
            other = recommend_trial(handle, rule)
            if other is not None:
                wanted.setdefault(other.chosen, None)
    record = holdout_scores(handle)
    scores = dict(record.get("scores") or {})
    root = Path(handle.config.data_dir)
    paths = [root / p for p, _ in split.test]
    labels = np.asarray([y for _, y in split.test])
    trials = {t.number: t for t in handle.study.get_trials(deepcopy=False)}
    partner = None
    if best is not None and getattr(handle.config, "blend_floor", True):
        from tlsearch.recommend import floor_partner

        partner = floor_partner(handle, best["number"])
        if partner is not None:
            wanted.setdefault(partner, None)
    predicted: dict[int, np.ndarray] = {}
    for number, baseline in sorted(wanted.items()):
        tdir = handle.trial_dir(number)
        stamp = kept.stamp(tdir)
        if stamp is None:
            continue  # an old study from before baselines kept their models
        done = scores.get(str(number), {})
        calibrated = done.get("calibration", "missing")
        if done.get("model_mtime_ns") == stamp and (calibrated is None or (
                calibrated != "missing"
                and calibrated.get("version", 1) >= CALIBRATION_VERSION)):
            continue  # scored already: the test split is read once per model (a score
            # from before calibration was measured is read again, to measure it)
        size = int(trials[number].user_attrs["strategy"]["image_size"])
        probs = predicted[number] = _predict(tdir, paths, size)
        metrics = compute_metrics(labels, probs, split.classes)
        value, low, high = bootstrap_interval(labels, probs, metric)
        scores[str(number)] = {
            "value": value, "low": low, "high": high, "baseline": baseline,
            "floor_of": floors.get(number),
            "metrics": {k: metrics[k] for k in ("balanced_accuracy", "accuracy", "macro_f1")},
            "model_mtime_ns": stamp,
        }
        temperature = temperature_of(handle.trial_dir(number), split)
        scores[str(number)]["calibration"] = (None if temperature is None
                                              else _calibration(probs, labels, temperature))
    pixels = record.get("pixels")
    if not pixels or pixels.get("metric") != metric:
        pixels = _pixels(root, split, metric)
    blend = None
    if partner is not None:
        blend = _blend(handle, (best["number"], partner), record.get("blend"), predicted,
                       trials, paths, labels, split, metric)
    record = {"n_test": len(paths), "metric": metric, "scores": scores,
              "recommended": best["number"] if best else None, "pixels": pixels,
              "blend": blend}
    handle.study.set_user_attr(HOLDOUT_ATTR, record)
    return record


def _blend(handle: Any, members: tuple[int, int], previous: dict[str, Any] | None,
           predicted: dict[int, np.ndarray], trials: dict[int, Any], paths: list[Path],
           labels: np.ndarray, split: Any, metric: str) -> dict[str, Any] | None:
    """The recommended trial averaged with its floor probe (each scaled by its own
    validation temperature), scored on test once per pair of models; None when a
    member's model or validation predictions are missing."""
    from tlsearch.calibration import fit_temperature
    from tlsearch.metrics import compute_metrics, metric_value
    from tlsearch.report.stats import bootstrap_interval

    models = [handle.trial_dir(n) for n in members]
    stamps = [kept.stamp(m) for m in models]
    if None in stamps:
        return None
    if previous and previous.get("members") == list(members) \
            and previous.get("model_mtime_ns") == stamps \
            and "member_temperatures" in previous:  # a plain-mean blend is scored again
        return previous
    val = [_val_probs(handle.trial_dir(n)) for n in members]
    y_val = split.labels("val")
    if any(v is None or v.shape != (len(y_val), len(split.classes)) for v in val):
        return None
    from tlsearch.calibration import calibrate

    scales = member_temperatures(handle, members, split)
    val = [calibrate(v, t) for v, t in zip(val, scales, strict=True)]
    val_mean = np.mean(val, axis=0)
    test = [calibrate(predicted[n] if n in predicted else _predict(
        m, paths, int(trials[n].user_attrs["strategy"]["image_size"])), t)
        for n, m, t in zip(members, models, scales, strict=True)]
    mean = np.mean(test, axis=0)
    value, low, high = bootstrap_interval(labels, mean, metric)
    metrics = compute_metrics(labels, mean, split.classes)
    temperature = fit_temperature(val_mean, y_val, members=val)
    return {"members": list(members), "member_temperatures": scales, "value": value,
            "low": low, "high": high,
            "val_value": metric_value(metric, y_val, val_mean.argmax(1), len(split.classes)),
            "metrics": {k: metrics[k] for k in ("balanced_accuracy", "accuracy", "macro_f1")},
            "model_mtime_ns": stamps,
            "calibration": None if temperature is None
            else _calibration(mean, labels, temperature, members=test)}
