"""Classical heads: pooled sequence statistics -> scaling -> optional PCA -> SVR / ElasticNet /
LightGBM, as scikit-learn estimators on a FeatureSet.

All three derive from one base class, ``PooledHead``; a subclass only declares its
hyper-parameters and builds its regressor. The family lives in three modules:

* **Pooling** (``aigvqa.heads.pooling``): per named feature, the mean and std over the valid
  time steps, optionally min / max and percentiles.
* **The shared estimator** (``aigvqa.heads.pooled_head.PooledHead``): scaling, optional PCA,
  hyper-parameter search inside the training rows only (``search``, ``inner_split``,
  ``search_scoring``; VIDEVAL's rule is ``"logistic-rmse"``), ConvergenceWarnings counted in
  ``n_convergence_warnings_``, one model per target column. Its module says how.
* **SVR searches share kernels** (here): when the candidates differ only in C / gamma / epsilon
  (VIDEVAL's grid), the scaled rows' squared distances are computed once per inner split,
  one RBF kernel per gamma is shared by every C, and the candidates are fit on it as
  ``SVR(kernel="precomputed")`` (``n_jobs`` threads; libsvm releases the GIL). The losses and
  the chosen pair are those of fitting each RBF SVR on its own, up to float rounding.

This module holds the registered regressors (SVR with its shared-kernel search, ElasticNet,
LightGBM). The public names of ``pooling`` and ``pooled_head`` are importable from here too,
so ``aigvqa.heads.classical`` stays the one import path of the family.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from sklearn.linear_model import ElasticNet
from sklearn.svm import SVR

from aigvqa.errors import HeadParameterError
from aigvqa.heads.params import Interval, Options
from aigvqa.heads.pooled_head import (
    NON_NEGATIVE,
    POOLED_CONSTRAINTS,
    POSITIVE,
    SCALERS,
    SEARCH_SCORINGS,
    SEED,
    FeatureValueError,
    PooledHead,
    _search_loss,
    _store_params,
    fit_counting_convergence,
    logistic_rmse,
)
from aigvqa.heads.pooling import POOL_STATS, as_featureset, pool_sequences
from aigvqa.heads.registry import register_head

__all__ = [
    "CLASSICAL_HEADS",
    "ElasticNetHead",
    "FeatureValueError",
    "HeadParameterError",
    "LightGBMHead",
    "NON_NEGATIVE",
    "POOLED_CONSTRAINTS",
    "POOL_STATS",
    "POSITIVE",
    "SCALERS",
    "SEARCH_SCORINGS",
    "SEED",
    "PooledHead",
    "SVRHead",
    "as_featureset",
    "fit_counting_convergence",
    "logistic_rmse",
    "pool_sequences",
]


def _thread_count(n_jobs) -> int:
    """joblib's n_jobs convention (None: 1, -1: every core) as a thread count."""
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    return max(1, (os.cpu_count() or 1) + 1 + n_jobs if n_jobs < 0 else n_jobs)


@register_head("svr")
class SVRHead(PooledHead):
    """RBF support-vector regression on pooled features (VIDEVAL's regressor).

    ``search="standard"`` is VIDEVAL's grid: C in 2^1..2^10, gamma in 2^-8..2^1.
    """

    standard_search: ClassVar[dict] = {
        "C": list(np.logspace(1, 10, 10, base=2)),
        "gamma": list(np.logspace(-8, 1, 10, base=2)),
    }

    PARAMETER_CONSTRAINTS = {
        **POOLED_CONSTRAINTS,
        "C": [POSITIVE],
        "gamma": [Options("scale", "auto"), POSITIVE],
        "epsilon": [NON_NEGATIVE],
    }

    def __init__(
        self,
        *,
        C=1.0,
        gamma="scale",
        epsilon=0.1,
        features=None,
        pooling=("mean", "std"),
        percentiles=(),
        scaler="minmax",
        pca=None,
        scale_target=False,
        search=None,
        inner_split=0.2,
        search_scoring="rmse",
        random_state=0,
        n_jobs=1,
    ):
        _store_params(self, locals())

    #: search through shared precomputed kernels when the candidates allow it (see the module
    #: docstring); False fits every candidate as its own RBF SVR (the reference path).
    shared_kernels: ClassVar[bool] = True
    _KERNEL_SHARING_KEYS = frozenset({"C", "gamma", "epsilon"})

    def _make_regressor(self, params, n_jobs):
        return SVR(kernel="rbf", C=params["C"], gamma=params["gamma"], epsilon=params["epsilon"])

    def _grid_losses(self, grid, X, y, X_val, y_val, folds, cache, val_cache):
        varying = {key for cand in grid for key in cand}
        if not self.shared_kernels or not varying <= self._KERNEL_SHARING_KEYS or self.scale_target:
            return super()._grid_losses(grid, X, y, X_val, y_val, folds, cache, val_cache)
        base = self._params({})  # pooling, scaling and PCA are the same for every candidate
        candidates = [self._params(cand) for cand in grid]
        losses = np.zeros(len(grid))
        for zf, yf, ze, ye in zip(
            *self._eval_pairs(base, X, y, X_val, y_val, folds, cache, val_cache)
        ):
            preds = self._precomputed_predictions(base, candidates, zf, yf, ze)
            # losses in this thread: the logistic fit silences warnings, which is not thread-safe
            losses += [_search_loss(self.search_scoring, ye, pred) for pred in preds]
        return list(losses / len(folds or [None])), 0

    def _precomputed_predictions(self, base, candidates, zf, yf, ze) -> list[np.ndarray]:
        """Predictions on ``ze`` of every candidate fit on (``zf``, ``yf``), one RBF kernel per
        gamma shared by all C / epsilon values."""
        steps = self._preprocessing(base)
        for _, step in steps:  # what the candidate's Pipeline would fit, fitted once
            zf = step.fit_transform(zf)
            ze = step.transform(ze)
        sq_f = np.einsum("ij,ij->i", zf, zf)
        sq_e = np.einsum("ij,ij->i", ze, ze)
        # libsvm's RBF: exp(-gamma * (|x|^2 + |y|^2 - 2 x.y)), exactly 1 on the diagonal
        d2_ff = sq_f[:, None] + sq_f[None, :] - 2.0 * (zf @ zf.T)
        np.fill_diagonal(d2_ff, 0.0)
        d2_ef = sq_e[:, None] + sq_f[None, :] - 2.0 * (ze @ zf.T)
        by_gamma: dict[float, list[int]] = {}
        for i, cand in enumerate(candidates):
            by_gamma.setdefault(self._gamma_value(cand["gamma"], zf), []).append(i)

        def fit_gamma(gamma: float, members: list[int]) -> list[tuple[int, np.ndarray]]:
            k_ff, k_ef = np.exp(-gamma * d2_ff), np.exp(-gamma * d2_ef)
            out = []
            for i in members:
                svr = SVR(
                    kernel="precomputed", C=candidates[i]["C"], epsilon=candidates[i]["epsilon"]
                )
                out.append((i, svr.fit(k_ff, yf).predict(k_ef)))
            return out

        preds: list[np.ndarray | None] = [None] * len(candidates)
        workers = min(_thread_count(self.n_jobs), len(by_gamma))
        if workers == 1:
            done = [fit_gamma(g, m) for g, m in by_gamma.items()]
        else:  # libsvm releases the GIL: threads share the distances instead of copying them
            with ThreadPoolExecutor(workers) as pool:
                done = list(pool.map(lambda item: fit_gamma(*item), by_gamma.items()))
        for group in done:
            for i, pred in group:
                preds[i] = pred
        return preds

    @staticmethod
    def _gamma_value(gamma, Z: np.ndarray) -> float:
        """A gamma as the number sklearn's SVR resolves it to on the training rows ``Z``."""
        if gamma == "scale":
            var = Z.var()
            return 1.0 / (Z.shape[1] * var) if var != 0 else 1.0
        if gamma == "auto":
            return 1.0 / Z.shape[1]
        return float(gamma)


