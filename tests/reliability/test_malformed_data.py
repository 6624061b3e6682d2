"""Malformed data: the bad-file corpus mixed into a real dataset, searched end to end."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from tests.helpers_images import malformed_corpus
from tests.reliability.helpers import tiny_search
from tlsearch.search import SearchConfig, run_search

pytestmark = pytest.mark.reliability


def test_search_completes_and_skips_every_bad_file_with_its_reason(tmp_path, figures):
    data, studies, _ = tiny_search(tmp_path, head_epochs=1, finetune_epochs=1)
    corpus = tmp_path / "corpus"
    expected = malformed_corpus(corpus)
    # The corpus files go into a class folder of the real dataset, as a messy export would.
    # Left out: symlinks (their relative targets do not travel), and the two outcomes that
    # depend on the scan's pixel limit or on not running as root.
    bad: Counter = Counter()
    for rel, outcome in expected.items():
        src = corpus / rel
        if src.is_symlink() or not src.is_file() or outcome.reason in (
                "decompression_bomb", "unreadable"):
            continue
        shutil.copy(src, data / "red" / f"corpus_{src.name}")
        if outcome.reason:
            bad[outcome.reason] += 1
    events = []
    outcome = run_search(SearchConfig(
        data_dir=str(data), space=str(tmp_path / "tiny.yaml"), study="m", out=str(studies),
        weights="none", cache_dir=str(tmp_path / "cache"), pruner="none", baselines=False,
        trials=2), on_event=lambda kind, info: events.append((kind, info)))
    skipped = next(info for kind, info in events if kind == "data")["skipped_reasons"]
    figures.add("bad files mixed in", sum(bad.values()))
    figures.add("skipped with the expected reason", sum(min(skipped.get(r, 0), n)
                                                        for r, n in bad.items()),
                str(sum(bad.values())))
    figures.add("search finished", outcome.stopped, "done")
    assert outcome.stopped == "done" and outcome.counts == {"complete": 2}
    for reason, n in bad.items():
        assert skipped.get(reason, 0) >= n, (reason, skipped)
