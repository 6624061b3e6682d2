"""Rank backbones before training any: LogME on frozen features, plus a probe check.

LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021) is the log marginal likelihood ("evidence") of a Bayesian linear
model from frozen features to each one-hot label column, with the prior and noise
precisions (alpha, beta) fitted by the fixed-point iteration of MacKay's evidence
framework over one SVD of the features. Higher is better; it needs no training.

The features are the backbone's pooled outputs over the training split: the same frozen
pass a head-only trial runs, taken from (and left in) the frozen-prefix cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tlsearch.options import RANKERS

__all__ = ["RANKERS", "RankRow", "h_score", "knn_accuracy", "logme", "logme_evidence", "sfda",
           "logme_fit", "rank_backbones", "ranker_agreement"]

#: Fixed-point iterations; the paper's implementation converges in a handful.
MAX_ITERATIONS = 20
TOLERANCE = 1e-3


def _svd(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return u, s ** 2, n, d


def logme_evidence(sigma: np.ndarray, x2: np.ndarray, y2: float, n: int, d: int,
                   alpha: float, beta: float) -> float:
    """Per-sample log evidence of one target at given (alpha, beta), in SVD terms.

    `sigma` are the squared singular values of the features, `x2` the squared
    projections of the target on the left singular vectors, `y2` its squared norm.
    """
    denom = alpha + beta * sigma
    m2 = float(np.sum(beta ** 2 * sigma * x2 / denom ** 2))             # ||m||^2
    res2 = float(np.sum(x2 * (alpha / denom) ** 2) + (y2 - np.sum(x2)))  # ||F m - y||^2
    # log|alpha I + beta F^T F|: d - r directions have no singular value (just alpha).
    logdet = float(np.sum(np.log(denom)) + (d - len(sigma)) * math.log(alpha))
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
    return evidence / n


def logme_fit(sigma: np.ndarray, x2: np.ndarray, y2: float, n: int) -> tuple[float, float]:
    """(alpha, beta) maximising the evidence, by the fixed-point iteration."""
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITERATIONS):
        denom = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denom))
        m2 = float(np.sum(beta ** 2 * sigma * x2 / denom ** 2))
        res2 = float(np.sum(x2 * (alpha / denom) ** 2) + (y2 - np.sum(x2)))
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        done = abs(new_alpha / new_beta - alpha / beta) <= TOLERANCE * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of features (n, d) for integer labels: mean per-class evidence."""
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError("features must be (n, d) with one label per row")
    u, sigma, n, d = _svd(features)
    scores = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        x2 = (u.T @ y) ** 2
        y2 = float(y @ y)
        alpha, beta = logme_fit(sigma, x2, y2, n)
        scores.append(logme_evidence(sigma, x2, y2, n, d, alpha, beta))
    return float(np.mean(scores))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int = 5,
                 folds: int = 5) -> float:
    """Cross-validated balanced accuracy of a cosine k-NN on the training features: the
    plain estimator a 2025 survey of 23 transferability metrics (arXiv 2503.18528) found
    the most reliable."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    counts = np.bincount(labels)
    folds = int(max(2, min(folds, counts[counts > 0].min())))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(labels) - 1), metric="cosine")
    predicted = cross_val_predict(knn, features, labels, cv=cv)
    return float(balanced_accuracy_score(labels, predicted))


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Regularised H-score (Bao et al. 2019; Ibrahim et al., ICLR 2022): tr(cov(f)^-1
    cov(E[f|y])) with a Ledoit-Wolf shrunk feature covariance, on standardized features.

    Computed on the span of the rows: with the centred features' SVD U S V^T, the shrunk
    covariance (1-s) S^2/n + s mu I has eigenvalues (1-s) S^2/n + s mu along V and s mu
    off it, so the trace needs no d x d matrix (the same value as solving with
    `LedoitWolf().covariance_` to 1e-12, in 0.1 s instead of 0.85 at 393 x 1,280).
    """
    from sklearn.covariance import ledoit_wolf_shrinkage

    f = np.asarray(features, dtype=np.float64)
    f = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1.0)
    n, d = f.shape
    shrinkage = ledoit_wolf_shrinkage(f)
    off = shrinkage * float((f**2).sum()) / (n * d)  # s * trace(empirical cov) / d
    means = np.zeros_like(f)
    for c in np.unique(labels):
        means[labels == c] = f[labels == c].mean(0)
    _, sigma, vt = np.linalg.svd(f, full_matrices=False)
    along = means @ vt.T
    quad = float((along**2 / ((1 - shrinkage) * sigma**2 / n + off)).sum())
    if vt.shape[0] < d and off > 0:  # the directions no image spans
        quad += float((means**2).sum() - (along**2).sum()) / off
    return quad / n


