"""The diagnosis: findings in words, read from the trial records.

The rules follow the failure modes of the seed articles: over-fitting (train
accuracy far above validation), not learning (loss flat, accuracy near chance),
unstable training (loss rising after unfreezing, NaN failures: LR too high),
imbalance (accuracy far above balanced accuracy), and which BatchNorm modes and
unfreeze depths failed, aggregated by parameter value. Each rule is a function of
records (and the per-value aggregates), so it is testable on hand-made ones.
"""

from __future__ import annotations

import statistics
from typing import Any

from tlsearch.report.records import TrialRecord
from tlsearch.report.stats import _finite, _median
from tlsearch.report.wording import METRIC_LABELS, _unfreeze_text, _weights_text, display

__all__ = ["CHANCE_MARGIN", "IMBALANCE_GAP", "LOSS_RISE", "OVERFIT_GAP", "SMALL_VAL"]

#: Train accuracy this far above validation accuracy (at the kept epoch) is over-fitting.
OVERFIT_GAP = 0.15
#: Accuracy this far above balanced accuracy means the majority classes carry the score.
IMBALANCE_GAP = 0.05
#: A trial whose validation score stays within this of chance did not learn.
CHANCE_MARGIN = 0.05
#: A finishing training loss this many times its minimum means the loss rose.
LOSS_RISE = 1.5
#: Validation sets smaller than this give wide intervals; the report says so.
SMALL_VAL = 50


def _kept_epoch(trial: TrialRecord) -> dict[str, Any] | None:
    """The history record of the epoch whose weights the trial kept."""
    history = trial.history
    if not history:
        return None
    best_step = trial.metrics.get("best_step")
    for record in history:
        if record.get("step") == best_step:
            return record
    return history[-1]


def _finding(severity: str, title: str, text: str, *, evidence: list[str] | None = None,
             advice: str = "") -> dict[str, Any]:
    return {"severity": severity, "title": title, "text": text, "evidence": evidence or [],
            "advice": advice}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _diagnose(trials: list[TrialRecord], best: TrialRecord | None,
              aggregates: list[dict[str, Any]], n_classes: int, metric: str,
              doctor: dict[str, Any] | None, n_val: int, *, merged_groups: int = 0
              ) -> list[dict[str, Any]]:
    """Findings in words, most serious first, one pattern per helper below."""
    label = METRIC_LABELS.get(metric, metric)
    complete = [t for t in trials if t.state == "complete"]
    findings: list[dict[str, Any]] = []
    if best and best.strategy and best.strategy.get("weights") == "none":
        findings.append(_finding("warn", "No pretrained weights", _weights_text("none")[1]))
    findings += _overfitting(complete, best)
    if n_classes:
        findings += _not_learning(complete, 1.0 / n_classes)
    findings += _unstable(trials, complete)
    findings += _imbalance(best, doctor, label)
    findings += _choices(aggregates, label)
    findings += _data_findings(trials, best, doctor, n_val)
    if merged_groups:
        findings.append(_finding(
            "info", "Duplicates kept together",
            f"{merged_groups} group(s) of exact or near-duplicate images were each kept on one "
            "side of the split, so no validation or test image has a copy in training."))
    if not any(f["severity"] == "warn" for f in findings) and complete:
        findings.append(_finding("ok", "No problems detected",
                                 "None of the failure patterns above showed up in the trials."))
    order = {"warn": 0, "info": 1, "ok": 2}
    return sorted(findings, key=lambda f: order[f["severity"]])


def _overfitting(complete: list[TrialRecord],
                 best: TrialRecord | None) -> list[dict[str, Any]]:
    """A large train/validation accuracy gap at the epoch each trial kept."""
    gaps = []
    for t in complete:
        kept = _kept_epoch(t)
        if kept and _finite(kept.get("train_accuracy")) is not None and _finite(
                kept.get("val_accuracy")) is not None:
            gaps.append((t, kept["train_accuracy"] - kept["val_accuracy"], kept))
    if not gaps:
        return []
    overfit = [(t, g, k) for t, g, k in gaps if g >= OVERFIT_GAP]
    if not overfit:
        worst = max(g for _, g, _ in gaps)
        return [_finding("ok", "No over-fitting",
                         f"The largest train/validation accuracy gap at the kept epoch is "
                         f"{worst * 100:.0f} points (threshold {OVERFIT_GAP * 100:.0f}).")]
    best_overfits = best is not None and any(t.number == best.number for t, _, _ in overfit)
    return [_finding(
        "warn" if best_overfits else "info", "Over-fitting",
        f"{len(overfit)} of {len(gaps)} completed trials ended with training accuracy at "
        f"least {OVERFIT_GAP * 100:.0f} points above validation accuracy"
        + (", the recommended one among them." if best_overfits else "."),
        evidence=[f"trial #{t.number}: train {_pct(k['train_accuracy'])} vs val "
         f"{_pct(k['val_accuracy'])} (gap {g * 100:.0f} points) — {t.short}"
         for t, g, k in sorted(overfit, key=lambda x: -x[1])[:6]],
        advice="Regularise: stronger augmentation, more head dropout, fewer unfrozen blocks or "
        "fewer epochs; more training images help most.")]


