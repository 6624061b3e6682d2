"""The head's starting point: standardized features and a converged linear classifier.

Pooled features of a pretrained network can have any scale and spread (mean |f| of
0.07 with very uneven dimensions is common): a Dense head trained a few epochs with
Adam fits them badly, and every fine-tuning trial would start from that half-fitted
head. So each trial's head starts from a solve instead (LP-FT, Kumar et al., ICLR
2022): the head's standardization layer takes the mean and variance of the training
features (any scale: see `standard_scale`), and its classifier is scikit-learn's
multinomial `LogisticRegression` (L-BFGS, class-balanced sample weights where the
strategy fights imbalance) on the standardized features, with the regularisation
strength chosen on validation from a small grid by the one-standard-error rule:
scikit-learn's C = 1 unless another C beats it by more than the noise of a validation
split of a hundred images (`choose_c`). Only training and validation images are used.

The grid is walked from the strongest regularisation up, each fit warm-started from
the last, with at most `MAX_ITER` steps to `TOL`: on pretrained features this
converges in tens of steps; on features that carry no signal (a random backbone) a
solve to 1e-6 took 80 s on 2 cores for the same validation scores (measured on the
textures demo, Lite0@96: 0.295/0.297/0.331/0.348 either way, 36 s bounded).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["C_GRID", "DEFAULT_C", "MAX_ITER", "TOL", "LinearHead", "choose_c",
           "one_blas_thread", "solve_linear_head"]

#: Inverse L2 strengths tried on validation.
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: Kept unless another C beats it on validation by more than one standard error:
#: scikit-learn's default, on standardized features a strong choice at any size measured
#: (benchmarks/RESULTS-head-floor.md), where picking the best of four C on a hundred
#: validation images mostly picks noise.
DEFAULT_C = 1.0
MAX_ITER = 500
TOL = 1e-5
_CACHE: OrderedDict[str, LinearHead] = OrderedDict()
_CACHE_SIZE = 16


@dataclass(frozen=True)
class LinearHead:
    """Standardization and a linear classifier, in the head's own layout."""

    mean: np.ndarray  # (d,)
    variance: np.ndarray  # (d,), the square of `standard_scale`
    kernel: np.ndarray  # (d, k), on standardized features
    bias: np.ndarray  # (k,)
    C: float
    val_score: float  # the chosen C's validation score under `metric`


