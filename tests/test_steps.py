"""Traced steps kept across trials: reused for the same graph, and training as a fresh one."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import tiny_strategy
from tlsearch import steps
from tlsearch.model import clear_backbone_pool
from tlsearch.strategy import Strategy
from tlsearch.train import run_trial


def _strategy(**kw) -> Strategy:
    return tiny_strategy(**{"head_dropout": 0.3, "imbalance": "class_weight", **kw})


@pytest.mark.parametrize("blocks", [0, 1])
def test_a_pooled_step_trains_exactly_as_a_freshly_traced_one(trial_data, blocks):
    clear_backbone_pool()
    run_trial(_strategy(unfreeze_blocks=blocks), trial_data, reuse_backbone=True)
    pooled = dict(steps._POOL)
    # Another trial of the same graph: other rates, dropout, remedy and epochs (the
    # seed stays: a random-init backbone is another backbone per seed).
    other = _strategy(unfreeze_blocks=blocks, head_lr=1e-2, backbone_lr=1e-3,
                      head_dropout=0.1, imbalance="oversample", finetune_epochs=3)
    after = run_trial(other, trial_data, reuse_backbone=True)
    assert dict(steps._POOL) == pooled  # nothing traced: every step and pass was reused
    clear_backbone_pool()
    alone = run_trial(other, trial_data, reuse_backbone=True)  # everything traced anew
    assert set(steps._POOL) == set(pooled) and all(  # the same graphs, traced again
        steps._POOL[key][1] is not pooled[key][1] for key in pooled)
    np.testing.assert_allclose(after.val_probabilities, alone.val_probabilities,
                               rtol=1e-5, atol=1e-6)
    assert [h["train_loss"] for h in after.history] == pytest.approx(
        [h["train_loss"] for h in alone.history], rel=1e-5)


def test_another_graph_gets_its_own_step(trial_data):
    clear_backbone_pool()
    run_trial(_strategy(unfreeze_blocks=1), trial_data, reuse_backbone=True)
    before = len(steps._POOL)
    run_trial(_strategy(unfreeze_blocks=1, imbalance="focal"), trial_data,
              reuse_backbone=True)  # another loss: another graph
    assert len(steps._POOL) > before
    unpooled = len(steps._POOL)
    run_trial(_strategy(unfreeze_blocks=1, head_dropout=0.2), trial_data)  # no pool asked
    assert len(steps._POOL) == unpooled


def test_the_pool_only_returns_what_closes_over_the_same_objects():
    steps.clear_step_pool()
    a, b = object(), object()
    made = steps.pooled(("k",), (a,), lambda: "first")
    assert steps.pooled(("k",), (a,), lambda: "second") == made == "first"
    assert steps.pooled(("k",), (b,), lambda: "third") == "third"  # other owner: rebuilt
    assert steps.pooled(None, (a,), lambda: "free") == "free"  # never pooled
    steps.clear_step_pool()
    assert not steps._POOL