def _not_learning(complete: list[TrialRecord], chance: float) -> list[dict[str, Any]]:
    """Scores near chance, or a training loss that barely moved."""
    flat = []
    for t in complete:
        score = t.metrics.get("balanced_accuracy", t.value)
        near_chance = score is not None and score <= chance + CHANCE_MARGIN
        losses = [h["train_loss"] for h in t.history
                  if _finite(h.get("train_loss")) is not None]
        barely = len(losses) >= 3 and losses[-1] > 0.95 * losses[0]
        if not (near_chance or barely):
            continue
        why = []
        if near_chance:
            why.append(f"balanced accuracy {_pct(score)} (chance {_pct(chance)})")
        if barely:
            why.append(f"training loss {losses[0]:.3g} → {losses[-1]:.3g}")
        lr = f"; head LR {t.strategy['head_lr']:.2g}" if t.strategy else ""
        flat.append(f"trial #{t.number}: {', '.join(why)}{lr} — {t.short}")
    if not flat:
        return []
    return [_finding(
        "warn" if len(flat) * 2 >= len(complete) else "info", "Not learning",
        f"{len(flat)} of {len(complete)} completed trials barely learned: their score "
        "stayed near chance or their training loss hardly fell.", evidence=flat[:8],
        advice="Preprocessing is part of every tlsearch model (the backbone's own), so a "
        "pixel-range mismatch is ruled out. Look at the learning rate (too low: flat "
        "loss; too high: noisy loss), at the weights (random init learns slowly) and "
        "at the labels (duplicates with conflicting labels, see data health).")]


def _loss_trouble(t: TrialRecord) -> str | None:
    """How a trial's training went unstable, in words, or None."""
    hist = t.history
    s = t.strategy
    lrs = f" (head LR {s['head_lr']:.2g}, backbone LR {s['backbone_lr']:.2g})" if s else ""
    finite = [(h.get("step"), h["train_loss"]) for h in hist
              if _finite(h.get("train_loss")) is not None]
    if len(finite) >= 2:
        peak_step, peak = max(finite, key=lambda sv: sv[1])
        low = min(v for _, v in finite)
        if peak > LOSS_RISE * finite[0][1]:
            return (f"trial #{t.number}: training loss spiked to {peak:.3g} at step "
                    f"{peak_step} (it started at {finite[0][1]:.3g}){lrs}")
        if finite[-1][1] > LOSS_RISE * low:
            return (f"trial #{t.number}: training loss rose from {low:.3g} to "
                    f"{finite[-1][1]:.3g}{lrs}")
    for prev, cur in zip(hist, hist[1:], strict=False):
        before, after = _finite(prev.get("val_accuracy")), _finite(cur.get("val_accuracy"))
        if (prev.get("phase_index") != cur.get("phase_index") and cur.get("unfrozen_blocks")
                and before is not None and after is not None and before - after >= 0.1):
            return (f"trial #{t.number}: validation accuracy fell {_pct(before)} → "
                    f"{_pct(after)} when {_unfreeze_text(cur['unfrozen_blocks'])} block(s) "
                    f"were unfrozen{lrs}")
    return None


def _unstable(trials: list[TrialRecord],
              complete: list[TrialRecord]) -> list[dict[str, Any]]:
    """NaN failures, loss spikes or rises, accuracy lost on unfreezing: LR too high."""
    nan = [t for t in trials if t.state == "failed" and t.failure_reason == "nan_loss"]
    rising = [msg for t in complete + nan if (msg := _loss_trouble(t))]
    if not (nan or rising):
        return []
    text = []
    if nan:
        text.append(f"{len(nan)} trial(s) failed because the loss became NaN/infinite")
    if rising:
        text.append(f"{len(rising)} trial(s) had a rising loss or lost accuracy on unfreezing")
    lrs_bad = [t.strategy["head_lr"] for t in nan if t.strategy]
    lrs_ok = [t.strategy["head_lr"] for t in complete if t.strategy]
    compare = ""
    if lrs_bad and lrs_ok:
        compare = (f" The NaN trials' median head LR is {_median(lrs_bad):.2g}, against "
                   f"{_median(lrs_ok):.2g} for the completed ones.")
    evidence = [f"trial #{t.number}: {t.failure_detail or 'nan_loss'} — {t.short}"
                for t in nan[:5]] + rising[:5]
    return [_finding(
        "warn", "Unstable training", "; ".join(text) + "." + compare, evidence=evidence,
        advice="A learning rate too high destroys pretrained features: lower the head LR, keep "
        "the backbone LR well below it (backbone_lr_ratio), unfreeze fewer blocks or "
        "gradually, and add warm-up epochs.")]


