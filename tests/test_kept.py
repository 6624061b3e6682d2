"""Kept trial models: the head alone where the backbone is as built, else model.keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import tiny_strategy
from tlsearch import kept
from tlsearch.export import ExportError
from tlsearch.model import clear_backbone_pool
from tlsearch.strategy import Strategy
from tlsearch.train import run_trial


def _strategy(**kw) -> Strategy:
    return tiny_strategy(**{"finetune_epochs": 1, "unfreeze_blocks": 0, "seed": 3, **kw})


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)


def test_a_head_only_trial_keeps_its_head_and_loads_as_the_same_model(trial_data, tmp_path):
    tmp_path = tmp_path / "trial"
    tmp_path.mkdir()
    clear_backbone_pool()
    result = run_trial(_strategy(), trial_data, reuse_backbone=True)
    assert result.backbone_digest is not None
    kept.save(tmp_path, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept.HEAD_FILE, kept.HEAD_META])
    assert kept.exists(tmp_path) and kept.stamp(tmp_path) is not None
    expected = np.asarray(result.model(_images(), training=False))
    clear_backbone_pool()  # as a fresh `tlsearch export` process: nothing pooled
    loaded = kept.load(tmp_path)
    np.testing.assert_allclose(np.asarray(loaded(_images(), training=False)), expected,
                               rtol=1e-5, atol=1e-6)

    # A backbone that is not the one the head was trained on is refused, by name.
    meta = json.loads((tmp_path / kept.HEAD_META).read_text())
    meta["backbone_sha256"] = "0" * 64
    (tmp_path / kept.HEAD_META).write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="--retrain train\\+val"):
        kept.load(tmp_path)

    kept.drop(tmp_path)
    assert not kept.exists(tmp_path) and kept.stamp(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="no kept model"):
        kept.load(tmp_path)


def test_a_fine_tuned_or_unpooled_trial_keeps_the_whole_model(trial_data, tmp_path):
    tmp_path = tmp_path / "trial"
    tmp_path.mkdir()
    clear_backbone_pool()
    tuned = run_trial(_strategy(unfreeze_blocks=1), trial_data, reuse_backbone=True)
    assert tuned.backbone_digest is None  # its backbone trained
    kept.save(tmp_path, tuned)
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.MODEL_FILE]
    np.testing.assert_allclose(np.asarray(kept.load(tmp_path)(_images(), training=False)),
                               np.asarray(tuned.model(_images(), training=False)), atol=1e-6)
    alone = run_trial(_strategy(), trial_data)  # no pool: nothing to check the digest against
    assert alone.backbone_digest is None
    kept.save(tmp_path, alone)  # replaces the last model, whichever form
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.MODEL_FILE]


def test_adapted_batchnorm_statistics_are_not_as_built(trial_data):
    clear_backbone_pool()
    result = run_trial(_strategy(bn_mode="adapt"), trial_data, reuse_backbone=True)
    assert result.backbone_digest is None
