"""How the report words a recipe: labels, a strategy in one line, the recipe table.

Dataset strings go through `display` (control and bidi characters shown as escapes,
never interpreted); HTML escaping is the template's job (Jinja2 autoescape).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from tlsearch.recipes import BATCHNORM, IMBALANCE
from tlsearch.strategy import ALL_BLOCKS

__all__ = ["METRIC_LABELS", "display"]

#: Objective metrics as the report names them.
METRIC_LABELS = {
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
}
#: Each BatchNorm mode in one sentence, beside the recipe's value.


# Bidirectional controls make a name display as another one (U+202E reverses text).
_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def display(text: Any) -> str:
    """A dataset string made safe to show: undecodable bytes, control and bidi
    characters become visible escapes (``\\xff``, ``\\u202e``). HTML escaping is
    left to the template."""
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) == "Cc" or ord(ch) in _BIDI
        else ch
        for ch in text
    )


def _unfreeze_text(blocks: int) -> str:
    return "all" if blocks == ALL_BLOCKS else str(blocks)


def _value_text(key: str, value: Any) -> str:
    if key == "unfreeze_blocks":
        return _unfreeze_text(int(value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _short(strategy: dict[str, Any] | None) -> str:
    """One-line summary of a strategy for tables."""
    if not strategy:
        return "(no strategy recorded)"
    s = strategy
    tune = "head only" if not _fine_tunes(s) else (
        f"unfreeze {_unfreeze_text(s['unfreeze_blocks'])}"
        + (" gradually" if s.get("gradual") else ""))
    return (f"{s['backbone']}@{s['image_size']} · {tune} · BN {s.get('bn_mode')} · "
            f"aug {s.get('augmentation')} · {s.get('imbalance')}")


def _fine_tunes(s: dict[str, Any]) -> bool:
    return s.get("unfreeze_blocks", 0) != 0 and s.get("finetune_epochs", 0) > 0


def _weights_text(weights: str, spec: Any = None) -> tuple[str, str | None]:
    """(plain words, warning or None) for `strategy.weights` of a backbone `spec`."""
    if weights == "imagenet" and spec is not None and spec.imagenet_package:
        from tlsearch.efficientnet_lite import LITE_VARIANTS

        package = LITE_VARIANTS[spec.imagenet_package].distribution
        return f"ImageNet (from the installed {package} package, offline)", None
    if weights == "imagenet":
        return "ImageNet (Keras's own download and cache)", None
    if weights == "none":
        return ("none: random initialisation, no pretrained weights", (
            "These trials started from random weights, so nothing was transferred: the "
            "scores say how well each recipe trains from scratch on this data, not how "
            "a pretrained backbone would do. Re-run with --weights imagenet (or auto) "
            "before relying on the recommendation."))
    return f"weights file {weights}", None


def _recipe_rows(s: dict[str, Any], spec: Any, params_total: Any) -> list[dict[str, str]]:
    from tlsearch.recipes import AUGMENTATIONS

    rows = []
    size = s["image_size"]
    backbone = f"{spec.description or spec.name} ({s['backbone']})" if spec else s["backbone"]
    detail = f"{size}×{size} px input"
    if params_total:
        detail += f", {int(params_total) / 1e6:.2f}M parameters in the exported model"
    if spec is not None:
        detail += f", ~{spec.cost(size):.2g} GFLOPs"
    rows.append({"label": "Backbone", "value": backbone, "detail": detail})
    rows.append({"label": "Pretrained weights", "value": _weights_text(s["weights"], spec)[0],
                 "detail": ""})
    n_blocks = spec.n_blocks if spec else None
    if not _fine_tunes(s):
        unfreeze = "nothing: the backbone stays frozen, only the new head trains"
    elif s["unfreeze_blocks"] == ALL_BLOCKS:
        unfreeze = "the whole backbone (every block and the stem)"
    else:
        k = s["unfreeze_blocks"]
        unfreeze = f"the top {k} block{'s' if k != 1 else ''}" + (
            f" of {n_blocks}" if n_blocks else "")
    if _fine_tunes(s):
        unfreeze += (", one block more per phase (gradual)" if s.get("gradual")
                     else ", all at once") + ", after the head warm-up"
    rows.append({"label": "Unfreeze", "value": unfreeze, "detail": ""})
    lr = f"head {s['head_lr']:.2g}"
    if _fine_tunes(s):
        lr += f", backbone {s['backbone_lr']:.2g} ({s['backbone_lr'] / s['head_lr']:.2g}× head)"
    rows.append({"label": "Learning rates", "value": lr, "detail": (
        f"{s['optimizer']}" + (f" (weight decay {s['weight_decay']:.2g})"
                                if s["optimizer"] == "adamw" else "")
        + f", {s['schedule']} schedule"
        + (f", {s['warmup_epochs']} warm-up epochs" if s.get("warmup_epochs") else ""))})
    rows.append({"label": "BatchNorm", "value": s["bn_mode"],
                 "detail": BATCHNORM.get(s["bn_mode"], "")})
    rows.append({"label": "Augmentation", "value": s["augmentation"],
                 "detail": AUGMENTATIONS[s["augmentation"]].description
                 if s["augmentation"] in AUGMENTATIONS else ""})
    rows.append({"label": "Imbalance remedy", "value": s["imbalance"],
                 "detail": IMBALANCE.get(s["imbalance"], "")})
    epochs = f"{s['head_epochs']} head"
    if _fine_tunes(s):
        epochs += f" + {s['finetune_epochs']} fine-tuning"
    total = s["head_epochs"] + (s["finetune_epochs"] if _fine_tunes(s) else 0)
    epochs += f" = {total} epochs, batch {s['batch_size']}"
    if s.get("head_init") == "probe":
        epochs = "none: the solve at C = 1 is the model"
    elif s.get("early_stopping_patience"):
        epochs += f", early stopping after {s['early_stopping_patience']} epochs without gain"
    keep = "the weights of the best validation epoch are kept"
    if (s.get("epoch_soup") or 0) > 1:
        keep += (f", or the greedy soup of the last phase's last {s['epoch_soup']} epochs "
                 "where it scores higher on validation")
    rows.append({"label": "Epochs", "value": epochs, "detail": keep})
    head = "global average pooling"
    if s.get("head_dropout"):
        head += f" → dropout {s['head_dropout']:.2g}"
    if s.get("head_hidden_units"):
        head += f" → dense {s['head_hidden_units']} relu"
    head += " → softmax"
    extras = []
    if s.get("head_l2"):
        extras.append(f"L2 {s['head_l2']:.2g}")
    if s.get("label_smoothing"):
        extras.append(f"label smoothing {s['label_smoothing']:.2g}")
    rows.append({"label": "Head", "value": head, "detail": ", ".join(extras)})
    return rows


def _describe(s: dict[str, Any]) -> str:
    from tlsearch.strategy import Strategy, StrategyError

    try:
        return Strategy.from_dict(s).describe()
    except (StrategyError, TypeError):
        return _short(s)