def _imbalance(best: TrialRecord | None, doctor: dict[str, Any] | None,
               label: str) -> list[dict[str, Any]]:
    """Accuracy far above balanced accuracy: the majority classes carry the score."""
    if not best or not best.metrics:
        return []
    acc = best.metrics.get("accuracy")
    bal = best.metrics.get("balanced_accuracy")
    ratio = (doctor or {}).get("imbalance_ratio")
    if acc is None or bal is None:
        return []
    if acc - bal >= IMBALANCE_GAP:
        evidence = [f"accuracy {_pct(acc)} vs balanced accuracy {_pct(bal)}"]
        per_class = best.metrics.get("per_class") or {}
        worst = min(per_class.items(), key=lambda kv: kv[1].get("recall", 1.0), default=None)
        if worst:
            evidence.append(f"lowest recall: class '{display(worst[0])}' at "
                            f"{_pct(worst[1].get('recall'))} "
                            f"({worst[1].get('support')} validation images)")
        if ratio:
            evidence.append(f"imbalance ratio {ratio:.1f}:1 (largest to smallest class)")
        return [_finding(
            "warn", "Imbalance symptoms",
            f"The recommended trial's accuracy is {100 * (acc - bal):.0f} points above its "
            "balanced accuracy: the large classes carry the score, small ones are missed.",
            evidence=evidence,
            advice=f"Judge by balanced accuracy or macro F1 (the objective here is {label}); "
            "search the imbalance remedies (class_weight, oversample, focal); collect "
            "more images of the weak classes.")]
    if ratio and ratio >= 1.5:
        return [_finding(
            "ok", "Imbalance handled",
            f"The classes are imbalanced ({ratio:.1f}:1), yet the recommended trial's "
            f"accuracy ({_pct(acc)}) and balanced accuracy ({_pct(bal)}) agree.")]
    return []


def _choices(aggregates: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """Which BN modes, unfreeze depths (and other choices) failed or trailed, and how."""
    findings = []
    for agg in aggregates:
        rows = agg["rows"]
        medians = [r["median"] for r in rows if r["median"] is not None]
        top = max(medians) if medians else None
        for r in rows:
            # A value fails "often" when most of its trials failed and the other values'
            # trials failed less: when everything fails, no single value is to blame.
            others = [o for o in rows if o is not r]
            others_rate = (sum(o["failed"] for o in others)
                           / max(1, sum(o["trials"] for o in others)))
            bad_failures = (r["failed"] * 2 >= r["trials"] > 0
                            and r["failed"] / r["trials"] > others_rate)
            behind = (top is not None and r["median"] is not None and top - r["median"] >= 0.1
                      and r["complete"] >= 1)
            if not (bad_failures or behind):
                continue
            words = []
            if r["failed"]:
                reasons = ", ".join(f"{k} ×{v}" for k, v in r["reasons"].items())
                words.append(f"{r['failed']} of {r['trials']} trials failed ({reasons})")
            if r["pruned"]:
                words.append(f"{r['pruned']} pruned")
            if behind:
                words.append(f"median {label} {_pct(r['median'])} vs {_pct(top)} for the best "
                             f"{agg['label']} value")
            name = f"{agg['label'][0].upper()}{agg['label'][1:]} '{r['value']}'"
            findings.append(_finding(
                "warn" if bad_failures else "info",
                f"{name} failed often" if bad_failures else f"{name} trailed",
                "; ".join(words) + "."))
    return findings


def _data_findings(trials: list[TrialRecord], best: TrialRecord | None,
                   doctor: dict[str, Any] | None, n_val: int) -> list[dict[str, Any]]:
    """Pruning, leakage, conflicting labels and a validation set too small to separate."""
    findings = []
    pruned = [t for t in trials if t.state == "pruned"]
    if pruned:
        steps = [max(t.intermediate) for t in pruned if t.intermediate]
        findings.append(_finding(
            "info", "Pruned trials",
            f"{len(pruned)} trial(s) were stopped early by the pruner"
            + (f" (median at step {statistics.median(steps):.0f})" if steps else "")
            + ": their recipe scored below the others at the same point."))
    if doctor and doctor.get("leaked_val"):
        findings.append(_finding(
            "warn", "Leakage",
            f"{doctor['leaked_val']} validation image(s) duplicate training images: the "
            "validation scores here are optimistic."))
    if doctor and doctor.get("conflicting_labels"):
        findings.append(_finding(
            "warn", "Conflicting labels",
            f"{doctor['conflicting_labels']} group(s) of duplicate images carry different "
            "labels; no model can be right on both."))
    if best is not None and n_val and n_val < SMALL_VAL:
        findings.append(_finding(
            "info", "Small validation set",
            f"Only {n_val} validation images: one image moves accuracy by "
            f"{100 / n_val:.1f} points, so close trials cannot be told apart (see the interval "
            "on the recommendation)."))
    return findings
