"""Temperature scaling: fitted on validation, carried inside the exported graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tlsearch.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 4-class model right 70% of the time but sure of itself."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), predicted] += 6.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


def test_temperature_fixes_overconfidence_and_never_changes_a_class():
    probs, labels = _overconfident(2000, 0)
    t = fit_temperature(probs, labels)
    assert t > 1.5  # over-confident: soften
    test_probs, test_labels = _overconfident(2000, 1)  # fitted on one set, judged on another
    after = calibrate(test_probs, t)
    assert (after.argmax(1) == test_probs.argmax(1)).all()
    before_ece = expected_calibration_error(test_probs, test_labels)
    after_ece = expected_calibration_error(after, test_labels)
    assert after_ece < before_ece / 2 and after_ece < 0.08
    np.testing.assert_allclose(calibrate(test_probs, 1.0), test_probs, atol=1e-12)


def test_ece_is_zero_for_a_perfectly_calibrated_bin_and_counts_every_image():
    probs = np.array([[0.75, 0.25]] * 4)
    labels = np.array([0, 0, 0, 1])  # 75% confident, 75% right
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    table = reliability(probs, labels)
    assert table.count == (4,) and table.accuracy == (0.75,)


def test_the_exported_model_is_softmax_of_logits_over_t(tmp_path):
    """The exported, calibrated model's probabilities equal softmax(logits / T) of the
    trial's own model, and its model card states T and the test ECE."""
    from tests.conftest import TINY_SPACE, write_colour_dataset
    from tlsearch.cli import app
    from tlsearch.data import decode_image
    from tlsearch.export import load_model_safely
    from tlsearch.search import SearchConfig, run_search

    data = write_colour_dataset(tmp_path / "data", {"red": 25, "green": 25, "blue": 25})
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=2, finetune_epochs=1))
    config = SearchConfig(data_dir=str(data), space=str(space), study="c", trials=1,
                          out=str(tmp_path / "studies"), weights="none", pruner="none",
                          cache_dir=str(tmp_path / "cache"), baselines=False, rank=False,
                          test_fraction=0.2)
    run_search(config)
    runner = CliRunner()
    studies = str(tmp_path / "studies")
    assert runner.invoke(app, ["status", "c", "--out", studies]).exit_code == 0
    from tlsearch.holdout import score_holdout
    from tlsearch.search import open_study

    record = score_holdout(open_study(config, create=False))
    calibration = record["scores"]["0"]["calibration"]
    for flag, name in (("--calibrate", "cal"), ("--no-calibrate", "raw")):
        done = runner.invoke(app, ["export", "c", "--out", str(tmp_path / name), "--studies",
                                   studies, flag, "--no-tta"])
        assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "cal" / "export.json").read_text())
    t = summary["temperature"]
    # The exported model measured on test is the calibrated trial the search measured.
    assert summary["exported_test"]["ece"] == pytest.approx(calibration["ece_after"], abs=1e-4)
    assert t == pytest.approx(calibration["temperature"])
    assert json.loads((tmp_path / "raw" / "export.json").read_text())["temperature"] is None
    x = np.stack([decode_image(p, 32) for p in sorted((data / "red").glob("*.png"))[:8]])
    raw = np.asarray(load_model_safely(tmp_path / "raw" / "model.keras")(
        x.astype("float32"), training=False))
    cal = np.asarray(load_model_safely(tmp_path / "cal" / "model.keras")(
        x.astype("float32"), training=False))
    np.testing.assert_allclose(cal, calibrate(raw, t), atol=1e-5)
    card = (tmp_path / "cal" / "MODEL_CARD.md").read_text()
    assert f"T = {t:.3f}" in card and "expected calibration error" in card
    # The report states the calibration and draws its reliability diagram.
    from tlsearch.report import build_report

    html = build_report(tmp_path / "studies" / "c", tmp_path / "c.html").read_text()
    assert "calibration error" in html and 'id="plot-calibration"' in html


def test_a_perfectly_separated_validation_set_leaves_the_probabilities_alone():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert fit_temperature(probs, np.array([0, 1, 0])) == 1.0
