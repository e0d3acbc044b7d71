"""Meta-learners of a stack (``aigvqa.heads.blend``): map the bases' out-of-fold predictions
P [N, m] to the target, as a blend of all bases or as the best single base, whichever
predicts held-out OOF rows better (``choose_meta``)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from sklearn.linear_model import LinearRegression

META_LEARNERS = ("linear", "nnls")


def fit_meta(P: np.ndarray, y: np.ndarray, meta: str) -> tuple[np.ndarray, float]:
    """(weights [m], intercept) mapping base predictions P [N, m] to y [N]."""
    if meta == "linear":
        lr = LinearRegression().fit(P, y)
        return lr.coef_.astype(np.float64), float(lr.intercept_)
    # Non-negative least squares with a free intercept: for any weights the best intercept is
    # mean(y - P w), so centring P and y makes plain NNLS solve the full problem exactly.
    p_mean, y_mean = P.mean(axis=0), y.mean()
    w, _ = nnls(P - p_mean, y - y_mean)
    return w, float(y_mean - p_mean @ w)


def fit_best_base(P: np.ndarray, y: np.ndarray, meta: str) -> tuple[np.ndarray, float, int]:
    """The single base (column of P) with the lowest squared error once mapped to y by the
    meta-learner on its own: (weights [m], one-hot times its scale, intercept, its index)."""
    best = None
    for k in range(P.shape[1]):
        w, b = fit_meta(P[:, [k]], y, meta)
        sse = float(np.sum((P[:, k] * w[0] + b - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, k, w[0], b)
    _, k, scale, intercept = best
    weights = np.zeros(P.shape[1])
    weights[k] = scale
    return weights, intercept, k


def choose_meta(
    P: np.ndarray, y: np.ndarray, meta: str, folds
) -> tuple[np.ndarray, float, int | None]:
    """Blend or best single base, whichever predicts held-out OOF rows better.

    Both candidates are fit on the other folds' OOF predictions and scored on each fold's
    (squared error summed over folds); the winner is refit on every OOF row. Returns
    (weights, intercept, index of the chosen base or None for the blend). A tie keeps the
    single base (the simpler model).
    """
    sse_blend = sse_best = 0.0
    for train, held in folds:
        w, b = fit_meta(P[train], y[train], meta)
        sse_blend += float(np.sum((P[held] @ w + b - y[held]) ** 2))
        w, b, _ = fit_best_base(P[train], y[train], meta)
        sse_best += float(np.sum((P[held] @ w + b - y[held]) ** 2))
    if sse_blend < sse_best:
        w, b = fit_meta(P, y, meta)
        return w, b, None
    return fit_best_base(P, y, meta)