def _fisher_probabilities(x: np.ndarray, y: np.ndarray, shrinkage: float | None
                          ) -> tuple[np.ndarray, float]:
    """Class probabilities of a regularised Fisher discriminant fitted on (x, y), and the
    shrinkage used: exp(-5 * largest within-class eigenvalue) unless given (SFDA's rule)."""
    from scipy import linalg
    from scipy.special import softmax

    n, d = x.shape
    k = int(y.max()) + 1
    priors = np.bincount(y, minlength=k) / n
    means = np.zeros((k, d))
    np.add.at(means, y, x)
    means /= np.maximum(np.bincount(y, minlength=k), 1)[:, None]
    within = np.zeros((d, d))
    for c in range(k):
        centred = x[y == c] - means[c]
        within += priors[c] * (centred.T @ centred) / max(len(centred), 1)
    if shrinkage is None:
        largest = float(linalg.eigvalsh(within, subset_by_index=[d - 1, d - 1])[0])
        shrinkage = max(float(np.exp(-5.0 * largest)), 1e-10)
    centred = x - x.mean(0)
    total = centred.T @ centred / n
    mu_w, mu_t = np.trace(within) / d, np.trace(total) / d
    while True:  # a rank-deficient scatter (fewer images than dimensions) needs more
        shrunk_w = (1 - shrinkage) * within + shrinkage * mu_w * np.eye(d)
        shrunk_t = (1 - shrinkage) * total + shrinkage * mu_t * np.eye(d)
        try:
            evals, evecs = linalg.eigh(shrunk_t - shrunk_w, shrunk_w)
            break
        except linalg.LinAlgError:
            if shrinkage >= 0.5:
                raise
            shrinkage = min(0.5, shrinkage * 10)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    intercept = -0.5 * np.einsum("kd,kd->k", means, coef) + np.log(np.maximum(priors, 1e-12))
    return softmax(x @ coef.T + intercept, axis=1), shrinkage


def sfda(features: np.ndarray, labels: np.ndarray) -> float:
    """SFDA (Shao et al., ECCV 2022): the mean probability a regularised Fisher
    discriminant gives each image's own class, after a "self-challenge" that moves each
    image toward the other classes' mean as far as the first discriminant was unsure of it
    (ConfMix). Higher transfers better."""
    x = np.asarray(features, dtype=np.float64)
    y = np.unique(labels, return_inverse=True)[1]
    k = int(y.max()) + 1
    if k < 2:
        return float("nan")
    from scipy.special import softmax

    first, shrinkage = _fisher_probabilities(x, y, None)
    own = softmax(first, axis=1)[np.arange(len(y)), y][:, None]  # softened, as in SFDA
    means = np.zeros((k, x.shape[1]))
    np.add.at(means, y, x)
    means /= np.bincount(y, minlength=k)[:, None]
    others = (means.sum(0) - means) / (k - 1)
    mixed = own * x + (1 - own) * others[y]
    second, _ = _fisher_probabilities(mixed, y, shrinkage)
    return float(np.mean(second[np.arange(len(y)), y]))


@dataclass(frozen=True)
class RankRow:
    """One backbone at one size, scored before any training (every ranker of RANKERS)."""

    backbone: str
    image_size: int
    weights: str
    logme: float
    probe_balanced_accuracy: float
    feature_dim: int
    seconds: float
    cache_hit: bool
    knn: float = float("nan")
    hscore: float = float("nan")
    sfda: float = float("nan")
    size: float = float("nan")

    def score(self, ranker: str) -> float:
        return self.probe_balanced_accuracy if ranker == "probe" else getattr(self, ranker)

    @property
    def key(self) -> str:
        return f"{self.backbone}@{self.image_size}"

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), key=self.key)