@register_head("elasticnet")
class ElasticNetHead(PooledHead):
    """Linear regression with L1 + L2 penalties on standardised pooled features."""

    standard_search: ClassVar[dict] = {
        "alpha": list(np.logspace(-4, 1, 11)),
        "l1_ratio": [0.1, 0.5, 0.9, 1.0],
    }

    PARAMETER_CONSTRAINTS = {
        **POOLED_CONSTRAINTS,
        "alpha": [NON_NEGATIVE],
        "l1_ratio": [Interval(Real, 0, 1)],
        "max_iter": [Interval(Integral, 1, None)],
    }

    def __init__(
        self,
        *,
        alpha=0.01,
        l1_ratio=0.5,
        max_iter=10000,
        features=None,
        pooling=("mean", "std"),
        percentiles=(),
        scaler="standard",
        pca=None,
        scale_target=False,
        search=None,
        inner_split=0.2,
        search_scoring="rmse",
        random_state=0,
        n_jobs=1,
    ):
        _store_params(self, locals())

    def _make_regressor(self, params, n_jobs):
        return ElasticNet(
            alpha=params["alpha"],
            l1_ratio=params["l1_ratio"],
            max_iter=params["max_iter"],
            random_state=params["random_state"],
        )


@register_head("lightgbm")
class LightGBMHead(PooledHead):
    """Gradient-boosted trees (LightGBM) on pooled features; deterministic for a seed."""

    standard_search: ClassVar[dict] = {
        "num_leaves": [7, 15, 31],
        "learning_rate": [0.02, 0.05, 0.1],
        "min_child_samples": [5, 20],
    }

    PARAMETER_CONSTRAINTS = {
        **POOLED_CONSTRAINTS,
        "n_estimators": [Interval(Integral, 1, None)],
        "learning_rate": [POSITIVE],
        "num_leaves": [Interval(Integral, 2, None)],
        "min_child_samples": [Interval(Integral, 0, None)],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "reg_lambda": [NON_NEGATIVE],
    }

    def __init__(
        self,
        *,
        n_estimators=300,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=10,
        subsample=0.8,
        colsample_bytree=0.8,
        reg_lambda=1.0,
        features=None,
        pooling=("mean", "std"),
        percentiles=(),
        scaler=None,
        pca=None,
        scale_target=False,
        search=None,
        inner_split=0.2,
        search_scoring="rmse",
        random_state=0,
        n_jobs=1,
    ):
        _store_params(self, locals())

    def _make_regressor(self, params, n_jobs):
        from lightgbm import LGBMRegressor  # imported on use: a heavy import most runs do not need

        return LGBMRegressor(
            n_estimators=params["n_estimators"],
            learning_rate=params["learning_rate"],
            num_leaves=params["num_leaves"],
            min_child_samples=params["min_child_samples"],
            subsample=params["subsample"],
            subsample_freq=1 if params["subsample"] < 1 else 0,
            colsample_bytree=params["colsample_bytree"],
            reg_lambda=params["reg_lambda"],
            random_state=params["random_state"],
            n_jobs=n_jobs,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )


CLASSICAL_HEADS = {"svr": SVRHead, "elasticnet": ElasticNetHead, "lightgbm": LightGBMHead}
