"""A strategy's training recipe: its phases, learning-rate schedule, sample order,
class weights, optimizer and loss, as the trial engine builds them from its fields.

Phases follow the seeds' recipe: warm the head up with the backbone frozen, then
unfreeze the top blocks (all at once, or one more per phase). `tlsearch.report` words
the same plan (`plan_phases`), so the two never drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tlsearch.strategy import ALL_BLOCKS, Strategy

__all__ = ["Phase", "class_weights", "epoch_order", "lr_factor", "make_loss",
           "make_optimizer", "plan_phases"]


@dataclass(frozen=True)
class Phase:
    """One stretch of epochs with the same unfrozen blocks (0: the head alone)."""

    name: str
    blocks: int
    epochs: int


def plan_phases(strategy: Strategy, n_blocks: int) -> list[Phase]:
    """The phases a strategy trains, for a backbone of `n_blocks` blocks."""
    if strategy.head_init == "probe":
        return []  # the solve is the model: no SGD after it
    phases = [Phase("head", 0, strategy.head_epochs)]
    if not strategy.fine_tunes:
        return phases
    depth = n_blocks if strategy.unfreeze_blocks == ALL_BLOCKS else min(
        strategy.unfreeze_blocks, n_blocks)
    if not strategy.gradual or depth <= 1:
        phases.append(Phase("finetune", strategy.unfreeze_blocks, strategy.finetune_epochs))
        return phases
    stages = min(depth, strategy.finetune_epochs)
    targets = [max(1, round(depth * (i + 1) / stages)) for i in range(stages)]
    if strategy.unfreeze_blocks == ALL_BLOCKS:
        targets[-1] = ALL_BLOCKS
    base, extra = divmod(strategy.finetune_epochs, stages)
    for i, blocks in enumerate(targets):
        phases.append(Phase(f"finetune{i + 1}", blocks, base + (1 if i < extra else 0)))
    return phases


def lr_factor(schedule: str, epoch: int, epochs: int, warmup: int, plateau_factor: float) -> float:
    """Multiplier of a phase's base LR at `epoch` (0-based within the phase)."""
    if warmup and epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "cosine":
        span = max(1, epochs - warmup)
        t = (epoch - warmup) / span
        return 0.5 * (1 + math.cos(math.pi * t)) * 0.9 + 0.1
    if schedule == "plateau":
        return plateau_factor
    return 1.0


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced per-class loss weights (1 for a class absent from `labels`)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(n_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def epoch_order(labels: np.ndarray, strategy: Strategy, step: int) -> np.ndarray:
    """Sample order for one epoch; `oversample` draws classes uniformly."""
    rng = np.random.default_rng([strategy.seed, step])
    if strategy.imbalance != "oversample":
        return rng.permutation(len(labels))
    counts = np.bincount(labels)
    p = 1.0 / counts[labels]
    return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())


def make_optimizer(strategy: Strategy, lr: float):
    import keras

    if strategy.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9)
    if strategy.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=strategy.weight_decay)
    return keras.optimizers.Adam(lr)


def make_loss(strategy: Strategy):
    import keras

    if strategy.imbalance == "focal":
        return keras.losses.CategoricalFocalCrossentropy(
            gamma=2.0, label_smoothing=strategy.label_smoothing, reduction=None)
    return keras.losses.CategoricalCrossentropy(label_smoothing=strategy.label_smoothing,
                                                reduction=None)
