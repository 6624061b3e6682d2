"""LogME against a direct evidence computation, and backbone ranking on the tiny backbone."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.rank import _svd, logme, logme_evidence, logme_fit, rank_backbones


def test_separable_features_score_higher_than_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(0, 3, (4, 16))
    separable = centres[labels] + rng.normal(0, 1, (200, 16))
    noise = rng.normal(0, 1, (200, 16))
    assert logme(separable, labels) > logme(noise, labels) + 0.5


def test_evidence_equals_the_gaussian_marginal_likelihood():
    """At any (alpha, beta) the SVD formula is log N(y | 0, F F^T / alpha + I / beta) / n,
    and the fixed point is a maximum of it."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    n, d = 30, 5
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) + rng.normal(0, 0.5, n) > 0).astype(float)
    u, sigma, _, _ = _svd(f)
    x2, y2 = (u.T @ y) ** 2, float(y @ y)

    def direct(alpha: float, beta: float) -> float:
        cov = f @ f.T / alpha + np.eye(n) / beta
        return multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y) / n

    for alpha, beta in [(1.0, 1.0), (0.3, 4.0), (5.0, 0.7)]:
        assert logme_evidence(sigma, x2, y2, n, d, alpha, beta) == pytest.approx(
            direct(alpha, beta), abs=1e-9)
    alpha, beta = logme_fit(sigma, x2, y2, n)
    best = logme_evidence(sigma, x2, y2, n, d, alpha, beta)
    for a, b in [(alpha * 2, beta), (alpha / 2, beta), (alpha, beta * 2), (alpha, beta / 2)]:
        assert best >= logme_evidence(sigma, x2, y2, n, d, a, b) - 1e-6


def test_wide_features_are_handled():
    """More feature dimensions than samples (d > n), as with big backbones on small data."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 5)
    score = logme(rng.normal(size=(15, 64)), labels)
    assert np.isfinite(score)


def test_rank_backbones_scores_and_fills_the_cache(trial_data, tmp_path):
    from tlsearch.features import FeatureCache
    from tlsearch.strategy import Strategy
    from tlsearch.train import run_trial

    cache = FeatureCache(tmp_path / "fc")
    rows = rank_backbones([("tiny_cnn", 32, "none"), ("tiny_cnn", 16, "none")], trial_data,
                          cache, seed=0)
    assert [r.key for r in rows] != [] and {r.key for r in rows} == {"tiny_cnn@32", "tiny_cnn@16"}
    assert rows[0].probe_balanced_accuracy >= rows[1].probe_balanced_accuracy  # the default
    assert all(np.isfinite(r.logme) and 0 <= r.probe_balanced_accuracy <= 1 for r in rows)
    assert not any(r.cache_hit for r in rows)
    # A head-only trial of the same backbone now trains without a prefix pass.
    result = run_trial(Strategy(backbone="tiny_cnn", image_size=32, weights="none",
                                unfreeze_blocks=0, head_epochs=1, seed=0), trial_data,
                       feature_cache=cache)
    assert result.cache == {"hits": 2, "misses": 0}


def test_rank_command_prints_the_ranking(colour_data, tmp_path):
    import json

    from typer.testing import CliRunner

    from tests.conftest import TINY_SPACE
    from tlsearch.cli import app

    space = tmp_path / "two.yaml"
    space.write_text(TINY_SPACE.format(head_epochs=1, finetune_epochs=1)
                     .replace("tiny_cnn: [32]", "tiny_cnn: [32, 48]"))
    base = ["rank", str(colour_data), "--space", str(space), "--weights", "none",
            "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, base + ["--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["key"] for r in rows] and {r["key"] for r in rows} == {"tiny_cnn@32",
                                                                      "tiny_cnn@48"}
    assert all({"knn", "hscore", "size"} <= set(r) for r in rows)
    table = CliRunner().invoke(app, base)
    assert table.exit_code == 0 and "LogME" in table.output and "k-NN" in table.output
    by_size = json.loads(CliRunner().invoke(app, base + ["--json", "--ranker", "size"]).stdout)
    assert [r["key"] for r in by_size] == ["tiny_cnn@48", "tiny_cnn@32"]  # more compute first
    bad = CliRunner().invoke(app, base[:3] + ["--space", "nope"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_rankers_see_class_structure_and_agree_with_outcomes():
    from tlsearch.cli import Ranker
    from tlsearch.rank import RANKERS, h_score, knn_accuracy, ranker_agreement, sfda

    assert [r.value for r in Ranker] == list(RANKERS)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    separable = rng.normal(size=(60, 8)) + 4 * np.eye(3, 8)[labels]
    noise = rng.normal(size=(60, 8))
    assert knn_accuracy(separable, labels) > 0.9 > 0.6 > knn_accuracy(noise, labels)
    assert h_score(separable, labels) > 2 * h_score(noise, labels)
    # SFDA is a mean own-class probability: near 1 when separable, near chance for noise,
    # and defined when there are more dimensions than images (shrinkage keeps it solvable).
    assert sfda(separable, labels) > 0.9 and sfda(noise, labels) < 0.7
    wide = rng.normal(size=(30, 100)) + 3 * np.eye(3, 100)[labels[::2]]
    assert 0.0 <= sfda(wide, labels[::2]) <= 1.0
    rows = [{"key": k, "logme": v, "knn": v, "hscore": v, "sfda": v,
             "probe_balanced_accuracy": v,
             "size": -v} for k, v in (("a@1", 3.0), ("b@1", 2.0), ("c@1", 1.0))]
    agreement = ranker_agreement(rows, {"a@1": 0.9, "b@1": 0.8, "c@1": 0.5})
    assert agreement["logme"]["tau"] == pytest.approx(1.0) and agreement["logme"]["regret"] == 0.0
    assert agreement["size"]["tau"] == pytest.approx(-1.0)
    assert agreement["size"]["regret"] == 0.9 - 0.5
