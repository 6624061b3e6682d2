"""The held-out test split: nothing that selects reads it; it is scored once, at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY_SPACE, write_colour_dataset
from tlsearch.search import SearchConfig, open_study, run_search


@pytest.fixture
def study(tmp_path):
    data = write_colour_dataset(tmp_path / "data", {"red": 24, "green": 24, "blue": 24})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="h",
                          out=str(tmp_path / "studies"), weights="none", pruner="none",
                          cache_dir=str(tmp_path / "cache"), trials=3, test_fraction=0.25,
                          baselines=False)
    return config


def test_no_trial_reads_a_test_image_and_the_end_scores_them_once(study, monkeypatch):
    import traceback

    import tlsearch.data as data_module
    from tlsearch.data import Split
    from tlsearch.holdout import score_holdout

    read: list[str] = []
    real_image, real_cached = data_module.decode_image, data_module.decode_cached

    def image(path, *a, **kw):
        # Hashing every image for the duplicate-aware split happens before a split
        # exists and selects nothing: that read is not a trial's.
        if not any(f.filename.endswith("duplicates.py") for f in traceback.extract_stack()):
            read.append(Path(path).resolve().as_posix())
        return real_image(path, *a, **kw)

    def cached(root, paths, *a, **kw):
        read.extend((Path(root) / p).resolve().as_posix() for p in paths)
        return real_cached(root, paths, *a, **kw)

    monkeypatch.setattr(data_module, "decode_image", image)
    monkeypatch.setattr(data_module, "decode_cached", cached)
    outcome = run_search(study)
    assert outcome.counts == {"complete": 3}
    handle = open_study(study, create=False)
    split = Split.load(handle.dir / "split.json")
    test = {(Path(study.data_dir) / p).resolve().as_posix() for p, _ in split.test}
    assert len(test) == 18  # a quarter of every class
    assert not test & set(read), "a trial read a held-out test image"

    record = score_holdout(handle)
    best = outcome.best["number"]
    assert test <= set(read)
    assert record["recommended"] == best and record["n_test"] == 18
    score = record["scores"][str(best)]
    assert score["low"] <= score["value"] <= score["high"]
    assert set(score["metrics"]) == {"balanced_accuracy", "accuracy", "macro_f1"}
    read.clear()
    assert score_holdout(handle)["scores"] == record["scores"]
    assert not read, "a model already scored must not be scored again"


def test_too_small_a_dataset_gets_no_test_split_and_says_so(tmp_path):
    import dataclasses

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12, "blue": 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="small",
                          out=str(tmp_path / "studies"), weights="none", trials=1,
                          cache_dir=str(tmp_path / "cache"), test_fraction=None,
                          baselines=False)
    notices = []
    run_search(config, on_event=lambda k, i: notices.append(i.get("message", "")))
    assert any("no held-out test split" in n for n in notices)
    big = write_colour_dataset(tmp_path / "big", {"red": 25, "green": 25, "blue": 25})
    auto = dataclasses.replace(config, data_dir=str(big), study="big")
    events = []
    run_search(auto, on_event=lambda k, i: events.append((k, i)))
    data_event = next(i for k, i in events if k == "data")
    assert data_event["test"] == 15  # 0.2 of each class of 25
