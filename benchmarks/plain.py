"""The plain Keras transfer recipe that the peers train: the keras-io guide, by hand.

A frozen base called with `training=False`, a pooled dense head, `model.fit` over the
decoded images every epoch; for fine-tuning, the top blocks are unfrozen, the model is
recompiled at the backbone learning rate and fitted again. Nothing is cached: every
epoch runs the whole network, as the guide (and every tuner example built on it) does.
The dimensions are read from a tlsearch `Strategy`, so a peer searches exactly what
tlsearch searches; only the engine and the search method differ.
"""

from __future__ import annotations

import time
from typing import Any

import keras
import numpy as np

__all__ = ["EvalCallback", "PlainModel", "build_plain", "fit_plain", "one_hot"]


class PlainModel:
    """A built plain model, its base and where fine-tuning cuts the base."""

    def __init__(self, model: Any, base: Any, strategy: Any) -> None:
        from tlsearch.backbones import find_blocks, get_spec

        self.model, self.base, self.strategy = model, base, strategy
        cut = find_blocks(base, get_spec(strategy.backbone).block_regex).cut_for(
            strategy.unfreeze_blocks) if strategy.fine_tunes else "<output>"
        self.cut = cut

    def unfreeze(self) -> None:
        """The guide's step 2: the layers above the cut train (BatchNorm only in `affine`)."""
        self.base.trainable = True
        past_cut = self.cut is None  # None: the whole base trains
        for layer in self.base.layers:
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = past_cut and (not is_bn or self.strategy.bn_mode != "frozen")
            past_cut = past_cut or layer.name == self.cut


def build_plain(strategy: Any, num_classes: int, weights: str | None) -> PlainModel:
    """The guide's model for a strategy: augmentation, preprocessing, frozen base, head."""
    from tlsearch.backbones import build_backbone, get_spec
    from tlsearch.model import augmentation_layers, preprocessing_layers

    spec = get_spec(strategy.backbone)
    size = strategy.image_size
    base = build_backbone(spec, size, weights or "none", seed=strategy.seed)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in augmentation_layers(strategy.augmentation, seed=strategy.seed):
        x = layer(x)
    for layer in preprocessing_layers(spec.family):
        x = layer(x)
    x = base(x, training=False)  # BatchNorm stays in inference mode, as the guide insists
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(strategy.head_dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return PlainModel(keras.Model(inputs, outputs), base, strategy)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def _compile(plain: PlainModel, lr: float) -> None:
    s = plain.strategy
    loss = (keras.losses.CategoricalFocalCrossentropy() if s.imbalance == "focal"
            else keras.losses.CategoricalCrossentropy(label_smoothing=s.label_smoothing))
    plain.model.compile(keras.optimizers.AdamW(lr, weight_decay=s.weight_decay), loss)


def _imbalance(strategy: Any, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any, Any]:
    """(x, y, class_weight) for the strategy's remedy, done the ordinary way."""
    labels = y.argmax(1)
    if strategy.imbalance == "class_weight":
        from sklearn.utils.class_weight import compute_class_weight

        classes = np.unique(labels)
        weights = compute_class_weight("balanced", classes=classes, y=labels)
        return x, y, {int(c): float(w) for c, w in zip(classes, weights, strict=True)}
    if strategy.imbalance == "oversample":
        rng = np.random.default_rng(strategy.seed)
        top = np.bincount(labels).max()
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), top, replace=True)
                              for c in np.unique(labels)])
        rng.shuffle(idx)
        return x[idx], y[idx], None
    return x, y, None


def fit_plain(plain: PlainModel, x: np.ndarray, y: np.ndarray, *, epochs: int,
              initial_epoch: int = 0, callbacks: list | None = None) -> None:
    """Train epochs `initial_epoch..epochs`: the head for the first `head_epochs`, then
    (if the strategy fine-tunes) the unfrozen top at the backbone learning rate."""
    s = plain.strategy
    x, y, class_weight = _imbalance(s, x, y)
    common = dict(batch_size=s.batch_size, verbose=0, shuffle=True, callbacks=callbacks or [],
                  class_weight=class_weight)
    head_end = min(epochs, s.head_epochs) if s.fine_tunes else epochs
    if initial_epoch < head_end:
        _compile(plain, s.head_lr)
        plain.model.fit(x, y, epochs=head_end, initial_epoch=initial_epoch, **common)
        if plain.model.stop_training:
            return
    if s.fine_tunes and epochs > s.head_epochs:
        plain.unfreeze()
        _compile(plain, s.backbone_lr)
        plain.model.fit(x, y, epochs=epochs, initial_epoch=max(initial_epoch, s.head_epochs),
                        **common)


class EvalCallback(keras.callbacks.Callback):
    """Puts `val_balanced_accuracy` into the epoch logs (the objective every tool
    maximises; callbacks after this one, the tuners' included, read it), records when
    each epoch ended, and stops training at a wall-clock deadline."""

    KEY = "val_balanced_accuracy"

    def __init__(self, x_val: np.ndarray, y_val: np.ndarray,
                 deadline: float | None = None) -> None:
        super().__init__()
        self.x_val, self.y_val, self.deadline = x_val, y_val, deadline
        self.scores: list[float] = []
        self.times: list[float] = []  # time.monotonic() at each epoch's end

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from sklearn.metrics import balanced_accuracy_score

        probs = self.model.predict(self.x_val, batch_size=128, verbose=0)
        score = float(balanced_accuracy_score(self.y_val, probs.argmax(1)))
        self.scores.append(score)
        self.times.append(time.monotonic())
        if logs is not None:
            logs[self.KEY] = score
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.model.stop_training = True
