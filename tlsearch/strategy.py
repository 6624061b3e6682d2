"""The transfer strategy: one frozen record of every choice a trial makes.

A `Strategy` carries no Optuna or Keras types, so model building, training and
export can be tested and reused by any search engine (Optuna, KerasTuner, a
hand-written baseline).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from tlsearch import recipes

__all__ = [
    "ALL_BLOCKS",
    "AUGMENTATIONS",
    "BN_MODES",
    "HEAD_INITS",
    "IMBALANCE_REMEDIES",
    "OPTIMIZERS",
    "SCHEDULES",
    "Strategy",
    "StrategyError",
]

#: `unfreeze_blocks` value meaning "fine-tune the whole backbone".
ALL_BLOCKS = -1

# The options a strategy may name: the recipes table's entries.
BN_MODES = tuple(recipes.BATCHNORM)
AUGMENTATIONS = tuple(recipes.AUGMENTATIONS)
IMBALANCE_REMEDIES = tuple(recipes.IMBALANCE)
SCHEDULES = tuple(recipes.SCHEDULES)
OPTIMIZERS = tuple(recipes.OPTIMIZERS)
#: How the head starts: `solve` standardizes the pooled features and fits a converged
#: linear classifier on them (tlsearch.head), C chosen on validation, SGD epochs kept
#: only if they win; `probe` is that solve at scikit-learn's defaults and nothing else
#: (C = 1, no epochs: `StandardScaler` + `LogisticRegression` exactly, the floor of
#: issue #24); `random` is Keras's own initialisation on unscaled features (the keras.io
#: and fastai recipes).
HEAD_INITS = ("solve", "probe", "random")


class StrategyError(ValueError):
    """A strategy field has a value outside its domain."""


@dataclass(frozen=True)
class Strategy:
    """Everything that defines one transfer-learning trial.

    `unfreeze_blocks` counts backbone blocks from the top: 0 keeps the backbone
    frozen (head only), k fine-tunes the top k blocks, `ALL_BLOCKS` (-1) all of it.
    `gradual` unfreezes one more block per fine-tuning phase up to that depth.
    """

    backbone: str
    image_size: int
    weights: str = "imagenet"
    unfreeze_blocks: int = 0
    gradual: bool = False
    bn_mode: str = "frozen"
    head_dropout: float = 0.2
    head_hidden_units: int = 0
    head_l2: float = 0.0
    head_lr: float = 1e-3
    backbone_lr: float = 1e-4
    head_epochs: int = 3
    finetune_epochs: int = 0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augmentation: str = "none"
    imbalance: str = "none"
    batch_size: int = 32
    early_stopping_patience: int = 0
    seed: int = 0
    head_init: str = "solve"
    #: Greedy soup of the last phase's last k epochs (0 or 1: the best epoch alone).
    epoch_soup: int = 0

    def __post_init__(self) -> None:
        _check_choice("bn_mode", self.bn_mode, BN_MODES)
        _check_choice("augmentation", self.augmentation, AUGMENTATIONS)
        _check_choice("imbalance", self.imbalance, IMBALANCE_REMEDIES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("head_init", self.head_init, HEAD_INITS)
        if self.image_size < 8:
            raise StrategyError(f"image_size must be >= 8, got {self.image_size}")
        if self.unfreeze_blocks < ALL_BLOCKS:
            raise StrategyError(
                f"unfreeze_blocks must be >= 0 or {ALL_BLOCKS} (all), got {self.unfreeze_blocks}"
            )
        for name in ("head_lr", "backbone_lr"):
            if not getattr(self, name) > 0:
                raise StrategyError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise StrategyError(f"head_dropout must be in [0, 1), got {self.head_dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise StrategyError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("head_hidden_units", "warmup_epochs", "early_stopping_patience",
                     "epoch_soup"):
            if getattr(self, name) < 0:
                raise StrategyError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.head_epochs < 1:
            raise StrategyError(f"head_epochs must be >= 1, got {self.head_epochs}")
        if self.finetune_epochs < 0:
            raise StrategyError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.batch_size < 1:
            raise StrategyError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.head_init == "probe" and (self.head_hidden_units or self.fine_tunes):
            raise StrategyError("head_init 'probe' is a linear classifier on a frozen backbone: "
                                "it needs head_hidden_units 0 and no fine-tuning")
        if self.head_l2 < 0 or self.weight_decay < 0:
            raise StrategyError("head_l2 and weight_decay must be >= 0")

    @property
    def fine_tunes(self) -> bool:
        """Whether any backbone weights are trained after the head warm-up."""
        return self.unfreeze_blocks != 0 and self.finetune_epochs > 0

    @property
    def total_epochs(self) -> int:
        if self.head_init == "probe":
            return 0  # the solve is the model
        return self.head_epochs + (self.finetune_epochs if self.fine_tunes else 0)

    def replace(self, **changes: Any) -> Strategy:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Strategy:
        """Build from a mapping; unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StrategyError(f"unknown strategy field(s): {', '.join(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        """The strategy in plain words, as the report and the CLI print it."""
        if self.head_init == "probe":
            return (f"{self.backbone} at {self.image_size}px ({self.weights} weights): "
                    "scikit-learn's StandardScaler + LogisticRegression (C = 1) on the frozen "
                    f"pooled features, no SGD after it; imbalance remedy {self.imbalance}")
        if self.unfreeze_blocks == 0 or not self.fine_tunes:
            tune = "keep the backbone frozen and train only the head"
        else:
            depth = "all blocks" if self.unfreeze_blocks == ALL_BLOCKS else (
                f"the top {self.unfreeze_blocks} block{'s' if self.unfreeze_blocks != 1 else ''}"
            )
            how = "one block more per phase" if self.gradual else "at once"
            tune = (
                f"then unfreeze {depth} ({how}) for {self.finetune_epochs} epochs "
                f"at backbone LR {self.backbone_lr:.2g}"
            )
        return (
            f"{self.backbone} at {self.image_size}px ({self.weights} weights): "
            f"train the head {self.head_epochs} epochs at LR {self.head_lr:.2g}"
            f"{' from a converged linear solve' if self.head_init == 'solve' else ''}, {tune}; "
            f"BatchNorm {self.bn_mode}, augmentation {self.augmentation}, "
            f"imbalance remedy {self.imbalance}, batch {self.batch_size}"
            + (f"; weights: greedy soup of the last {self.epoch_soup} epochs"
               if self.epoch_soup > 1 else "")
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise StrategyError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
