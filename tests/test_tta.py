"""Test-time augmentation: fixed views, averaged, adopted only when validation says so."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from tlsearch.tta import VIEWS, choose_views, tta_probabilities, views_for


class _Model:
    """Probabilities from the mean brightness of the left half: flips change them."""

    def __call__(self, x, training=False):
        left = np.asarray(x, dtype=np.float64)[:, :, : x.shape[2] // 2].mean(axis=(1, 2, 3))
        p = 1 / (1 + np.exp(-(left - 128) / 20))
        return np.stack([1 - p, p], axis=1)


def _images(n: int = 6, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_the_identity_view_is_plain_prediction_and_views_average():
    x = _images()
    model = _Model()
    np.testing.assert_allclose(tta_probabilities(model, x, ["identity"]), model(x))
    both = tta_probabilities(model, x, ["identity", "hflip"])
    np.testing.assert_allclose(both, (model(x) + model(x[:, :, ::-1])) / 2)
    assert VIEWS["zoom"](x).shape == x.shape
    assert views_for("none") == ("identity",) and "hflip" in views_for("light")


def test_views_are_adopted_only_when_they_win_on_validation():
    x, y = _images(8), np.array([0, 1] * 4)
    calls = []

    def score(labels, probs):
        calls.append(probs)
        return 0.9 if len(calls) == 2 else 0.8  # the second call scores the views

    chosen = choose_views(_Model(), x, y, "light", score)
    assert chosen["views"] == ["identity", "hflip", "zoom"] and chosen["val_tta"] == 0.9
    calls.clear()
    lost = choose_views(_Model(), x, y, "light", lambda labels, probs: 0.8)
    assert lost["views"] == ["identity"]  # a tie keeps one view
    assert choose_views(_Model(), x, y, "none", lambda labels, p: 0.5)["val_tta"] is None


def test_export_records_the_decision_and_predict_applies_it(tmp_path):
    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.cli import app
    from tlsearch.data import decode_image
    from tlsearch.predict import load_exported
    from tlsearch.search import SearchConfig, run_search

    data = write_colour_dataset(tmp_path / "data", {"red": 15, "green": 15})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1)
                     + "augmentation: light\n")
    config = SearchConfig(data_dir=str(data), space=str(space), study="t", trials=1,
                          out=str(tmp_path / "studies"), weights="none", pruner="none",
                          cache_dir=str(tmp_path / "cache"), baselines=False, rank=False)
    run_search(config)
    runner = CliRunner()
    done = runner.invoke(app, ["export", "t", "--out", str(tmp_path / "m"), "--studies",
                               str(tmp_path / "studies")])
    assert done.exit_code == 0, done.output
    tta = json.loads((tmp_path / "m" / "export.json").read_text())["tta"]
    assert tta["candidates"] == ["identity", "hflip", "zoom"]
    assert (tta["views"] == tta["candidates"]) == (tta["val_tta"] > tta["val_plain"])
    assert "Test-time augmentation" in (tmp_path / "m" / "MODEL_CARD.md").read_text()
    # Force the views on, and predict must average exactly them.
    export = json.loads((tmp_path / "m" / "export.json").read_text())
    export["tta"]["views"] = ["identity", "hflip"]
    (tmp_path / "m" / "export.json").write_text(json.dumps(export))
    image = sorted((data / "red").glob("*.png"))[0]
    out = runner.invoke(app, ["predict", str(tmp_path / "m"), str(image), "--format", "json",
                              "--top-k", "2"])
    assert out.exit_code == 0, out.output
    got = {t["label"]: t["probability"] for t in json.loads(out.stdout)[0]["top"]}
    exported = load_exported(tmp_path / "m")
    x = decode_image(image, 32)[None].astype(np.float32)
    # training=False: the model holds the strategy's random augmentation layers, which a
    # call without it would apply (predict always passes it).
    expected = (np.asarray(exported.model(x, training=False))
                + np.asarray(exported.model(x[:, :, ::-1], training=False))) / 2
    for i, label in enumerate(exported.labels):
        assert abs(got[label] - expected[0, i]) < 1e-5
    one = runner.invoke(app, ["predict", str(tmp_path / "m"), str(image), "--format", "json",
                              "--no-tta"])
    single = {t["label"]: t["probability"] for t in json.loads(one.stdout)[0]["top"]}
    plain = np.asarray(exported.model(x, training=False))[0]
    assert abs(single[exported.labels[0]] - plain[0]) < 1e-5