def _pooled(activations: np.ndarray) -> np.ndarray:
    a = np.asarray(activations, dtype=np.float32)
    return a.mean(axis=(1, 2)) if a.ndim == 4 else a.reshape(len(a), -1)


def _probe(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray) -> float:
    """Balanced accuracy of a standardised logistic regression on the pooled features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlsearch.head import one_blas_thread

    # A check on LogME, not a final score: 100 L-BFGS steps (a third of the time of 300).
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=100))
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train, y_train)
    return float(balanced_accuracy_score(y_val, probe.predict(val)))


def rank_backbones(pairs: list[tuple[str, int, str]], data: Any, cache: Any, *, seed: int = 0,
                   on_row: Any = None, ranker: str = "probe",
                   every: bool = False) -> list[RankRow]:
    """Score each (backbone, size, weights) with every ranker; best by `ranker` first.

    SFDA (two generalised eigenproblems in the feature dimension: about 5 s at 1,280
    dimensions on 2 cores) is computed only when it ranks, or with `every`.
    """
    from tlsearch.backbones import get_spec
    from tlsearch.features import frozen_features
    from tlsearch.model import build_transfer_model
    from tlsearch.strategy import Strategy

    y_train, y_val = data.labels("train"), data.labels("val")
    rows = []
    for backbone, size, weights in pairs:
        t0 = time.perf_counter()
        strategy = Strategy(backbone=backbone, image_size=size, weights=weights,
                            unfreeze_blocks=0, finetune_epochs=0, seed=seed)
        tm = build_transfer_model(strategy, len(data.classes), reuse_backbone=True)
        train, hit = frozen_features(tm, data, cache, "train", "clean")
        val, _ = frozen_features(tm, data, cache, "val", "clean", exact=True)
        f_train, f_val = _pooled(train), _pooled(val)
        scores = {"logme": logme(f_train, y_train),
                  "probe_balanced_accuracy": _probe(f_train, y_train, f_val, y_val),
                  "knn": knn_accuracy(f_train, y_train), "hscore": h_score(f_train, y_train),
                  "sfda": sfda(f_train, y_train) if every or ranker == "sfda"
                  else float("nan"),
                  "size": get_spec(backbone).cost(size)}
        row = RankRow(backbone=backbone, image_size=size, weights=weights,
                      feature_dim=int(f_train.shape[1]), seconds=time.perf_counter() - t0,
                      cache_hit=hit, **scores)
        rows.append(row)
        if on_row:
            on_row(row)
    if ranker not in RANKERS:
        raise ValueError(f"unknown ranker {ranker!r}; choose one of {', '.join(RANKERS)}")
    return sorted(rows, key=lambda r: r.score(ranker), reverse=True)


def ranker_agreement(rows: list[dict[str, Any]], outcome: dict[str, float]
                     ) -> dict[str, dict[str, float | None]]:
    """Per ranker, against the best validation score the search reached per pair: the
    weighted Kendall tau (top ranks weigh more; SciPy's hyperbolic weights) and the top-1
    regret (best outcome minus the outcome of the ranker's first choice)."""
    from scipy.stats import weightedtau

    scored = [r for r in rows if r["key"] in outcome]
    result: dict[str, dict[str, float | None]] = {}
    best = max(outcome[r["key"]] for r in scored) if scored else None
    for ranker in RANKERS:
        field = "probe_balanced_accuracy" if ranker == "probe" else ranker
        values = [(r.get(field), outcome[r["key"]]) for r in scored
                  if r.get(field) is not None and r.get(field) == r.get(field)]
        tau = None
        if len(values) >= 3:
            found = weightedtau([v for v, _ in values], [o for _, o in values]).statistic
            tau = None if found != found else float(found)
        regret = None
        if values and best is not None:
            regret = float(best - max(values, key=lambda v: v[0])[1])
        result[ranker] = {"tau": tau, "regret": regret, "pairs": len(values)}
    return result
