"""The exported folder's MODEL_CARD.md: what was exported, how it scored on the held-out
test split, and the choices behind it (soup, ensemble, blend, calibration, TTA)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def _soup_line(soup: dict[str, Any] | None) -> str:
    if soup is None:
        return "- Weights: the trial's own (no soup asked for)"
    if soup.get("recipe") == "uniform" and len(soup["ingredients"]) == 1:
        return ("- Weights: the trial's own; no other kept model shares its architecture, so "
                "the uniform soup is the trial")
    if soup.get("recipe") == "uniform":
        return (f"- Weights: uniform soup (weight average, nothing selected) of trials "
                f"{', '.join(f'#{n}' for n in soup['ingredients'])}: {soup['val_score']:.4f} "
                f"on validation vs {soup['first_val_score']:.4f} for the trial alone")
    if len(soup["ingredients"]) == 1:
        return (f"- Weights: the trial's own; a greedy soup tried {len(soup['tried'])} other "
                "kept model(s) and none improved validation")
    return (f"- Weights: greedy soup (weight average) of trials "
            f"{', '.join(f'#{n}' for n in soup['ingredients'])}: {soup['val_score']:.4f} on "
            f"validation vs {soup['first_val_score']:.4f} for the trial alone")


def _ensemble_line(ensemble: dict[str, Any] | None, blend_floor: bool = False) -> str:
    if ensemble is not None and blend_floor:
        members = ensemble["members"]
        return (f"- Ensemble: trial #{members[0]} averaged with the linear probe on its own "
                f"backbone and size, trial #{members[1]} (the study's floor blend, each "
                "member's probabilities scaled by its own validation temperature first): "
                f"{ensemble['val_score']:.4f} on validation vs {ensemble['first_val_score']:.4f} "
                "for the trial alone; the probe's forward pass is added per image; "
                "`export --no-blend-floor` for the trial alone")
    if ensemble is None:
        return "- Ensemble: none asked for (one model)"
    if len(ensemble["members"]) == 1:
        return (f"- Ensemble: tried {len(ensemble['tried'])} other kept model(s) at this "
                "image size; none improved validation, so one model")
    return (f"- Ensemble: mean probabilities of trials "
            f"{', '.join(f'#{n}' for n in ensemble['members'])}: {ensemble['val_score']:.4f} "
            f"on validation vs {ensemble['first_val_score']:.4f} for the trial alone; "
            f"{len(ensemble['members'])}x the compute per image")


def _tta_line(tta: dict[str, Any]) -> str:
    if tta["val_tta"] is None:
        return "- Test-time augmentation: none (one view per image)"
    views = ", ".join(tta["candidates"])
    if tta["views"] == ["identity"]:
        return (f"- Test-time augmentation: not adopted ({views} scored {tta['val_tta']:.4f} on "
                f"validation vs {tta['val_plain']:.4f} for one view)")
    return (f"- Test-time augmentation: probabilities averaged over {views} "
            f"({tta['val_tta']:.4f} on validation vs {tta['val_plain']:.4f} for one view; "
            f"{len(tta['views'])}x the compute per image); `predict --no-tta` for one view")


def _calibration_line(summary: dict[str, Any]) -> str:
    t = summary.get("temperature")
    if t is None:
        return "- Probabilities: the softmax as trained (not calibrated)"
    return (f"- Probabilities: temperature-scaled, T = {t:.3f}, fitted on the validation "
            "predictions (the final layer's weights are divided by T; no class changes)")


def _test_lines(summary: dict[str, Any]) -> list[str]:
    """The exported model's own test score, beside the recommended trial's."""
    exported = summary.get("exported_test")
    if exported is None:
        return ["- Held-out test: none (the study has no test split, or the model was "
                "retrained on validation too)"]
    lines = [
        f"- Held-out test of this exported model ({exported['n_test']} images no selection "
        "saw; measured once, after every choice was made on validation): "
        + ", ".join(f"{k} {v:.4f}" for k, v in exported["metrics"].items())
        + f" (95% interval of {exported['metric']}: {exported['low']:.4f}-"
        f"{exported['high']:.4f}); expected calibration error {exported['ece']:.4f} (15 bins)"]
    trial, cal = summary.get("test"), summary.get("calibration")
    if trial:
        line = (f"- The recommended trial alone, as the search scored it on the same images: "
                f"{exported['metric']} {trial['value']:.4f} "
                f"({100 * (exported['value'] - trial['value']):+.1f} points for the export)")
        if cal:
            line += f"; its uncalibrated ECE {cal['ece_before']:.4f}"
        lines.append(line)
    return lines


def model_card(summary: dict[str, Any], strategy: Any, labels: Sequence[str]) -> str:
    metrics = summary["metrics"]
    lines = [
        f"# Model card: {summary['study']} trial {summary['trial']}",
        "",
        f"- Strategy: {strategy.describe()}",
        f"- Weights the backbone started from: {strategy.weights}",
        f"- Trained on: {summary['trained_on']}",
        "- Validation (selected on): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        *_test_lines(summary),
        _calibration_line(summary),
        _tta_line(summary["tta"]),
        _soup_line(summary.get("soup")),
        _ensemble_line(summary.get("ensemble"), summary.get("blend_floor", False)),
        f"- CPU latency, batch of one: {summary['latency_ms']:.1f} ms per image "
        "(every member and view included)",
        f"- Data fingerprint: {summary['fingerprint']}",
        f"- Exported: {summary['exported']}",
        f"- Classes ({len(labels)}): see labels.json (index -> name)",
        "",
        "## Input contract",
        f"- RGB images resized to {strategy.image_size}x{strategy.image_size} "
        f"({summary['resize_method']}, squashed, no crop; EXIF orientation applied; alpha "
        "composited on white), values 0-255 as float32, shape (N, "
        f"{strategy.image_size}, {strategy.image_size}, 3). The backbone's preprocessing is "
        "inside the model: do not normalise.",
        "- Output: class probabilities (softmax), in labels.json order.",
        "",
        "## Load with plain Keras",
        "```python",
        "import json, keras, numpy as np",
        'model = keras.models.load_model("model.keras", safe_mode=True)',
        'labels = json.load(open("labels.json"))',
        f"# x: float32 array (N, {strategy.image_size}, {strategy.image_size}, 3) in 0-255",
        "probs = model.predict(x)",
        "```",
        "Or `tlsearch predict <this folder> IMAGE...`, which decodes exactly as training did.",
    ]
    if "tflite" in summary:
        lines += ["", "## TFLite", "```", json.dumps(summary["tflite"], indent=2), "```"]
    return "\n".join(lines) + "\n"
