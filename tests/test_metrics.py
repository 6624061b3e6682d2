"""NumPy scores against scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest

from tlsearch.metrics import compute_metrics, epoch_scores


@pytest.mark.parametrize("k", [2, 5])
def test_epoch_scores_are_compute_metrics_numbers(k):
    rng = np.random.default_rng(k)
    for _ in range(20):
        y = rng.integers(0, k, 40)
        y[:2] = 0  # a class may also be missing from the predictions or the labels
        probs = rng.dirichlet(np.ones(k), 40)
        probs[0] = 0.0  # an all-zero row: clipped and renormalised, as scikit-learn sees it
        probs[0, 1] = 1.0
        full = compute_metrics(y, probs, [str(i) for i in range(k)])
        for metric in ("balanced_accuracy", "accuracy", "macro_f1"):
            fast = epoch_scores(y, probs, metric)
            for name in ("balanced_accuracy", "accuracy", metric, "log_loss"):
                assert fast[name] == pytest.approx(full[name], rel=1e-9, abs=1e-12), name
