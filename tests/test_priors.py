"""Priors from past studies: mapped onto the new space, enqueued after the baselines."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tlsearch.priors import Prior, load_priors, map_onto, write_priors
from tlsearch.space import SearchSpace

SPACE = {
    "name": "p", "backbones": {"tiny_cnn": [32, 48]},
    "unfreeze_blocks": [0, 1], "head_epochs": 2, "finetune_epochs": 1,
    "head_lr": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
    "augmentation": ["none", "light"], "batch_size": 16, "head_dropout": 0.0,
}


def _space():
    return SearchSpace.from_dict(SPACE)


def test_a_prior_is_fitted_into_the_space_or_left_out():
    space = _space()
    far = Prior("a", 3, 0.9, {"backbone": "tiny_cnn@40", "head_lr": 0.5,
                              "augmentation": "heavy", "unfreeze_blocks": 1,
                              "not_here": 7})
    params = map_onto(space, far)
    # The nearest size, the range's top, a choice the space lacks dropped (its default).
    assert params["backbone"] == "tiny_cnn@48" and params["head_lr"] == pytest.approx(3e-2)
    assert params["augmentation"] == "none" and params["unfreeze_blocks"] == 1
    assert "not_here" not in params
    assert map_onto(space, Prior("a", 1, 0.9, {"backbone": "resnet50@224"})) is None
    # The mapped params are what the space accepts for a queued trial.
    assert space.fixed_strategy(**params).image_size == 48


def test_priors_from_one_study_start_the_next_and_a_file_carries_them(tmp_path):
    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.cli import app
    from tlsearch.search import load_config, open_study

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    studies = ["--studies", str(tmp_path / "studies")]
    common = ["--space", str(space), "--weights", "none", "--cache-dir", str(tmp_path / "c"),
              "--no-baselines", "--no-isolate", *studies]
    runner = CliRunner()
    done = runner.invoke(app, ["search", str(data), "--study", "a", "--trials", "3", *common])
    assert done.exit_code == 0, done.output
    source = open_study(load_config(tmp_path / "studies" / "a"), create=False).study
    ranked = sorted((t for t in source.trials if t.value is not None), key=lambda t: -t.value)
    file = tmp_path / "priors.json"
    done = runner.invoke(app, ["priors", str(tmp_path / "studies" / "a"), "--out", str(file),
                               "--top", "2"])
    assert done.exit_code == 0, done.output
    assert [p.trial for p in load_priors([file])] == [t.number for t in ranked[:2]]
    for name, prior in (("b", tmp_path / "studies" / "a"), ("f", file)):
        done = runner.invoke(app, ["search", str(data), "--study", name, "--trials", "3",
                                   "--prior", str(prior), *common])
        assert done.exit_code == 0, done.output
        study = open_study(load_config(tmp_path / "studies" / name), create=False).study
        trials = sorted(study.trials, key=lambda t: t.number)
        expected = ranked[:3] if name == "b" else ranked[:2]
        seen = set()
        firsts = []
        for t in expected:  # identical strategies are enqueued once
            key = json.dumps(t.params, sort_keys=True)
            if key not in seen:
                seen.add(key)
                firsts.append(t)
        for queued, origin in zip(trials[:len(firsts)], firsts, strict=True):
            assert queued.params == origin.params
            assert queued.user_attrs["prior"]["trial"] == origin.number
        assert len(study.user_attrs["priors"]) == len(firsts)
    from tlsearch.report import build_report

    html = build_report(tmp_path / "studies" / "b", tmp_path / "b.html").read_text()
    assert f"(prior: a ({data}) #{firsts[0].number})" in html


def test_bad_prior_sources_are_one_line(tmp_path):
    from tlsearch.cli import app

    (tmp_path / "d").mkdir()
    (tmp_path / "junk.json").write_text("{}")
    for source in (tmp_path / "missing", tmp_path / "junk.json", tmp_path / "d"):
        done = CliRunner().invoke(app, ["search", str(tmp_path), "--prior", str(source)])
        assert done.exit_code == 2 and "--prior" in done.output, done.output
    write_priors([], tmp_path / "empty.json")
    assert load_priors([tmp_path / "empty.json"]) == []