def standard_scale(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per-feature standard deviation to divide by, at any scale of the features.

    A feature that does not vary (relative to its size, or below 1e-18, where float32
    variances underflow) is divided by 1: only centred, so that rounding noise is never
    blown up into signal.
    """
    std = x.std(axis=0)
    varies = (std > 1e-6 * np.abs(mean)) & (std > 1e-18)
    return np.where(varies, std, 1.0)


def _row_space(x: np.ndarray) -> np.ndarray | None:
    """An orthonormal basis (d, n) of a space holding every training row of `x` (n, d),
    or None where the features are used as they are.

    An L2-regularised linear model's weights lie in the span of the centred training
    rows (its loss gradient is a weighted sum of them, and the unpenalised intercept
    makes the weights sum to zero): fitted on these n coordinates instead of d, it is the
    same model at a fraction of the cost per solver step (120-465 training images on
    1,280 dimensions in the demos). L-BFGS is invariant to an orthonormal change of
    coordinates, so the steps are the same steps (only its stopping test, on the largest
    gradient coordinate, is not). With more than half as many images as dimensions there
    is none: there the cut is small and the steps the same or more (393-465 images
    on the bundled backbone's 576 dimensions: no faster, benchmarks/RESULTS-head-floor.md).
    A reduced QR: a third of an SVD's time, and a basis one larger than the centred rows'
    rank changes nothing.
    """
    n, d = x.shape
    return None if 2 * n > d else np.linalg.qr(x.T)[0]


def one_blas_thread() -> threadpool_limits:
    """A context with one BLAS thread, for the small solves of the head and its probes.

    On products of a few hundred rows by n or d columns and k classes OpenBLAS's thread
    hand-offs cost more than the arithmetic: 10 ms per L-BFGS step on two threads against
    0.7 on one (textures demo, Lite0@96, 2 cores: the four-C walk 1.6 s against 0.1, the
    ranking probe 0.28 s against 0.06; benchmarks/RESULTS-head-floor.md).
    """
    return threadpool_limits(1, user_api="blas")


def _project(x: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    return x if basis is None else x @ basis


def _score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn import metrics as M

    if metric == "accuracy":
        return float(M.accuracy_score(y, pred))
    if metric == "macro_f1":
        return float(M.f1_score(y, pred, average="macro", zero_division=0))
    return float(M.balanced_accuracy_score(y, pred))


def _log_loss(model, x: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true class (classes unseen in training skipped)."""
    proba = model.predict_proba(x)
    column = np.searchsorted(model.classes_, y)
    seen = (column < len(model.classes_)) & (model.classes_[np.minimum(
        column, len(model.classes_) - 1)] == y)
    if not seen.any():
        return 0.0
    p = proba[np.flatnonzero(seen), column[seen]]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def _walk(xt: np.ndarray, yt: np.ndarray, weights: np.ndarray | None, xv: np.ndarray,
          yv: np.ndarray, metric: str, c_grid: tuple[float, ...]) -> list[tuple]:
    """Fit every C from strong to weak (warm-started); (score, -log-loss, model state)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=MAX_ITER, tol=TOL, warm_start=True)
    out = []
    for c in sorted(c_grid):
        model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(xt, yt, sample_weight=weights)
        rank = ((_score(metric, yv, model.predict(xv)), -_log_loss(model, xv, yv))
                if len(yv) else (0.0, 0.0))
        out.append((rank, c, model.coef_.copy(), model.intercept_.copy(), model.classes_))
    return out


def choose_c(scores: dict[float, tuple[float, float]], n_val: int) -> float:
    """The one-standard-error rule: among the C whose validation score is within one
    binomial standard error of the best, the nearest to `DEFAULT_C` (log scale); then
    the better (score, -log-loss).

    `scores` maps C to (validation score, -log-loss).
    """
    best = max(score for score, _ in scores.values())
    se = np.sqrt(max(best * (1 - best), 0.0) / max(n_val, 1))
    close = [c for c, (score, _) in scores.items() if score >= best - se - 1e-12]
    return min(close, key=lambda c: (abs(np.log10(c / DEFAULT_C)), tuple(-v for v in scores[c])))


def _cv_choice(x: np.ndarray, y: np.ndarray, balanced: bool, metric: str,
               c_grid: tuple[float, ...], folds: int) -> float | None:
    """The C with the best mean (score, -log-loss) over stratified folds of `x`, or None
    when a class has too few images for two folds."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.utils.class_weight import compute_sample_weight

    folds = min(folds, int(np.unique(y, return_counts=True)[1].min()) if len(y) else 0)
    if folds < 2:
        return None
    totals = np.zeros((len(c_grid), 2))
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y):
        weights = compute_sample_weight("balanced", y[fit]) if balanced else None
        for i, (rank, *_rest) in enumerate(_walk(x[fit], y[fit], weights, x[held], y[held],
                                                 metric, c_grid)):
            totals[i] += rank
    best = max(range(len(c_grid)), key=lambda i: tuple(totals[i]))
    return sorted(c_grid)[best]


def solve_linear_head(train: np.ndarray, y_train: np.ndarray, val: np.ndarray,
                      y_val: np.ndarray, n_classes: int, *, balanced: bool,
                      metric: str = "balanced_accuracy",
                      c_grid: tuple[float, ...] | None = None,
                      folds: int = 0, rule: str = "1se") -> LinearHead:
    """Fit the head on pooled training features; choose C on the validation features.

    Args:
        train, val: pooled frozen features, (n, d).
        balanced: weight samples inversely to their class frequency.
        c_grid: the C values to try (default `C_GRID`); one value selects nothing.
        folds: choose C by stratified `folds`-fold cross-validation over train and
            validation together instead of on validation alone (0: validation).
        rule: on validation, `1se` (`choose_c`) or `best` (the best score, ties to the
            lower log-loss, then to the stronger regularisation).

    Results are cached by the bytes of the inputs: trials that share features share
    the solve.
    """
    c_grid = tuple(C_GRID if c_grid is None else c_grid)
    train = np.asarray(train, dtype=np.float64)
    val = np.asarray(val, dtype=np.float64)
    key = hashlib.sha256(b"".join([
        train.tobytes(), np.asarray(y_train).tobytes(), val.tobytes(),
        np.asarray(y_val).tobytes(),
        repr((n_classes, balanced, metric, c_grid, MAX_ITER, TOL, folds, rule,
              DEFAULT_C, "log-loss ties")).encode(),
    ])).hexdigest()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    with one_blas_thread():
        head = _solve(train, y_train, val, y_val, n_classes, balanced=balanced, metric=metric,
                      c_grid=c_grid, folds=folds, rule=rule)
    _CACHE[key] = head
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return head


def _solve(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray,
           n_classes: int, *, balanced: bool, metric: str, c_grid: tuple[float, ...],
           folds: int, rule: str) -> LinearHead:
    from sklearn.utils.class_weight import compute_sample_weight

    mean = train.mean(axis=0)
    scale = standard_scale(train, mean)
    xt, xv = (train - mean) / scale, (val - mean) / scale
    variance = scale**2
    weights = compute_sample_weight("balanced", y_train) if balanced else None
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    if folds and len(c_grid) > 1:  # every fold's rows lie in the span of all of them
        pooled = np.concatenate([xt, xv])
        chosen = _cv_choice(_project(pooled, _row_space(pooled)),
                            np.concatenate([y_train, y_val]), balanced, metric, c_grid, folds)
    else:
        chosen = None
    basis = _row_space(xt)
    walk = _walk(_project(xt, basis), y_train, weights, _project(xv, basis), y_val, metric,
                 c_grid if chosen is None else (chosen,))
    if chosen is None and rule == "1se" and len(walk) > 1:
        chosen = choose_c({row[1]: row[0] for row in walk}, len(y_val))
        row = next(row for row in walk if row[1] == chosen)
    else:
        row = max(walk, key=lambda row: row[0])
    (score, _), c, coef, intercept, classes = row
    if basis is not None:
        coef = coef @ basis.T
    kernel = np.zeros((train.shape[1], n_classes))
    bias = np.full(n_classes, -30.0)  # a class absent from training gets ~0 probability
    seen = classes.astype(int)
    if len(seen) == 2 and coef.shape[0] == 1:  # binary: sklearn keeps one row
        kernel[:, seen[1]], bias[seen[1]] = coef[0] / 2, intercept[0] / 2
        kernel[:, seen[0]], bias[seen[0]] = -coef[0] / 2, -intercept[0] / 2
    else:
        kernel[:, seen] = coef.T
        bias[seen] = intercept
    return LinearHead(mean=mean.astype(np.float32), variance=variance.astype(np.float32),
                      kernel=kernel.astype(np.float32), bias=bias.astype(np.float32),
                      C=float(c), val_score=float(score))
