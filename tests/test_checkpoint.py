"""A trial's checkpoint file format: what is saved loads as it was, nothing torn loads."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from tlsearch.checkpoint import Checkpoint, load_checkpoint


def _checkpoint(step: int = 3, *, best: bool = True) -> Checkpoint:
    rng = np.random.default_rng(step)
    return Checkpoint(
        strategy={"backbone": "tiny_cnn", "seed": 1}, global_step=step, phase_index=1,
        epoch_in_phase=0, history=({"step": 1, "val_objective": 0.5},),
        weights=(rng.normal(size=(2, 3)).astype(np.float32), np.arange(3, dtype=np.int64)),
        opt_backbone=(), opt_head=(np.ones(2, dtype=np.float32),), plateau_factor=0.5,
        best_value=0.75 if best else None, best_step=2 if best else None,
        best_weights=(np.full((2, 3), 7, dtype=np.float32),) if best else None)


def _same(a: Checkpoint, b: Checkpoint) -> bool:
    def equal(x, y):
        if isinstance(x, tuple) and x and isinstance(x[0], np.ndarray):
            return len(x) == len(y) and all(
                u.dtype == v.dtype and np.array_equal(u, v) for u, v in zip(x, y, strict=True))
        return x == y

    return all(equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))


def test_a_saved_checkpoint_loads_as_it_was(tmp_path):
    for best in (True, False):
        saved = _checkpoint(best=best)
        saved.save(tmp_path / str(best))
        assert _same(load_checkpoint(tmp_path / str(best)), saved)
    meta = json.loads((tmp_path / "True" / "latest.json").read_text())
    assert meta["arrays"] == "ckpt-00003.npz"
    assert (meta["n_weights"], meta["n_opt_b"], meta["n_opt_h"]) == (2, 0, 1)


def test_only_the_latest_is_kept_and_a_torn_one_never_loads(tmp_path):
    _checkpoint(3).save(tmp_path)
    _checkpoint(4).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00004.npz", "latest.json"]
    assert load_checkpoint(tmp_path).global_step == 4
    npz = tmp_path / "ckpt-00004.npz"
    npz.write_bytes(npz.read_bytes()[:-1])
    assert load_checkpoint(tmp_path) is None
    assert load_checkpoint(tmp_path / "nothing here") is None


class _Variable:
    def __init__(self):
        self.value = None

    def assign(self, value):
        self.value = value


class _Optimizer:
    def __init__(self, n: int):
        self.variables = [_Variable() for _ in range(n)]


def test_optimizers_are_restored_only_where_their_variables_match():
    checkpoint = _checkpoint()
    backbone, head = _Optimizer(1), _Optimizer(1)  # the backbone's had none when saved
    checkpoint.restore_optimizers(backbone, head)
    assert backbone.variables[0].value is None
    assert np.array_equal(head.variables[0].value, checkpoint.opt_head[0])
