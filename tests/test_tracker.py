"""The best-epoch tracker on hand-made sequences: best, wait, plateau, restore."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.tracker import BestTracker


class _Model:
    """Weights are one array holding the step that last set them."""

    def __init__(self):
        self.weights = [np.zeros(1)]

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.weights = [np.array(w) for w in weights]


def _epochs(tracker: BestTracker, model: _Model, values, first_step: int = 1) -> list[bool]:
    """Feed `values` as consecutive epochs; whether the phase would stop after each."""
    stops = []
    for step, value in enumerate(values, start=first_step):
        model.set_weights([np.array([step])])
        tracker.on_epoch_end(step, value)
        stops.append(tracker.stop_phase)
    return stops


def test_best_wait_and_restore_across_phases():
    model = _Model()
    tracker = BestTracker(model, patience=2)
    tracker.on_phase_begin()
    assert _epochs(tracker, model, [0.5, 0.7, 0.6, 0.7]) == [False, False, False, True]
    assert (tracker.best, tracker.best_step, tracker.wait) == (0.7, 2, 2)  # a tie is no gain
    tracker.on_phase_begin()  # a new phase waits afresh; the best spans the trial
    assert _epochs(tracker, model, [0.65, 0.9], first_step=5) == [False, False]
    assert (tracker.best, tracker.best_step, tracker.wait) == (0.9, 6, 0)
    model.set_weights([np.array([99])])
    tracker.restore_best_weights()
    assert model.weights[0].tolist() == [6]


def test_no_patience_never_stops_and_plateau_halves_the_factor_per_flat_epoch():
    model = _Model()
    tracker = BestTracker(model, plateau=True)
    tracker.on_phase_begin()
    assert not any(_epochs(tracker, model, [0.5, 0.4, 0.3, 0.6, 0.6]))
    assert tracker.plateau_factor == pytest.approx(0.125)
    assert tracker.best_step == 4


def test_an_offered_best_and_a_resumed_one():
    model = _Model()
    tracker = BestTracker(model)
    model.set_weights([np.array([0])])
    tracker.keep(0.8, 0)  # the head solve, before any epoch
    tracker.on_phase_begin()
    _epochs(tracker, model, [0.7])
    assert (tracker.best, tracker.best_step) == (0.8, 0)
    tracker.resume(plateau_factor=0.5, best=None, best_step=None, best_weights=None)
    assert (tracker.best_step, tracker.plateau_factor) == (0, 0.5)  # no best: ours stays
    tracker.resume(plateau_factor=0.5, best=0.9, best_step=3, best_weights=[np.array([3])])
    tracker.restore_best_weights()
    assert (tracker.best, model.weights[0].tolist()) == (0.9, [3])
