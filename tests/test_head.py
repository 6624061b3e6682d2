"""The head's starting point: a standardized, converged linear solve that never loses
to scikit-learn's StandardScaler + LogisticRegression on the same frozen features."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch import backbones as B
from tlsearch.head import C_GRID, DEFAULT_C, choose_c, solve_linear_head
from tlsearch.strategy import Strategy
from tlsearch.train import run_trial


def tiny_scaled_cnn(include_top=False, weights=None, input_shape=(32, 32, 3)):
    """tiny_cnn whose features are 1e-4 of their size: what trips an unscaled head."""
    import keras

    base = B.tiny_cnn(input_shape=input_shape, weights=weights)
    scaled = keras.layers.Rescaling(1e-4, name="block3_scale")(base.output)
    return keras.Model(base.input, scaled, name="tiny_scaled")


@pytest.fixture(scope="module", autouse=True)
def tiny_scaled_spec():
    spec = B.BackboneSpec(
        name="tiny_scaled", constructor="tests.test_head.tiny_scaled_cnn", family="tf",
        default_size=32, min_size=16, params=19_768, gflops=0.001, n_blocks=3,
        block_regex=r"^(block\d+)_", imagenet_file=None, test_only=True)
    B.register(spec, replace=True)
    yield spec


def _head_only(**kw) -> Strategy:
    base = dict(backbone="tiny_scaled", image_size=32, weights="none", head_epochs=2,
                head_lr=1e-3, batch_size=16, head_dropout=0.0, seed=1)
    base.update(kw)
    return Strategy(**base)


def _sklearn_probe(trial_data) -> float:
    """StandardScaler + LogisticRegression on the same pooled frozen features."""
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    backbone = B.build_backbone(B.get_spec("tiny_scaled"), 32, "none", seed=1)
    pooled = keras.Sequential([keras.layers.Rescaling(1 / 127.5, -1), backbone,
                               keras.layers.GlobalAveragePooling2D()])
    x_train = pooled.predict(trial_data.images("train", 32).astype("float32"), verbose=0)
    x_val = pooled.predict(trial_data.images("val", 32).astype("float32"), verbose=0)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    probe.fit(x_train, trial_data.labels("train"))
    return balanced_accuracy_score(trial_data.labels("val"), probe.predict(x_val)), x_train


def _sklearn_probe_predictions(trial_data) -> np.ndarray:
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    backbone = B.build_backbone(B.get_spec("tiny_scaled"), 32, "none", seed=1)
    pooled = keras.Sequential([keras.layers.Rescaling(1 / 127.5, -1), backbone,
                               keras.layers.GlobalAveragePooling2D()])
    x_train, x_val = (pooled.predict(trial_data.images(part, 32).astype("float32"), verbose=0)
                      for part in ("train", "val"))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return probe.fit(x_train, trial_data.labels("train")).predict_proba(x_val)


def test_the_probe_head_is_scikit_learns_default_probe_and_trains_nothing_after(trial_data):
    """`head_init: probe` (the linear_probe baseline, the floor check) is exactly
    StandardScaler + LogisticRegression at C = 1: the floor a reviewer fits by hand."""
    result = run_trial(_head_only(head_init="probe"), trial_data)
    expected = _sklearn_probe_predictions(trial_data)
    assert result.extra["head_solve"]["C"] == DEFAULT_C
    assert result.history == () and result.metrics["best_step"] == 0  # no SGD epochs
    np.testing.assert_allclose(result.val_probabilities, expected, atol=2e-3)
    assert (result.val_probabilities.argmax(1) == expected.argmax(1)).all()
    with pytest.raises(ValueError, match="probe"):
        _head_only(head_init="probe", head_hidden_units=8)


def test_the_solve_never_loses_to_the_sklearn_probe_where_the_old_head_fails(trial_data):
    probe, x_train = _sklearn_probe(trial_data)
    assert np.abs(x_train).mean() < 1e-3  # the features really are tiny
    solved = run_trial(_head_only(), trial_data)
    old = run_trial(_head_only(head_init="random"), trial_data)
    assert solved.objective >= probe - 1e-9, (solved.objective, probe)
    assert old.objective < probe - 0.2, (old.objective, probe)  # what issue #24 measured
    assert solved.extra["head_solve"]["C"] in (0.01, 0.1, 1.0, 10.0)


def test_fine_tuning_starts_from_the_solve_and_keeps_it_unless_sgd_wins(trial_data):
    probe, _ = _sklearn_probe(trial_data)
    result = run_trial(_head_only(unfreeze_blocks=1, finetune_epochs=1, head_lr=5.0,
                                  optimizer="sgd"), trial_data)
    # An absurd head LR wrecks every SGD epoch: the trial keeps its step-0 solve.
    assert result.objective >= probe - 1e-9
    assert result.metrics["best_step"] in (0, 1, 2, 3)


def test_exported_probabilities_equal_the_engine_s(trial_data, tmp_path):
    import keras

    result = run_trial(_head_only(), trial_data)
    path = tmp_path / "m.keras"
    result.model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    images = trial_data.images("val", 32).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), result.val_probabilities,
                               atol=1e-5)
    norm = loaded.get_layer("head").get_layer("head_norm")
    variance = np.asarray(norm.moving_variance)
    assert 0 < float(variance.max()) < 1e-6  # tiny features' own statistics


def test_features_of_any_scale_are_standardized(trial_data):
    """Random-init EfficientNet-Lite features are ~1e-12: standardized, they still carry
    what a logistic regression needs (a 1e-7 floor on the deviation would erase them)."""
    from tlsearch.head import standard_scale

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 3)) * 1e-12
    assert np.allclose(standard_scale(x, x.mean(0)), x.std(0))
    constant = np.full((50, 2), 6.0)
    assert (standard_scale(constant, constant.mean(0)) == 1.0).all()  # centred only
    y = (x[:, 0] > 0).astype(int)
    head = solve_linear_head(x, y, x, y, 2, balanced=False)
    assert head.val_score > 0.95


def test_solve_is_balanced_when_asked_and_cached():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (90, 4)), rng.normal(0.6, 1, (10, 4))])
    y = np.array([0] * 90 + [1] * 10)
    plain = solve_linear_head(x, y, x, y, 2, balanced=False)
    balanced = solve_linear_head(x, y, x, y, 2, balanced=True)
    assert balanced.val_score >= plain.val_score
    assert solve_linear_head(x, y, x, y, 2, balanced=True) is balanced  # cached
    # A class missing from training gets a bias that keeps it out of every prediction.
    three = solve_linear_head(x, y, x, y, 3, balanced=False)
    assert three.kernel.shape == (4, 3) and three.bias[2] < -10


def test_a_tie_in_validation_score_goes_to_the_lower_log_loss():
    # Separable data: every C scores 1.0 on validation, so the score cannot choose; the
    # weakest regularisation gives the most confident (lowest log-loss) correct fit.
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-3, 1, (40, 3)), rng.normal(3, 1, (40, 3))])
    y = np.array([0] * 40 + [1] * 40)
    head = solve_linear_head(x, y, x + 0.01, y, 2, balanced=False, rule="best")
    assert head.val_score == 1.0
    assert head.C == max(C_GRID)
    # The default rule keeps scikit-learn's C = 1 when nothing beats it beyond noise.
    assert solve_linear_head(x, y, x + 0.01, y, 2, balanced=False).C == DEFAULT_C


def test_the_one_standard_error_rule_moves_from_c_1_only_on_evidence():
    # 100 validation images: the standard error at 0.80 is 0.04.
    assert choose_c({0.01: (0.83, -0.5), 1.0: (0.80, -0.4), 10.0: (0.81, -0.3)}, 100) == 1.0
    assert choose_c({0.01: (0.90, -0.5), 1.0: (0.80, -0.4), 10.0: (0.81, -0.3)}, 100) == 0.01
    # Within the band and C = 1 not in it: the nearest to 1, then the better score.
    assert choose_c({0.01: (0.90, -0.5), 0.1: (0.88, -0.5), 10.0: (0.88, -0.4)}, 100) == 10.0


@pytest.mark.parametrize("balanced", [False, True])
def test_the_solve_on_the_training_rows_span_is_the_full_dimensional_fit(balanced):
    """Fewer images than dimensions: the solve fits in the span of the training rows
    (r <= n coordinates, not d) and is still scikit-learn's model on all d of them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.utils.class_weight import compute_sample_weight

    from tlsearch.head import _row_space

    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], [30, 15, 15])
    x = rng.normal(0, 1, (60, 300)) + 0.4 * np.eye(3)[y] @ rng.normal(0, 1, (3, 300))
    xv = rng.normal(0, 1, (30, 300))
    head = solve_linear_head(x, y, xv, y[:30], 3, balanced=balanced, c_grid=(1.0,))
    z = (x - head.mean) / np.sqrt(head.variance)
    full = LogisticRegression(C=1.0, tol=1e-10, max_iter=20_000).fit(
        z, y, sample_weight=compute_sample_weight("balanced", y) if balanced else None)
    zv = (xv - head.mean) / np.sqrt(head.variance)
    assert np.abs(zv @ head.kernel + head.bias - full.decision_function(zv)).max() < 1e-2
    basis = _row_space(z)
    assert basis.shape == (300, 60)
    assert np.allclose(basis.T @ basis, np.eye(60))
    assert np.allclose(z @ basis @ basis.T, z)  # every training row is in its span
    assert _row_space(z[:, :20]) is None  # more images than dimensions: used as they are
