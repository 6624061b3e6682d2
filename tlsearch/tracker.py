"""A trial's best epoch and when a phase stops: Keras's `EarlyStopping` (with
`restore_best_weights`) and `ReduceLROnPlateau`'s decay, as one small object.

The best value, its step and weights span the whole trial: the training loop reports
every epoch, and the head solve or an adopted epoch soup may offer theirs. Patience
and the plateau decay count within a phase: each phase starts its own wait, and an
epoch that does not beat the phase's best so far adds to it (and, under the plateau
schedule, halves the learning-rate factor, which carries over to later phases).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["BestTracker", "Weights"]


class Weights(Protocol):
    """What the tracker copies and restores: a Keras model's own two methods."""

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: Sequence[np.ndarray]) -> None: ...


class BestTracker:
    """Best value (higher is better), its step and the weights then; a phase's wait.

    Args:
        model: whose weights are copied at each new best and restored at the end.
        patience: epochs without a new phase best after which the phase stops (0: never).
        plateau: halve `plateau_factor` after each epoch without a new phase best.
    """

    def __init__(self, model: Weights, *, patience: int = 0, plateau: bool = False) -> None:
        self.model = model
        self.patience = patience
        self.plateau = plateau
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_weights: Sequence[np.ndarray] | None = None
        self.wait = 0
        #: The plateau schedule's multiplier of the learning rate (1 until a plateau).
        self.plateau_factor = 1.0
        self._phase_best = -math.inf

    def on_phase_begin(self) -> None:
        self.wait, self._phase_best = 0, -math.inf

    def on_epoch_end(self, step: int, value: float) -> None:
        """Record an epoch's validation value, its weights kept if it is the best yet."""
        if self.best is None or value > self.best:
            self.keep(value, step)
        if value > self._phase_best:
            self._phase_best, self.wait = value, 0
        else:
            self.wait += 1
            if self.plateau:
                self.plateau_factor *= 0.5

    def keep(self, value: float, step: int) -> None:
        """Make the model's current weights the best, at `value` and `step`."""
        self.best, self.best_step, self.best_weights = value, step, self.model.get_weights()

    @property
    def stop_phase(self) -> bool:
        """Whether the phase has waited `patience` epochs for a new best."""
        return bool(self.patience) and self.wait >= self.patience

    def restore_best_weights(self) -> None:
        assert self.best_weights is not None, "no epoch was recorded"
        self.model.set_weights(self.best_weights)

    def resume(self, *, plateau_factor: float, best: float | None, best_step: int | None,
               best_weights: Sequence[np.ndarray] | None) -> None:
        """Continue from a checkpoint's record; its best, if it had one, replaces ours."""
        self.plateau_factor = plateau_factor
        if best_step is not None:
            self.best, self.best_step, self.best_weights = best, best_step, best_weights
