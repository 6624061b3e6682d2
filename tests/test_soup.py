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


def test_export_soup_through_the_cli(tmp_path):
    """A soup of one ingredient is that trial's model; a soup never scores below it."""
    from tests.conftest import write_colour_dataset
    from tests.test_study import TINY_SPACE
    from tlsearch.cli import app
    from tlsearch.data import decode_image
    from tlsearch.export import load_model_safely
    from tlsearch.study import SearchConfig, run_search

    data = write_colour_dataset(tmp_path / "data", {"red": 15, "green": 15, "blue": 15})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="s", trials=3,
                          out=str(tmp_path / "studies"), weights="none", pruner="none",
                          cache_dir=str(tmp_path / "cache"), baselines=False, rank=False)
    run_search(config)
    runner = CliRunner()
    studies = str(tmp_path / "studies")
    for name, extra in (("plain", []), ("soup", ["--soup"])):
        done = runner.invoke(app, ["export", "s", "--out", str(tmp_path / name), "--studies",
                                   studies, "--no-calibrate", "--no-tta", *extra])
        assert done.exit_code == 0, done.output
    soup = json.loads((tmp_path / "soup" / "export.json").read_text())["soup"]
    assert soup["val_score"] >= soup["first_val_score"]
    assert "Weights:" in (tmp_path / "soup" / "MODEL_CARD.md").read_text()
    x = np.stack([decode_image(p, 32) for p in sorted((data / "red").glob("*.png"))[:6]])
    plain = np.asarray(load_model_safely(tmp_path / "plain" / "model.keras")(
        x.astype("f4"), training=False))
    souped = np.asarray(load_model_safely(tmp_path / "soup" / "model.keras")(
        x.astype("f4"), training=False))
    if soup["ingredients"] == soup["ingredients"][:1]:
        np.testing.assert_allclose(souped, plain, atol=1e-6)
    else:
        assert not np.allclose(souped, plain)
