"""Torn files: the storage, a checkpoint and a cache entry cut at several byte offsets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.reliability.helpers import load_study, tiny_search
from tlsearch.search import SearchConfig, SearchError, open_study, run_search

pytestmark = pytest.mark.reliability


def _config(root, studies, **kw) -> SearchConfig:
    base = dict(data_dir=str(root / "data"), space=str(root / "tiny.yaml"), study="r",
                out=str(studies), weights="none", cache_dir=str(root / "cache"),
                pruner="none", baselines=False, trials=3)
    base.update(kw)
    return SearchConfig(**base)


def test_torn_journal_keeps_committed_trials_or_names_the_damage(tmp_path, figures):
    _, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    run_search(_config(tmp_path, studies))
    journal = studies / "r" / "journal.log"
    data = journal.read_bytes()
    last_line = data.rstrip(b"\n").rfind(b"\n") + 1
    cases = {"last byte (newline)": len(data) - 1, "inside the last record": last_line + 5,
             "half the file": len(data) // 2, "first bytes": 7}
    survived = resumed = named = 0
    for label, offset in cases.items():
        copy = tmp_path / f"copy-{offset}"
        shutil.copytree(studies, copy)
        (copy / "r" / "journal.log").write_bytes(data[:offset])
        complete_before = sum(1 for line in data[:offset].split(b"\n") if b'"state": 1' in line
                              or b'"state":1' in line)
        try:
            handle = open_study(_config(tmp_path, copy), create=False)
        except SearchError as exc:
            assert "damaged" in str(exc) and "backup" in str(exc), label
            named += 1
            continue
        complete = [t for t in handle.study.trials if t.state.name == "COMPLETE"]
        assert len(complete) >= complete_before - 1, label
        survived += 1
        # Writes after the repair. A cut can drop the record naming a trial's worker: such
        # an orphan is recovered once its heartbeat is older than stale_after.
        outcome = run_search(_config(tmp_path, copy, trials=4, stale_after=0.5))
        assert sum(outcome.counts.get(s, 0) for s in ("complete", "pruned")) >= 4, label
        reread = load_study(copy)
        assert sum(t.state.name == "COMPLETE" for t in reread.trials) >= 4, label
        resumed += 1
    figures.add("journal cut points tried", len(cases))
    figures.add("opened with every intact trial, then resumed", f"{resumed}/{survived}",
                "all")
    figures.add("refused with a named error (nothing readable)", named)
    assert resumed == survived and survived + named == len(cases)


def test_torn_checkpoint_is_detected_and_not_used(trial_data, tmp_path, figures):
    from tlsearch.checkpoint import load_checkpoint
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial

    strategy = Strategy(backbone="tiny_cnn", image_size=32, weights="none", head_epochs=2,
                        unfreeze_blocks=1, finetune_epochs=1, seed=0)
    ckpt = tmp_path / "ckpt"
    run_trial(strategy, trial_data, checkpoint_dir=ckpt)
    npz = next(ckpt.glob("ckpt-*.npz"))
    blob = npz.read_bytes()
    used = 0
    offsets = [0, 1, len(blob) // 3, len(blob) // 2, len(blob) - 1]
    for offset in offsets:
        npz.write_bytes(blob[:offset])
        if load_checkpoint(ckpt) is not None:
            used += 1
        # A resume from the torn checkpoint starts over instead of trusting it.
        result = run_trial(strategy, trial_data, resume_from=ckpt)
        assert result.state == "complete" and result.resumed_from_step == 0
    npz.write_bytes(blob)
    assert load_checkpoint(ckpt) is not None
    figures.add("checkpoint cut points tried", len(offsets))
    figures.add("torn checkpoints used", used, "0")
    assert used == 0


def test_torn_cache_entry_is_recomputed(tmp_path, figures):
    from tlsearch.features import FeatureCache

    cache = FeatureCache(tmp_path / "fc")
    value = np.arange(4096, dtype=np.float32).reshape(64, 64)
    cache.get_or_compute("k", lambda: value)
    path = cache.root / "k.npy"
    blob = path.read_bytes()
    offsets = [0, 10, 128, len(blob) // 2, len(blob) - 1]
    used = recomputed = 0
    for offset in offsets:
        path.write_bytes(blob[:offset])
        fresh = FeatureCache(tmp_path / "fc")  # a new process: no memo of past checks
        calls = []
        array, hit = fresh.get_or_compute("k", lambda calls=calls: calls.append(1) or value)
        used += int(hit)
        recomputed += len(calls)
        np.testing.assert_array_equal(np.asarray(array, dtype=np.float32),
                                      value.astype(np.float16).astype(np.float32))
    figures.add("cache-entry cut points tried", len(offsets))
    figures.add("torn cache entries used", used, "0")
    figures.add("torn cache entries recomputed", recomputed, str(len(offsets)))
    assert used == 0 and recomputed == len(offsets)
