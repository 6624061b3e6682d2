"""Greedy weight soups: never below their first ingredient on validation."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from tlsearch.soup import average_weights, greedy_soup


class _Linear:
    """A one-weight 'model': its score is how close w is to a target."""

    def __init__(self, w: float) -> None:
        self.w = [np.array([w], dtype=np.float32), np.array([7], dtype=np.int64)]

    def get_weights(self):
        return [a.copy() for a in self.w]

    def set_weights(self, weights):
        self.w = [a.copy() for a in weights]


def test_average_is_elementwise_and_keeps_integer_state():
    out = average_weights([[np.array([1.0, 3.0]), np.array([5])],
                           [np.array([3.0, 5.0]), np.array([9])]])
    np.testing.assert_allclose(out[0], [2.0, 4.0])
    assert out[1].tolist() == [5]


def test_uniform_soup_averages_every_same_shaped_candidate():
    from tlsearch.cli import Soup
    from tlsearch.soup import RECIPES, uniform_soup

    assert [s.value for s in Soup] == ["none", *RECIPES]

    class Other(_Linear):  # another architecture: never averaged in
        def get_weights(self):
            return [np.zeros(2, dtype=np.float32)]

    models = {1: _Linear(0.0), 2: _Linear(2.0), 3: _Linear(10.0), 4: Other(0.0)}

    def score(m):
        return -abs(float(m.get_weights()[0][0]) - 1.0)

    start = models[1]
    soup = uniform_soup(start, [(1, 1, -1.0), (2, 2, -1.0), (3, 3, -9.0), (4, 4, 0.0)],
                        score, lambda key: models[key])
    assert soup.ingredients == (1, 2, 3) and soup.recipe == "uniform"
    assert float(start.get_weights()[0][0]) == 4.0  # (0 + 2 + 10) / 3, even though it hurts
    assert soup.val_score == -3.0 < soup.first_val_score == -1.0
    alone = _Linear(0.0)
    one = uniform_soup(alone, [(1, 1, -1.0)], score, lambda key: models[key])
    assert one.ingredients == (1,) and one.val_score == one.first_val_score


def test_greedy_soup_keeps_only_ingredients_that_help():
    models = {1: _Linear(0.0), 2: _Linear(2.0), 3: _Linear(10.0)}

    def score(m):
        return -abs(float(m.get_weights()[0][0]) - 1.0)  # best at w = 1

    start = models[1]
    soup = greedy_soup(start, [(1, 1, -1.0), (2, 2, -1.0), (3, 3, -9.0)], score,
                       lambda key: models[key])
    assert soup.ingredients == (1, 2)  # 0 and 2 average to the target; 10 would hurt
    assert soup.val_score == 0.0 >= soup.first_val_score
    assert float(start.get_weights()[0][0]) == 1.0
    alone = _Linear(0.0)
    one = greedy_soup(alone, [(1, 1, -1.0)], score, lambda key: models[key])
    assert one.ingredients == (1,) and float(alone.get_weights()[0][0]) == 0.0


def test_export_soup_through_the_cli(study_copy, tmp_path):
    """A soup of one ingredient is that trial's model; a soup never scores below it."""
    from tlsearch.cli import app
    from tlsearch.data import decode_image
    from tlsearch.export import load_model_safely

    studies, data = study_copy
    runner = CliRunner()
    studies = str(studies)
    # plain: the trial alone (not averaged with a kept head-only trial on its backbone).
    for name, extra in (("plain", ["--no-blend-floor"]), ("soup", ["--soup", "greedy"]),
                        ("uniform", ["--soup", "uniform"])):
        done = runner.invoke(app, ["export", "s", "--out", str(tmp_path / name), "--studies",
                                   studies, "--no-calibrate", "--no-tta", *extra])
        assert done.exit_code == 0, done.output
    soup = json.loads((tmp_path / "soup" / "export.json").read_text())["soup"]
    assert soup["val_score"] >= soup["first_val_score"] and soup["recipe"] == "greedy"
    assert "Weights:" in (tmp_path / "soup" / "MODEL_CARD.md").read_text()
    # The uniform soup averages every kept model with the architecture, chosen or not.
    uniform = json.loads((tmp_path / "uniform" / "export.json").read_text())["soup"]
    assert uniform["recipe"] == "uniform"
    assert set(soup["ingredients"]) <= set(uniform["ingredients"])
    assert "uniform soup" in (tmp_path / "uniform" / "MODEL_CARD.md").read_text()
    bad = runner.invoke(app, ["export", "s", "--out", str(tmp_path / "bad"), "--studies",
                              studies, "--soup", "average"])
    assert bad.exit_code == 2 and "average" in bad.output
    x = np.stack([decode_image(p, 32) for p in sorted((data / "red").glob("*.png"))[:6]])
    plain = np.asarray(load_model_safely(tmp_path / "plain" / "model.keras")(
        x.astype("f4"), training=False))
    souped = np.asarray(load_model_safely(tmp_path / "soup" / "model.keras")(
        x.astype("f4"), training=False))
    if soup["ingredients"] == soup["ingredients"][:1]:
        np.testing.assert_allclose(souped, plain, atol=1e-6)
    else:
        assert not np.allclose(souped, plain)


def test_batchnorm_statistics_are_re_estimated_under_the_soups_weights():
    """Averaged BN statistics are not the soup's: after re-estimation each BN layer's
    moving mean and variance are its inputs' over the images, nested models included."""
    import keras

    from tlsearch.soup import batchnorm_layers, reestimate_batchnorm

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.BatchNormalization(name="bn")], name="inner")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    bn = batchnorm_layers(model)[0]
    bn.trainable = False  # as a frozen backbone's BN: still re-estimated, then restored
    bn.moving_mean.assign(np.full(3, 9.0, dtype="float32"))
    x = np.random.default_rng(0).normal(2.0, 3.0, (150, 4)).astype("float32")
    reestimate_batchnorm(model, x, batch_size=64)
    h = inner.get_layer("d")(x).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(0), rtol=1e-4, atol=1e-4)
    # Per-batch variances averaged: close to, not exactly, the pooled variance.
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(0), rtol=0.1)
    assert bn.trainable is False and bn.momentum == 0.99


def test_a_soup_refreshes_statistics_only_where_an_ingredient_adapted_them():
    seen = []

    class M:
        def __init__(self, w):
            self.w = [np.array(w, dtype=np.float32)]

        def get_weights(self):
            return self.w

        def set_weights(self, w):
            self.w = w

    models = {1: M([1.0]), 2: M([3.0])}
    start = M([1.0])
    soup = greedy_soup(start, [(1, 1, 0.0), (2, 2, 0.0)], lambda m: float(m.w[0][0]),
                       lambda key: models[key], refresh=lambda m, n: seen.append(n))
    assert soup.ingredients == (1, 2) and seen == [(1, 2), (1, 2)]  # scored, then final


def test_greedy_average_adds_only_what_raises_the_score():
    from tlsearch.soup import greedy_average

    def score(weights, ids):  # closer to 1.0 is better
        return -abs(float(weights[0][0]) - 1.0)

    first = (0, [np.array([0.0])], score([np.array([0.0])], (0,)))
    ids, average, best, tried = greedy_average(
        first, [(1, [np.array([2.0])]), (2, [np.array([-4.0])]), (3, [np.array([1.0])])], score)
    assert ids == (0, 1) and average[0][0] == 1.0 and best == 0.0
    assert [n for n, _ in tried] == [1, 2, 3]
