"""A strategy's training plan: its phases, each epoch's sample order and the class
weights of its loss, as the trial engine follows them. (What each optimizer, loss,
schedule and layer option is, is data in `tlsearch.recipes`.)

Phases follow the seeds' recipe: warm the head up with the backbone frozen, then
unfreeze the top blocks (all at once, or one more per phase). `tlsearch.report` words
the same plan (`plan_phases`), so the two never drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlsearch.strategy import ALL_BLOCKS, Strategy

__all__ = ["Phase", "class_weights", "epoch_order", "plan_phases"]


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
