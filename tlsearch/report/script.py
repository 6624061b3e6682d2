"""The standalone Keras script of a recipe: plain `keras.applications` code that trains
the recommended strategy the way the trial engine does, shown in the report."""

from __future__ import annotations

from typing import Any

from tlsearch.head import C_GRID as HEAD_C_GRID
from tlsearch.head import DEFAULT_C as HEAD_DEFAULT_C
from tlsearch.head import MAX_ITER as HEAD_MAX_ITER
from tlsearch.head import TOL as HEAD_TOL

__all__ = ["keras_snippet"]


def _phase_plan(s: dict[str, Any], n_blocks: int) -> list[tuple[int, int]]:
    """(unfrozen blocks, epochs) per phase, exactly as the trial engine plans them."""
    from tlsearch.strategy import Strategy
    from tlsearch.train import _phases  # the engine's own plan, so the two never drift

    return [(p.blocks, p.epochs) for p in _phases(Strategy.from_dict(s), n_blocks)]


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
