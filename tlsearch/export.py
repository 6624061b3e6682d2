"""Export a trial as a deployable model (prediction with it: `tlsearch.predict`).

An exported folder holds `model.keras` (raw RGB 0-255 in, probabilities out; the
backbone's preprocessing inside the graph), `labels.json`, `strategy.json` and a
model card. Pixels always come from `tlsearch.data.decode_image`, the function that
fed training and validation, so a single image is predicted as it was validated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch import kept
from tlsearch.atomic import atomic_write, replacing
from tlsearch.model_card import model_card

__all__ = [
    "ExportError",
    "UnsafeModelError",
    "export_trial",
]

MODEL_FILE = "model.keras"
#: Study user attribute: the last export's choices and its held-out test score.
EXPORT_ATTR = "export"


class ExportError(RuntimeError):
    """Export or prediction cannot proceed; the message is one line saying why."""


class UnsafeModelError(ExportError):
    """The model file contains code (a Lambda layer) or objects we do not know."""


def load_model_safely(path: Path) -> Any:
    """`keras.models.load_model(path, safe_mode=True)`, with one-line refusals."""
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except (ValueError, TypeError) as exc:
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "Lambda" in text or "lambda" in text or "safe_mode" in text:
            raise UnsafeModelError(f"refused {path}: it contains a Lambda layer (arbitrary code); "
                                   "tlsearch never loads code from model files") from None
        if "Could not locate" in text or "Unknown" in text or "not found" in text:
            raise UnsafeModelError(f"refused {path}: it uses an object Keras does not know "
                                   f"({first[:160]})") from None
        raise ExportError(f"cannot load {path}: {first[:200]}") from None
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None


def _pick_trial(handle: Any, trial: int | None) -> Any:
    from optuna.trial import TrialState

    from tlsearch.search import study_summary

    trials = handle.study.get_trials(deepcopy=False)
    if trial is None:  # the recommended trial: the one status and the report name
        best = study_summary(handle, top=1)["best"]
        if best is None:
            raise ExportError(f"study {handle.config.study!r} has no completed trial that "
                              "meets its constraints to export")
        trial = best["number"]
    matches = [t for t in trials if t.number == trial]
    if not matches or matches[0].state != TrialState.COMPLETE:
        raise ExportError(f"trial {trial} is not a completed trial of study "
                          f"{handle.config.study!r}")
    return matches[0]


def export_trial(study_dir: Path, out: Path, *, trial: int | None = None,
                 retrain: str = "none", tflite: bool = False,
                 calibrate: bool = True, tta: bool = True,
                 soup: str | None = None, ensemble: bool = False,
                 blend_floor: bool | None = None) -> dict[str, Any]:
    """Write the recommended (or chosen) trial's model and its contract to `out`.

    Args:
        retrain: `none` uses the weights the trial ended with (kept for the study's best
            trials); `train+val` retrains the same strategy on train and validation for
            the trial's recorded epochs and head C, selecting nothing.
        tflite: also write float32 and dynamic-range quantized TFLite models and check
            they agree with the Keras model.
        calibrate: temperature-scale the probabilities (`tlsearch.calibration`), with
            the temperature fitted on the trial's validation predictions.
        tta: adopt test-time augmentation (`tlsearch.tta`) if it beats a single view
            on validation (never after `train+val`, which trained on those images).
        soup: "greedy", a weight soup (`tlsearch.soup`) of the kept models with the
            trial's architecture, each added only if validation improves; "uniform",
            the mean of all of them; None, the trial's own weights.
        ensemble: greedy prediction ensemble (`tlsearch.ensemble`) of the kept models
            at the trial's image size (any backbone), each added only if validation
            improves.
        blend_floor: average the trial's probabilities with those of the kept linear
            probe on its backbone and size (`tlsearch.recommend.floor_partner`), each
            scaled by its own validation temperature, as the study recommends when it
            fine-tunes (`calibrate` then fits one more T for the average); None follows the study's
            `--blend-floor` setting (off with a soup, an ensemble or a retrain).
    Returns:
        A summary dict (paths, trial, metrics, TFLite agreement, and the exported
        model's own held-out test score, measured once after every choice is made).
    """
    from tlsearch.data import RESIZE_METHOD, Split
    from tlsearch.search import SPLIT_FILE, load_config, open_study
    from tlsearch.strategy import Strategy

    if retrain not in ("none", "train+val"):
        raise ExportError(f"--retrain must be none or train+val, got {retrain!r}")
    from tlsearch.soup import RECIPES

    if soup is not None and soup not in RECIPES:
        raise ExportError(f"--soup {soup!r}: expected one of {', '.join(RECIPES)}")
    if soup and ensemble:
        raise ExportError("--soup and --ensemble: choose one (a soup is one model, an "
                          "ensemble runs several)")
    if (soup or ensemble) and retrain != "none":
        raise ExportError(f"--{'soup' if soup else 'ensemble'} chooses its members on the "
                          "validation images, which --retrain train+val trains on: use one")
    config = load_config(study_dir)
    handle = open_study(config, create=False)
    chosen = _pick_trial(handle, trial)
    strategy = Strategy.from_dict(chosen.user_attrs["strategy"])
    split = Split.load(handle.dir / SPLIT_FILE)
    out.mkdir(parents=True, exist_ok=True)
    metrics = dict(chosen.user_attrs.get("metrics", {}))
    if retrain == "none":
        source = handle.trial_dir(chosen.number)
        if not kept.exists(source):
            raise ExportError(
                f"trial {chosen.number} kept no final weights (only the best few trials do); "
                "export it with --retrain train+val")
        model = kept.load(source)  # refuse anything unsafe before writing it out
        trained_on = "train split"
    else:
        model = _retrain(strategy, split, config, handle.trial_dir(chosen.number))
        trained_on = ("train + validation splits, for the trial's recorded epochs, selecting "
                      "nothing (validation metrics below are from the search)")
    from tlsearch.holdout import temperature_of

    val = _ValImages(strategy, split, config)
    souped = ensembled = scales = None
    member_probs: list[np.ndarray] = []
    partner = _blend_partner(handle, chosen.number, blend_floor, retrain, soup, ensemble)
    if partner is not None:
        from tlsearch.calibration import calibrate as scaled
        from tlsearch.calibration import scale_head
        from tlsearch.ensemble import Ensemble, build_ensemble_model
        from tlsearch.holdout import member_temperatures
        from tlsearch.metrics import compute_metrics

        other = kept.load(handle.trial_dir(partner))
        # The study's blend, exactly: each member scaled by its own validation T first.
        scales = member_temperatures(handle, (chosen.number, partner), split)
        member_probs = [scaled(val.probabilities(m), t)
                        for m, t in zip((model, other), scales, strict=True)]
        for member, t in zip((model, other), scales, strict=True):
            scale_head(member, t)
        metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"

        def val_score(probs: np.ndarray) -> float:
            return float(compute_metrics(split.labels("val"), probs, split.classes)[metric])

        ensembled = Ensemble(members=(chosen.number, partner),
                             val_score=val_score(np.mean(member_probs, axis=0)),
                             first_val_score=val_score(member_probs[0]))
        model = build_ensemble_model([model, other], [f"trial_{chosen.number:04d}",
                                                      f"trial_{partner:04d}"])
    if soup:
        souped = _soup(model, chosen, val, handle, recipe=soup)
    if ensemble:
        model, ensembled, member_probs = _ensemble(model, chosen, val, handle)
    from tlsearch.calibration import fit_temperature

    if not calibrate:
        temperature = None
    elif ensembled is not None and len(ensembled.members) > 1:  # T of the members' mean
        temperature = fit_temperature(np.mean(member_probs, axis=0), split.labels("val"),
                                      members=member_probs)
    elif souped is not None and len(souped.ingredients) > 1:  # another model: its own T
        temperature = fit_temperature(val.probabilities(model), split.labels("val"))
    else:
        temperature = temperature_of(handle.trial_dir(chosen.number), split)
    if temperature is not None:
        from tlsearch.calibration import scale_head

        scale_head(model, temperature)
    with replacing(out / MODEL_FILE) as tmp:
        model.save(tmp)
    labels = list(split.classes)
    atomic_write(out / "labels.json", json.dumps(labels, indent=1, ensure_ascii=True))
    atomic_write(out / "strategy.json", strategy.to_json())
    summary: dict[str, Any] = {
        "trial": chosen.number, "study": config.study, "metrics": metrics,
        "objective": chosen.value, "metric": handle.study.user_attrs.get("metric"),
        "fingerprint": split.fingerprint, "image_size": strategy.image_size,
        "resize_method": RESIZE_METHOD, "trained_on": trained_on, "weights": strategy.weights,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "path": str(out), "temperature": temperature,
        "soup": souped.to_dict() if souped is not None else None,
        "ensemble": ensembled.to_dict() if ensembled is not None else None,
        "blend_floor": partner is not None, "member_temperatures": scales,
        "tta": _choose_tta(model, val, handle) if tta and retrain == "none"
        else {"views": ["identity"], "val_plain": None, "val_tta": None, "candidates": []},
    }
    from tlsearch.holdout import HOLDOUT_ATTR, score_of
    from tlsearch.latency import measure_latency_ms

    summary["latency_ms"] = measure_latency_ms(model, strategy.image_size) * len(
        summary["tta"]["views"])
    scored = score_of(handle.study.user_attrs.get(HOLDOUT_ATTR), chosen.number)
    if scored is None:  # a search run through the API, not the CLI, leaves it unscored
        from tlsearch.holdout import score_holdout

        scored = score_of(score_holdout(handle), chosen.number)
    if scored:  # the recommended trial as the search scored it: what the export is beside
        summary["test"] = {k: scored[k] for k in ("value", "low", "high", "metrics")}
        summary["n_test"] = handle.study.user_attrs["holdout"]["n_test"]
        if scored.get("calibration"):
            summary["calibration"] = {k: scored["calibration"][k]
                                      for k in ("ece_before", "ece_after", "bins")}
    # Every choice above was made on validation; only now is the exported model itself
    # (soup or ensemble, temperature, test-time views) measured on the test split, once.
    summary["exported_test"] = (_score_exported(model, summary["tta"]["views"], split,
                                                config, handle, strategy.image_size)
                                if retrain == "none" else None)
    if summary["exported_test"] is not None:
        handle.study.set_user_attr(EXPORT_ATTR, {
            k: summary[k] for k in ("trial", "temperature", "soup", "ensemble", "latency_ms",
                                    "exported_test", "exported", "path", "blend_floor")}
            | {"views": summary["tta"]["views"]})
    if tflite:
        summary["tflite"] = _export_tflite(out, strategy, split, config)
    atomic_write(out / "export.json", json.dumps(summary, indent=2, default=str))
    atomic_write(out / "MODEL_CARD.md", model_card(summary, strategy, labels))
    return summary


def _blend_partner(handle: Any, trial: int, blend_floor: bool | None, retrain: str,
                   soup: bool, ensemble: bool) -> int | None:
    """The floor probe to average trial `trial` with, or None (see `export_trial`)."""
    from tlsearch.recommend import floor_partner

    if blend_floor is False or (blend_floor is None and not getattr(
            handle.config, "blend_floor", True)):
        return None
    if retrain != "none" or soup or ensemble:
        if blend_floor:
            raise ExportError("--blend-floor averages the trial with its probe as trained: "
                              "drop --soup, --ensemble and --retrain train+val")
        return None
    partner = floor_partner(handle, trial)
    if partner is None and blend_floor:
        raise ExportError(f"--blend-floor: trial {trial} is itself a linear probe, or no "
                          "linear probe on its backbone and size kept its model")
    return partner


class _ValImages:
    """The validation images at the strategy's size, decoded once for every choice the
    export makes on them (soup, temperature, test-time views)."""

    def __init__(self, strategy: Any, split: Any, config: Any) -> None:
        self.strategy, self.split, self.config = strategy, split, config
        self._x: np.ndarray | None = None

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            from tlsearch.data import decode_image

            root = Path(self.config.data_dir)
            self._x = np.stack([decode_image(root / p, self.strategy.image_size)
                                for p in self.split.paths("val")])
        return self._x

    def probabilities(self, model: Any) -> np.ndarray:
        return np.asarray(model.predict(self.x.astype(np.float32), verbose=0, batch_size=64),
                          dtype=np.float64)


def _soup(model: Any, chosen: Any, val: _ValImages, handle: Any, *,
          recipe: str = "greedy") -> Any:
    """Greedy or uniform soup into `model`: the chosen trial first, then the other kept
    models, best validation score first."""
    from optuna.trial import TrialState

    from tlsearch.metrics import compute_metrics
    from tlsearch.soup import greedy_soup, uniform_soup

    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    others = sorted((t for t in handle.study.get_trials(deepcopy=False,
                                                         states=(TrialState.COMPLETE,))
                     if t.number != chosen.number and t.value is not None
                     and kept.exists(handle.trial_dir(t.number))),
                    key=lambda t: -t.value)
    candidates = [(chosen.number, handle.trial_dir(chosen.number), chosen.value)]
    candidates += [(t.number, handle.trial_dir(t.number), t.value) for t in others]
    labels, classes = val.split.labels("val"), val.split.classes

    def score(m: Any) -> float:
        return float(compute_metrics(labels, val.probabilities(m), classes)[metric])

    adapted = {t.number for t in [chosen, *others]
               if t.user_attrs.get("strategy", {}).get("bn_mode") == "adapt"}
    refresh = None
    if adapted:  # some ingredient's BN statistics are its own: re-estimate the soup's
        from tlsearch.data import decode_image
        from tlsearch.soup import reestimate_batchnorm

        root, size = Path(val.config.data_dir), val.strategy.image_size
        train_x = np.stack([decode_image(root / p, size)
                            for p in val.split.paths("train")]).astype(np.float32)

        def refresh(m: Any, members: tuple[int, ...]) -> None:
            if adapted & set(members):  # frozen statistics are shared: averaging keeps them
                reestimate_batchnorm(m, train_x)

    cook = greedy_soup if recipe == "greedy" else uniform_soup
    return cook(model, candidates, score, kept.load, refresh=refresh)


def _ensemble(model: Any, chosen: Any, val: _ValImages, handle: Any
              ) -> tuple[Any, Any, list[np.ndarray]]:
    """Greedy prediction ensemble: the chosen trial first, then the other kept models
    at its image size, best validation score first. Returns (model, Ensemble, the
    members' validation probabilities)."""
    from optuna.trial import TrialState

    from tlsearch.ensemble import build_ensemble_model, greedy_ensemble
    from tlsearch.metrics import compute_metrics

    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    size = val.strategy.image_size
    others = sorted((t for t in handle.study.get_trials(deepcopy=False,
                                                         states=(TrialState.COMPLETE,))
                     if t.number != chosen.number and t.value is not None
                     and int(t.user_attrs.get("strategy", {}).get("image_size", -1)) == size
                     and kept.exists(handle.trial_dir(t.number))),
                    key=lambda t: -t.value)
    models = {chosen.number: model}
    probs = {chosen.number: val.probabilities(model)}
    for t in others:
        models[t.number] = kept.load(handle.trial_dir(t.number))
        probs[t.number] = val.probabilities(models[t.number])
    labels, classes = val.split.labels("val"), val.split.classes
    chosen_set = greedy_ensemble(
        [(n, probs[n]) for n in [chosen.number, *(t.number for t in others)]],
        lambda p: float(compute_metrics(labels, p, classes)[metric]))
    members = chosen_set.members
    built = build_ensemble_model([models[n] for n in members],
                                 [f"trial_{n:04d}" for n in members])
    return built, chosen_set, [probs[n] for n in members]


def _score_exported(model: Any, views: Sequence[str], split: Any, config: Any, handle: Any,
                    size: int) -> dict[str, Any] | None:
    """The exported model, as `predict` runs it, on the test split: score and ECE."""
    if not split.test:
        return None
    from tlsearch.calibration import expected_calibration_error
    from tlsearch.data import decode_image
    from tlsearch.metrics import compute_metrics
    from tlsearch.report.stats import bootstrap_interval
    from tlsearch.tta import tta_probabilities

    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    root = Path(config.data_dir)
    x = np.stack([decode_image(root / p, size) for p in split.paths("test")])
    labels = np.asarray(split.labels("test"))
    probs = tta_probabilities(model, x, views)
    value, low, high = bootstrap_interval(labels, probs, metric)
    metrics = compute_metrics(labels, probs, split.classes)
    return {"value": value, "low": low, "high": high, "metric": metric,
            "ece": expected_calibration_error(probs, labels), "n_test": len(labels),
            "metrics": {k: metrics[k] for k in ("balanced_accuracy", "accuracy", "macro_f1")}}


def _choose_tta(model: Any, val: _ValImages, handle: Any) -> dict[str, Any]:
    from tlsearch.metrics import compute_metrics
    from tlsearch.tta import choose_views

    metric = handle.study.user_attrs.get("metric") or "balanced_accuracy"
    classes = val.split.classes
    return choose_views(model, val.x, val.split.labels("val"), val.strategy.augmentation,
                        lambda y, probs: compute_metrics(y, probs, classes)[metric])


def _retrain(strategy: Any, split: Any, config: Any, trial_dir: Path) -> Any:
    """The strategy trained on train + validation for the trial's recorded epochs and
    head C (`train.Replay`): the validation images are training images here, so
    nothing may be chosen on them."""
    from tlsearch.train import Replay, run_trial
    from tlsearch.trial_data import TrialData

    try:
        replay = Replay.of(json.loads((trial_dir / "result.json").read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot retrain trial {trial_dir.name}: its recorded schedule "
                          f"is unreadable ({exc})") from None
    data = TrialData(
        root=Path(config.data_dir), classes=tuple(split.classes),
        train_paths=tuple(p for p, _ in split.train + split.val),
        train_labels=tuple(y for _, y in split.train + split.val),
        val_paths=tuple(p for p, _ in split.val), val_labels=tuple(y for _, y in split.val),
        fingerprint=split.fingerprint, cache_dir=config.cache_path)
    result = run_trial(strategy, data, replay=replay)
    if result.state != "complete":
        raise ExportError(f"retraining failed: {result.failure_reason} {result.failure_detail}")
    return result.model


def _export_tflite(out: Path, strategy: Any, split: Any, config: Any) -> dict[str, Any]:
    import tensorflow as tf

    from tlsearch.data import decode_image

    model = load_model_safely(out / MODEL_FILE)
    paths = split.paths("val")[:32]
    x = np.stack([decode_image(Path(config.data_dir) / p, strategy.image_size)
                  for p in paths]).astype(np.float32)
    reference = np.asarray(model(x, training=False))
    report: dict[str, Any] = {}
    for name, quantize in (("model.tflite", False), ("model_dynamic_range.tflite", True)):
        try:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if quantize:
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            blob = converter.convert()
        except Exception as exc:  # converter errors are many and deep; report one line
            report[name] = {"error": str(exc).strip().splitlines()[0][:200]}
            continue
        (out / name).write_bytes(blob)
        interpreter = tf.lite.Interpreter(model_content=blob)
        inp = interpreter.get_input_details()[0]
        outp = interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
        interpreter.allocate_tensors()
        probs = []
        for row in x:
            interpreter.set_tensor(inp["index"], row[None])
            interpreter.invoke()
            probs.append(interpreter.get_tensor(outp["index"])[0])
        probs = np.asarray(probs)
        report[name] = {"max_abs_diff": float(np.abs(probs - reference).max()),
                        "argmax_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
                        "images_checked": len(x)}
    return report


