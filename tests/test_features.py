"""The frozen-prefix cache's size bound: least recently used entries go first."""

from __future__ import annotations

import fcntl
import os
import time

import numpy as np

from tlsearch.features import FeatureCache


def _entry(n: int = 1000) -> np.ndarray:
    return np.ones((n,), dtype=np.float32)  # 4,000 bytes of data as float32


def test_the_bound_evicts_the_least_recently_used_entry(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=9_000)  # room for two float32 entries
    for key in ("a", "b"):
        cache.get_or_compute(key, _entry, dtype=np.float32)
        time.sleep(0.02)  # distinct "last used" stamps
    assert cache.load("a") is not None  # a is now the most recently used
    time.sleep(0.02)
    cache.get_or_compute("c", _entry, dtype=np.float32)
    assert cache.load("b") is None and cache.load("a") is not None
    assert cache.load("c") is not None
    assert cache.stats.evicted == 1 and cache.size_bytes() <= 9_000
    # An evicted entry is recomputed when next asked for.
    _, hit = cache.get_or_compute("b", _entry, dtype=np.float32)
    assert hit is False


def test_an_entry_being_computed_elsewhere_and_the_new_one_are_never_evicted(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.get_or_compute("busy", _entry, dtype=np.float32)
    with open(cache.root / "busy.lock", "a+") as other:  # as another worker would hold it
        fcntl.flock(other, fcntl.LOCK_EX)
        bounded = FeatureCache(tmp_path, max_bytes=0)
        bounded.get_or_compute("new", _entry, dtype=np.float32)
        assert bounded.load("busy") is not None and bounded.load("new") is not None
        fcntl.flock(other, fcntl.LOCK_UN)
    size = os.path.getsize(cache.root / "new.npy")
    assert bounded.evict(0) == 2 * size and bounded.size_bytes() == 0


def test_search_with_cache_max_gb_keeps_the_cache_small(tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.cli import app

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    result = CliRunner().invoke(app, [
        "search", str(data), "--space", str(space), "--study", "c", "--trials", "3",
        "--weights", "none", "--cache-dir", str(tmp_path / "cache"), "--no-baselines",
        "--cache-max-gb", "0", "--studies", str(tmp_path / "studies"), "--no-isolate"])
    assert result.exit_code == 0, result.output
    entries = list((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(entries) <= 1  # every write evicted the others; the search still finished
    import json

    status = json.loads(CliRunner().invoke(app, ["status", "c", "--json", "--studies",
                                                 str(tmp_path / "studies")]).stdout)
    assert status["counts"].get("complete", 0) + status["counts"].get("pruned", 0) == 3
