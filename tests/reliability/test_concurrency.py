"""Concurrency: K workers x M trials on one study, embedded journal and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import tiny_search
from tlsearch.search import SearchConfig, open_study, run_workers

pytestmark = pytest.mark.reliability

K, M = 4, 3


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_k_workers_m_trials(backend, tmp_path, request, figures):
    _, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    config = SearchConfig(data_dir=str(tmp_path / "data"), space=str(tmp_path / "tiny.yaml"),
                          study=f"c-{backend}", out=str(studies), weights="none",
                          cache_dir=str(tmp_path / "cache"), pruner="none", baselines=False,
                          trials=K * M, storage=storage)
    notices = []
    outcome = run_workers(config, K, on_event=lambda kind, info: notices.append(
        str(info.get("message", ""))) if kind == "notice" else None)
    trials = open_study(config, create=False).study.get_trials()
    numbers = [t.number for t in trials]
    locked = sum("database is locked" in n for n in notices)
    figures.add(f"{backend}: trials complete (K={K} x M={M})",
                outcome.counts.get("complete", 0), str(K * M))
    figures.add(f"{backend}: duplicate or missing trial numbers",
                len(numbers) - len(set(numbers)) + (K * M - len(set(numbers))), "0")
    figures.add(f"{backend}: 'database is locked' errors", locked, "0")
    assert outcome.counts == {"complete": K * M}
    assert sorted(numbers) == list(range(K * M)) and locked == 0
