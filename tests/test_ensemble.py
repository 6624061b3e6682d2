"""Prediction ensembles: never below the recommended trial on validation, one safe model."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from tlsearch import kept
from tlsearch.ensemble import build_ensemble_model, greedy_ensemble


def _accuracy(y):
    return lambda probs: float((probs.argmax(1) == y).mean())


def test_greedy_ensemble_keeps_only_members_that_help():
    y = np.array([0, 0, 1, 1])
    first = np.array([[.6, .4], [.4, .6], [.4, .6], [.4, .6]])  # 3 of 4
    fixes = np.array([[.6, .4], [.9, .1], [.45, .55], [.45, .55]])  # right where first errs
    hurts = np.array([[.0, 1.], [.0, 1.], [1., 0.], [1., 0.]])  # always wrong, confident
    chosen = greedy_ensemble([(5, first), (2, hurts), (7, fixes)], _accuracy(y))
    assert chosen.members == (5, 7)
    assert chosen.first_val_score == 0.75 and chosen.val_score == 1.0
    assert [n for n, _ in chosen.tried] == [2, 7]
    alone = greedy_ensemble([(5, first)], _accuracy(y))
    assert alone.members == (5,) and alone.val_score == alone.first_val_score


def test_the_ensemble_model_is_the_mean_of_its_members_and_loads_safely(tmp_path):
    import keras

    from tlsearch.export import load_model_safely

    def member(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.GlobalAveragePooling2D()(inputs)
        x = keras.layers.Dense(3, name="head_logits")(x)
        return keras.Model(inputs, keras.layers.Activation("softmax")(x), name="transfer")

    a, b = member(0), member(1)
    x = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("f4")
    expected = (np.asarray(a(x)) + np.asarray(b(x))) / 2
    assert build_ensemble_model([a], ["one"]) is a
    model = build_ensemble_model([a, b], ["trial_0001", "trial_0002"])
    model.save(tmp_path / "e.keras")
    loaded = load_model_safely(tmp_path / "e.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), expected, atol=1e-6)


def test_ensemble_temperature_is_fitted_for_the_mean_of_scaled_members():
    from scipy.special import softmax

    from tlsearch.calibration import _log, fit_temperature

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    members = []
    for _ in range(2):  # over-confident members: right 70% of the time, at ~0.99
        logits = rng.normal(0, 1, (200, 3))
        right = rng.random(200) < 0.7
        target = np.where(right, y, (y + 1) % 3)
        logits[np.arange(200), target] += 8
        members.append(softmax(logits, axis=1))
    t = fit_temperature(np.mean(members, 0), y, members=members)
    assert t > 1.5  # over-confidence is cooled

    def nll(temp):
        mean = np.mean([softmax(_log(p) / temp, axis=1) for p in members], 0)
        return -np.log(mean[np.arange(200), y]).mean()

    assert nll(t) <= min(nll(t * 0.8), nll(t * 1.25), nll(1.0))


def test_export_ensemble_through_the_cli_is_scored_once_on_test(study_copy, tmp_path):
    """The exported ensemble equals the mean of its members' exported models, and its
    own held-out score is recorded in export.json and in the study."""
    from tlsearch.cli import app
    from tlsearch.data import decode_image
    from tlsearch.export import EXPORT_ATTR, load_model_safely
    from tlsearch.search import load_config, open_study

    studies_dir, data = study_copy
    runner = CliRunner()
    studies = ["--studies", str(studies_dir)]
    done = runner.invoke(app, ["export", "s", "--out", str(tmp_path / "e"), *studies,
                               "--no-calibrate", "--no-tta", "--ensemble"])
    assert done.exit_code == 0, done.output
    assert "held-out test balanced_accuracy" in done.output
    summary = json.loads((tmp_path / "e" / "export.json").read_text())
    chosen = summary["ensemble"]
    assert chosen["members"][0] == summary["trial"]
    assert chosen["val_score"] >= chosen["first_val_score"]
    assert summary["exported_test"]["n_test"] == 9 and 0 <= summary["exported_test"]["ece"] <= 1
    card = (tmp_path / "e" / "MODEL_CARD.md").read_text()
    assert "Ensemble:" in card and "Held-out test of this exported model (9 images" in card
    handle = open_study(load_config(studies_dir / "s"), create=False)
    assert handle.study.user_attrs[EXPORT_ATTR]["exported_test"] == summary["exported_test"]
    x = np.stack([decode_image(p, 32) for p in sorted((data / "red").glob("*.png"))[:6]])
    exported = np.asarray(load_model_safely(tmp_path / "e" / "model.keras")(
        x.astype("f4"), training=False))
    members = [np.asarray(kept.load(studies_dir / "s" / "trials" / f"{n:04d}")(
        x.astype("f4"), training=False)) for n in chosen["members"]]
    np.testing.assert_allclose(exported, np.mean(members, 0), atol=1e-5)
    both = runner.invoke(app, ["export", "s", "--out", str(tmp_path / "b"), *studies,
                               "--soup", "greedy", "--ensemble"])
    assert both.exit_code == 2 and "choose one" in both.output
    retrained = runner.invoke(app, ["export", "s", "--out", str(tmp_path / "r"), *studies,
                                    "--ensemble", "--retrain", "train+val"])
    assert retrained.exit_code == 2 and "trains on" in retrained.output


def test_the_report_shows_what_was_exported_against_the_trial(tmp_path):
    """The recommendation section names the exported model and its own test score."""
    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.export import export_trial
    from tlsearch.report import build_report
    from tlsearch.search import SearchConfig, run_search

    data = write_colour_dataset(tmp_path / "data", {"red": 12, "green": 12})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="r", trials=2,
                          out=str(tmp_path / "studies"), weights="none", pruner="none",
                          cache_dir=str(tmp_path / "cache"), baselines=False, rank=False,
                          test_fraction=0.25)
    run_search(config)
    before = build_report(tmp_path / "studies" / "r", tmp_path / "a.html").read_text()
    assert 'id="exported"' not in before
    summary = export_trial(tmp_path / "studies" / "r", tmp_path / "x", ensemble=True)
    html = build_report(tmp_path / "studies" / "r", tmp_path / "b.html").read_text()
    assert 'id="exported"' in html and "points against the recommendation's test score" in html
    assert f"{100 * summary['exported_test']['value']:.1f}%" in html
