"""The standard recipes everyone copies, run as ordinary trials at the start of a study.

They give the report its yardstick: "the recommended strategy beats the standard recipe
by X points at Y times its training time". Each recipe is written down as its source
describes it, on the study's first (or top-ranked) backbone and the space's epoch
budget, whether or not the search space itself could express it: a baseline is enqueued
with no searchable parameters, so the sampler never learns from it and the recipe is not
bent to fit the space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tlsearch.strategy import ALL_BLOCKS, Strategy

__all__ = ["BASELINES", "Baseline", "baseline_strategies", "floor_of", "is_linear_probe"]


@dataclass(frozen=True)
class Baseline:
    name: str
    title: str
    source: str
    recipe: Callable[[Strategy], Strategy]
    #: Where the recipe here differs from its source, in the report's words.
    deviations: str = ""


def _keras_io(base: Strategy) -> Strategy:
    # keras.io "Transfer learning & fine-tuning": frozen base called with training=False,
    # Adam at its default 1e-3 for the head, then the whole base unfrozen and trained at
    # 1e-5 with BatchNorm kept in inference mode; flip + small rotation augmentation.
    return base.replace(unfreeze_blocks=ALL_BLOCKS, gradual=False, bn_mode="frozen",
                        head_lr=1e-3, backbone_lr=1e-5, optimizer="adam", weight_decay=0.0,
                        schedule="constant", warmup_epochs=0, head_dropout=0.2,
                        head_hidden_units=0, head_l2=0.0, label_smoothing=0.0,
                        augmentation="light", imbalance="none", early_stopping_patience=0,
                        finetune_epochs=max(base.finetune_epochs, 1), head_init="random")


def _fastai(base: Strategy) -> Strategy:
    # fastai `Learner.fine_tune(epochs, base_lr=2e-3)`: one frozen epoch at base_lr, then
    # base_lr halved and everything unfrozen for `epochs` with discriminative rates
    # slice(base_lr/100, base_lr) = 1e-5 (stem) .. 1e-4 (body) .. 1e-3 (head) over its
    # three layer groups, one-cycle schedule (here: warm-up + cosine), BatchNorm trained
    # and in training mode (train_bn=True), AdamW with wd 0.01. One backbone rate here:
    # the body group's 1e-4 (the stem group's 1e-5 scored 0.85 vs 0.92 validation on the
    # textures demo, Lite0 at 96 px, 8 epochs).
    return base.replace(head_epochs=1, unfreeze_blocks=ALL_BLOCKS, gradual=False,
                        bn_mode="adapt", head_lr=1e-3, backbone_lr=1e-4, optimizer="adamw",
                        weight_decay=1e-2, schedule="cosine", warmup_epochs=1,
                        head_hidden_units=0, head_l2=0.0, label_smoothing=0.0,
                        imbalance="none", early_stopping_patience=0,
                        finetune_epochs=max(base.head_epochs + base.finetune_epochs - 1, 1),
                        head_init="random")


def _linear_probe(base: Strategy) -> Strategy:
    # A linear classifier on frozen features, the floor any fine-tuning must beat:
    # scikit-learn's StandardScaler + LogisticRegression at its defaults (C = 1, no SGD
    # after it), so the floor a study measures is the one a reviewer fits in two lines.
    return base.replace(unfreeze_blocks=0, finetune_epochs=0, gradual=False, bn_mode="frozen",
                        head_dropout=0.0, head_hidden_units=0, head_l2=0.0,
                        label_smoothing=0.0, augmentation="none", imbalance="none",
                        schedule="cosine", warmup_epochs=0, early_stopping_patience=0,
                        head_init="probe")


BASELINES: tuple[Baseline, ...] = (
    Baseline("keras_io", "keras.io guide: frozen head, then full fine-tune at 1e-5",
             "https://keras.io/guides/transfer_learning/", _keras_io,
             "epochs are the space's head and fine-tune budgets (the guide: 20 and 10); the "
             "head keeps Adam 1e-3 while the backbone fine-tunes at 1e-5 (the guide "
             "recompiles everything at 1e-5)"),
    Baseline("fastai_fine_tune", "fastai fine_tune: 1 frozen epoch, then all layers, "
             "discriminative LRs", "https://docs.fast.ai/callback.schedule.html", _fastai,
             "one backbone rate, 1e-4 (fastai: 1e-5 for the stem group, 1e-4 for the body); "
             "the head at 1e-3 in both phases (fastai: 2e-3 in the frozen epoch); warm-up + "
             "cosine for one-cycle, without momentum cycling; a pooled linear head (fastai: "
             "concat pooling and two layers); BatchNorm statistics re-estimated after every "
             "epoch (fastai's PyTorch momentum 0.1 tracks them the same way)"),
    Baseline("linear_probe", "linear probe: head only on the frozen backbone", "", _linear_probe,
             "scikit-learn's StandardScaler + LogisticRegression (C = 1, unweighted) on the "
             "pooled frozen features, fitted on the train split, as in two lines of "
             "scikit-learn; the search's head-only trials also choose C on validation and "
             "try SGD epochs after the solve"),
)


def baseline_strategies(base: Strategy, names: tuple[str, ...] | None = None
                        ) -> list[tuple[Baseline, Strategy]]:
    """Each requested recipe applied to `base` (backbone, size, weights, seed, epochs)."""
    chosen = [b for b in BASELINES if names is None or b.name in names]
    return [(b, b.recipe(base)) for b in chosen]


def floor_of(strategy: Strategy) -> Strategy:
    """The linear probe on `strategy`'s own backbone, size and weights: the floor that
    strategy's fine-tuning has to beat."""
    return _linear_probe(strategy)


def is_linear_probe(strategy: Strategy) -> bool:
    """A solved linear head on a frozen backbone (what `floor_of` builds)."""
    return (strategy.unfreeze_blocks == 0 and strategy.head_hidden_units == 0
            and strategy.head_init in ("solve", "probe"))

