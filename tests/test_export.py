"""Export and predict: one pipeline from validation to a single image, safe loading."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_SPACE, write_colour_dataset
from tlsearch.cli import app
from tlsearch.search import SearchConfig, run_search


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    data = write_colour_dataset(tmp / "data", {"red": 15, "green": 15, "blue": 15})
    space = tmp / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="e",
                          out=str(tmp / "studies"), trials=2, weights="none",
                          cache_dir=str(tmp / "cache"), pruner="none")
    run_search(config)
    runner = CliRunner()
    r = runner.invoke(app, ["export", "e", "--out", str(tmp / "model"), "--studies",
                            str(tmp / "studies")])
    assert r.exit_code == 0, r.output
    return tmp, data


def test_single_image_predictions_equal_validation_predictions(searched):
    """The seeds' complaint, tested: predict one file at a time == what validation saw."""
    tmp, data = searched
    export = json.loads((tmp / "model" / "export.json").read_text())
    from tlsearch.calibration import calibrate

    # The export is temperature-scaled: what validation saw, divided by the same T (where
    # the recommendation is blended with its floor probe: each member's by its own T,
    # then by the common one, then averaged).
    members = export["ensemble"]["members"] if export["blend_floor"] else [export["trial"]]
    own = export["member_temperatures"] or [1.0]
    recorded = np.mean([calibrate(calibrate(np.asarray(json.loads(
        (tmp / "studies" / "e" / "trials" / f"{n:04d}" / "result.json").read_text())
        ["val_probabilities"]), t), export["temperature"])
        for n, t in zip(members, own, strict=True)], axis=0)
    split = json.loads((tmp / "studies" / "e" / "split.json").read_text())
    runner = CliRunner()
    for (path, _), expected in zip(split["val"], recorded, strict=True):
        r = runner.invoke(app, ["predict", str(tmp / "model"), str(data / path), "--format",
                                "json", "--top-k", "3", "--batch-size", "1", "--no-tta"])
        assert r.exit_code == 0, r.output
        top = json.loads(r.stdout)[0]["top"]
        labels = json.loads((tmp / "model" / "labels.json").read_text())
        got = np.zeros(len(labels))
        for item in top:
            got[labels.index(item["label"])] = item["probability"]
        assert np.abs(got - expected).max() < 1e-4
        assert got.argmax() == expected.argmax()


def test_export_folder_contract(searched):
    tmp, _ = searched
    out = tmp / "model"
    assert json.loads((out / "labels.json").read_text()) == ["blue", "green", "red"]
    assert json.loads((out / "strategy.json").read_text())["backbone"] == "tiny_cnn"
    card = (out / "MODEL_CARD.md").read_text()
    assert "safe_mode=True" in card and "0-255" in card
    import keras

    model = keras.models.load_model(out / "model.keras", safe_mode=True)  # plain Keras
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_predict_formats_and_bad_files(searched, fmt):
    tmp, data = searched
    bad = tmp / "bad_inputs"
    bad.mkdir(exist_ok=True)
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    r = CliRunner().invoke(app, ["predict", str(tmp / "model"), str(data / "red"), str(bad),
                                 "--format", fmt, "--top-k", "2"])
    assert r.exit_code == 0, r.output
    if fmt == "json":
        rows = json.loads(r.stdout)
        assert len(rows) == 17
        errors = {Path(x["path"]).name: x["error"] for x in rows if x["error"]}
        assert errors == {"empty.png": "zero_bytes", "text.jpg": "not_image"}
        assert all(len(x["top"]) == 2 for x in rows if not x["error"])
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(r.stdout)))
        assert rows[0][:4] == ["path", "error", "label1", "probability1"]
        assert len(rows) == 18
    else:
        assert "zero_bytes" in r.output and "red" in r.output


def test_unsafe_models_are_refused(tmp_path):
    """A Lambda layer or an unknown class: refused, and their code never runs."""
    import keras

    sentinel = tmp_path / "pwned"
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    bad = tmp_path / "lambda"
    bad.mkdir()
    keras.Model(inputs, outputs).save(bad / "model.keras")
    (bad / "labels.json").write_text('["a", "b"]')
    (bad / "strategy.json").write_text('{"image_size": 4}')
    r = CliRunner().invoke(app, ["predict", str(bad), str(tmp_path)])
    assert r.exit_code != 0 and "Lambda" in r.output and "Traceback" not in r.output

    @keras.saving.register_keras_serializable(package="evil")
    class Evil(keras.layers.Layer):
        def call(self, x):
            sentinel.write_text("ran")
            return x

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    inputs = keras.Input((4,))
    keras.Model(inputs, Evil()(inputs)).save(unknown / "model.keras")
    sentinel.unlink(missing_ok=True)
    keras.saving.get_custom_objects().clear()
    (unknown / "labels.json").write_text('["a", "b"]')
    (unknown / "strategy.json").write_text('{"image_size": 4}')
    r = CliRunner().invoke(app, ["predict", str(unknown), str(tmp_path)])
    assert r.exit_code != 0 and "refused" in r.output
    assert not sentinel.exists()


def test_export_errors_are_one_line(searched, tmp_path):
    tmp, _ = searched
    runner = CliRunner()
    r = runner.invoke(app, ["export", "nope", "--out", str(tmp_path / "m"), "--studies",
                            str(tmp / "studies")])
    assert r.exit_code != 0 and "no study" in r.output
    r = runner.invoke(app, ["export", "e", "--out", str(tmp_path / "m"), "--trial", "99",
                            "--studies", str(tmp / "studies")])
    assert r.exit_code != 0 and "not a completed trial" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path)])
    assert r.exit_code != 0 and "not an exported model folder" in r.output


def test_retrain_train_plus_val(searched, tmp_path):
    tmp, data = searched
    r = CliRunner().invoke(app, ["export", "e", "--out", str(tmp_path / "rt"), "--retrain",
                                 "train+val", "--studies", str(tmp / "studies")])
    assert r.exit_code == 0, r.output
    assert "train + validation" in json.loads((tmp_path / "rt" / "export.json").read_text())[
        "trained_on"]
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "rt"), str(data / "red" / "000.png"),
                                 "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["top"]


@pytest.mark.slow
def test_tflite_agrees(searched, tmp_path):
    tmp, _ = searched
    r = CliRunner().invoke(app, ["export", "e", "--out", str(tmp_path / "tfl"), "--tflite",
                                 "--studies", str(tmp / "studies")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "tfl" / "export.json").read_text())["tflite"]
    if "error" in report["model.tflite"]:
        pytest.skip(f"TFLite conversion unavailable: {report['model.tflite']['error']}")
    assert report["model.tflite"]["max_abs_diff"] < 1e-4
    assert report["model_dynamic_range.tflite"]["argmax_agreement"] >= 0.9
