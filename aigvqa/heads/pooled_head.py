"""``PooledHead``: the estimator every classical head (``aigvqa.heads.classical``) derives
from; a subclass only declares its hyper-parameters and builds its regressor. What they share:

* **Pooling** (``aigvqa.heads.pooling.pool_sequences``) of the named features, computed once
  per pooling setting and reused by every search candidate.
* **Scaling**: ``"minmax"`` (VIDEVAL), ``"standard"`` or None; then optional PCA
  (``pca=`` components as an int, or a variance fraction in (0, 1)).
* **Hyper-parameter search inside the training rows only**: ``search={"C": [...], ...}``
  (any of the head's own parameters; a list of such dicts, or ``"standard"`` for the head's
  standard grid). Candidates are fit on an inner split of the rows given to ``fit``
  (``inner_split=0.2`` -> one 80/20 ``train_test_split`` seeded by ``random_state``, as
  VIDEVAL; an int k -> k-fold) and ranked by ``search_scoring``: ``"rmse"`` of the raw
  predictions, ``"logistic-rmse"`` (VIDEVAL's rule: RMSE after fitting the 4-parameter
  logistic of the predictions to the MOS of the held-out rows) or ``"srcc"``; if ``fit`` gets
  a validation set (``X_val, y_val``), candidates are ranked on it instead. The winner is
  refit on all rows given to ``fit``; ``best_params_`` and ``search_results_`` say what was
  chosen and why.
* **Convergence warnings are counted, not printed**: ElasticNet's search fits many
  under-regularised candidates that stop at ``max_iter``; each fit's ConvergenceWarnings are
  caught and summed in ``n_convergence_warnings_`` (callers report one line).
* **Multi-output**: y [N, k] fits one model (and one search) per column.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from joblib import Parallel, delayed
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, ParameterGrid, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils.validation import check_is_fitted

from aigvqa.errors import AigvqaError
from aigvqa.heads.featureset import FeatureSet, check_targets, nonfinite_text
from aigvqa.heads.params import (
    Check,
    Interval,
    Options,
    check_parameters,
    check_value,
    parameter_error,
    sequence_of,
)
from aigvqa.heads.pooling import POOL_STATS, as_featureset, pool_sequences

SCALERS = {"minmax": MinMaxScaler, "standard": StandardScaler}
# Parameters that change the pooled matrix (the rest only change the fitted pipeline).
_POOL_PARAMS = ("features", "pooling", "percentiles")


class FeatureValueError(AigvqaError, ValueError):
    """Features hold NaN or infinite values that a classical head cannot use."""


def _store_params(estimator, params: Mapping) -> None:
    """``__init__`` body of every classical head: store the arguments, nothing else."""
    for key, value in params.items():
        if key not in ("self", "__class__"):
            setattr(estimator, key, value)


def _as_2d(y) -> tuple[np.ndarray, bool]:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        return y[:, None], True
    if y.ndim == 2:
        return y, False
    raise ValueError(f"y must be [N] or [N, k], got shape {y.shape}")


SEARCH_SCORINGS = ("rmse", "logistic-rmse", "srcc")


def _logistic_4(x, b1, b2, b3, b4):
    """VIDEVAL's 4-parameter logistic ``b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``."""
    return b2 + (b1 - b2) * expit((x - b3) / np.abs(b4))


def logistic_rmse(
    y_true: np.ndarray, y_pred: np.ndarray, maxfev: int = 20000
) -> tuple[float, bool]:
    """(RMSE of the predictions mapped by a least-squares 4-parameter logistic, fell_back).

    As VIDEVAL's grid search ranks candidates: the curve starts from VIDEVAL's
    ``[max(y), min(y), mean(pred), 0.5]``. A fit that fails (constant predictions, no
    convergence) scores the raw predictions' RMSE and says so (``fell_back`` True).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    mapped, fell_back = y_pred, True
    if y_pred.size >= 4 and np.ptp(y_pred) > 0 and np.ptp(y_true) > 0:
        p0 = [y_true.max(), y_true.min(), y_pred.mean(), 0.5]
        try:
            with warnings.catch_warnings():
                # "covariance could not be estimated" / overflow in exp are not failures of
                # the fitted curve; the finiteness check below catches real ones
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                popt, _ = curve_fit(_logistic_4, y_pred, y_true, p0=p0, maxfev=maxfev)
            candidate = _logistic_4(y_pred, *popt)
            if np.all(np.isfinite(candidate)):
                mapped, fell_back = candidate, False
        except (RuntimeError, ValueError, FloatingPointError):
            pass
    return float(np.sqrt(np.mean((y_true - mapped) ** 2))), fell_back


def _search_loss(scoring: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Lower is better: RMSE (raw or after the logistic, VIDEVAL's), or -SRCC."""
    if scoring == "rmse":
        return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))
    if scoring == "logistic-rmse":
        return logistic_rmse(y_true, y_pred)[0]
    rho = stats.spearmanr(y_true, y_pred)[0] if np.ptp(y_pred) > 0 else np.nan
    return float(-rho) if np.isfinite(rho) else np.inf


def fit_counting_convergence(model, *args, **kwargs) -> int:
    """``model.fit(*args, **kwargs)``; returns how many ConvergenceWarnings it raised, which
    are swallowed (other warnings are re-issued). The count travels back from worker
    processes, where a printed warning would be lost in (or flood) their stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(*args, **kwargs)
    count = 0
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            count += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return count


def _is_grid(value) -> bool:
    """A ParameterGrid input: {param: [values]} or a list of such dicts."""
    grids = value if isinstance(value, list) else [value]
    return bool(grids) and all(
        isinstance(g, dict)
        and all(isinstance(k, str) and isinstance(v, list | tuple) and len(v) for k, v in g.items())
        for g in grids
    )


POSITIVE = Interval(Real, 0, None, closed="neither")
NON_NEGATIVE = Interval(Real, 0, None, closed="left")
SEED = [None, Integral, np.random.RandomState]
# What the parameters every classical head has may be (aigvqa.heads.params).
POOLED_CONSTRAINTS: dict[str, list] = {
    "features": [None, sequence_of(str, "a list of feature names", empty=False)],
    "pooling": [sequence_of(str, f"a list of statistics from {POOL_STATS}", allowed=POOL_STATS)],
    "percentiles": [
        Check(
            lambda v: (
                isinstance(v, list | tuple)
                and all(
                    isinstance(q, Real) and not isinstance(q, bool) and 0 <= q <= 100 for q in v
                )
            ),
            "a list of numbers in [0, 100]",
        )
    ],
    "scaler": [None, Options(*SCALERS)],
    "pca": [None, Interval(Integral, 1, None), Interval(Real, 0, 1, closed="neither")],
    "scale_target": [bool],
    "search": [
        None,
        Options("standard"),
        Check(_is_grid, "a dict {parameter: [values]} or a list of them"),
    ],
    "inner_split": [Interval(Real, 0, 1, closed="neither"), Interval(Integral, 2, None)],
    "search_scoring": [Options(*SEARCH_SCORINGS)],
    "random_state": SEED,
    "n_jobs": [None, Integral],
}


class PooledHead(RegressorMixin, BaseEstimator):
    """Base of the classical heads (see the module docstring). Subclasses declare their
    parameters in ``__init__``, their constraints in ``PARAMETER_CONSTRAINTS`` and
    implement ``_make_regressor``."""

    #: the grid ``search="standard"`` stands for
    standard_search: ClassVar[dict] = {}
    #: what each parameter may be (aigvqa.heads.params), checked at the top of fit
    PARAMETER_CONSTRAINTS: ClassVar[dict[str, list]] = POOLED_CONSTRAINTS

    def _make_regressor(self, params: dict, n_jobs: int):
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------
    def _grid(self) -> list[dict]:
        search = self.search
        if search is None:
            return []
        if search == "standard":
            search = self.standard_search
        grid = list(ParameterGrid(search))
        allowed = set(self.get_params(deep=False)) - {
            "search",
            "n_jobs",
            "inner_split",
            "search_scoring",
        }
        bad = sorted({k for cand in grid for k in cand} - allowed)
        if bad:
            raise parameter_error(
                self,
                "search",
                self.search,
                f"a grid over searchable parameters {sorted(allowed)}",
                where=f" (unknown parameters {bad})",
            )
        for cand in grid:  # a searched value must be a valid value of its parameter
            for key, value in cand.items():
                check_value(self, key, value, where=" (in search)")
        return grid

    def check_config(self, X=None) -> None:
        """Raise what ``fit`` would about the parameters and the ``search`` grid, before any
        fit (``aigvqa.heads.params.check_head``); ``X`` is not needed."""
        check_parameters(self)
        self._grid()

    def _params(self, overrides: Mapping) -> dict:
        params = self.get_params(deep=False)
        params.update(overrides)
        if params["features"] is None:
            params["features"] = self.features_used_
        return params

    def _pool(self, X: FeatureSet, params: dict, cache: dict) -> np.ndarray:
        key = repr([params[k] for k in _POOL_PARAMS])
        if key not in cache:
            problem = nonfinite_text(X, params["features"])  # before pooling warns of it
            if problem:
                raise FeatureValueError(problem)
            Z, _ = pool_sequences(X, params["pooling"], params["percentiles"], params["features"])
            if not np.isfinite(Z).all():
                cols = np.flatnonzero(~np.isfinite(Z).all(axis=0))
                raise FeatureValueError(
                    f"{len(cols)} pooled feature columns hold NaN or inf "
                    f"(first: column {cols[0]}); "
                    "replace them when importing the features (VIDEVAL sets them to 0)"
                )
            cache[key] = Z
        return cache[key]

    @staticmethod
    def _preprocessing(params: dict) -> list[tuple[str, object]]:
        """The pipeline steps before the regressor (scaling, PCA), unfitted."""
        steps = []
        if params["scaler"] is not None:
            steps.append(("scale", SCALERS[params["scaler"]]()))
        if params["pca"] is not None:
            steps.append(
                ("pca", PCA(n_components=params["pca"], random_state=params["random_state"]))
            )
        return steps

    def _build(self, params: dict, n_jobs: int):
        steps = self._preprocessing(params)
        steps.append(("regressor", self._make_regressor(params, n_jobs)))
        model = Pipeline(steps)
        if params["scale_target"]:
            model = TransformedTargetRegressor(regressor=model, transformer=StandardScaler())
        return model

    def _inner_folds(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        split = self.inner_split  # a fold count >= 2 or a fraction in (0, 1): checked by fit
        rows = np.arange(n)
        if isinstance(split, Integral):
            return list(KFold(int(split), shuffle=True, random_state=self.random_state).split(rows))
        # same call as VIDEVAL's inner split, on row indices (identical rows and order)
        return [
            tuple(train_test_split(rows, test_size=float(split), random_state=self.random_state))
        ]

    def _score_candidate(self, params, Z_fit, y_fit, Z_eval, y_eval) -> tuple[float, int]:
        """(mean loss over the inner splits, ConvergenceWarnings raised by the fits)."""
        losses, warned = [], 0
        for (zf, yf), (ze, ye) in zip(zip(Z_fit, y_fit), zip(Z_eval, y_eval)):
            model = self._build(params, n_jobs=1)
            warned += fit_counting_convergence(model, zf, yf)
            losses.append(_search_loss(self.search_scoring, ye, model.predict(ze)))
        return float(np.mean(losses)), warned

    def _eval_pairs(self, params, X, y, X_val, y_val, folds, cache, val_cache):
        """Pooled (Z_fit, y_fit, Z_eval, y_eval) lists: one entry per inner split, or the
        training rows against the validation rows."""
        Z = self._pool(X, params, cache)
        if X_val is not None:
            return [Z], [y], [self._pool(X_val, params, val_cache)], [y_val]
        return (
            [Z[tr] for tr, _ in folds],
            [y[tr] for tr, _ in folds],
            [Z[va] for _, va in folds],
            [y[va] for _, va in folds],
        )

    def _grid_losses(
        self, grid, X, y, X_val, y_val, folds, cache, val_cache
    ) -> tuple[list[float], int]:
        """Loss of every candidate (one fit per candidate and inner split)."""
        tasks = []
        for cand in grid:
            params = self._params(cand)
            pairs = self._eval_pairs(params, X, y, X_val, y_val, folds, cache, val_cache)
            tasks.append(delayed(self._score_candidate)(params, *pairs))
        out = Parallel(n_jobs=self.n_jobs)(tasks)
        return [loss for loss, _ in out], sum(w for _, w in out)

    def _search(self, grid, X, y, X_val, y_val, cache, val_cache) -> tuple[dict, list[dict], int]:
        """Best overrides for one target column, by inner split / folds or by the val set;
        also the search results and the ConvergenceWarnings the candidate fits raised."""
        folds = None if X_val is not None else self._inner_folds(len(y))
        losses, warned = self._grid_losses(grid, X, y, X_val, y_val, folds, cache, val_cache)
        results = [
            {
                "params": cand,
                self.search_scoring: (-loss if self.search_scoring == "srcc" else loss),
            }
            for cand, loss in zip(grid, losses)
        ]
        return dict(grid[int(np.argmin(losses))]), results, warned

    # -- estimator API --------------------------------------------------------------------
    def fit(self, X, y, X_val=None, y_val=None):
        """Fit one pipeline per target column; search hyper-parameters on these rows only.

        ``X_val, y_val`` (optional, disjoint rows): used to rank search candidates instead of
        an inner split; the final model is still fit on ``X`` only.
        """
        check_parameters(self)
        X = as_featureset(X)
        Y, single = _as_2d(y)
        check_targets(Y, X.ids)
        if len(Y) != len(X):
            raise ValueError(f"X has {len(X)} rows, y {len(Y)}")
        Y_val = None
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        if X_val is not None:
            X_val = as_featureset(X_val)
            Y_val, _ = _as_2d(y_val)
        self.features_used_ = list(X.names if self.features is None else self.features)
        grid = self._grid()
        cache, val_cache = {}, {}
        best, results, warned = [], [], 0
        for j in range(Y.shape[1]):
            if grid:
                b, r, w = self._search(
                    grid,
                    X,
                    Y[:, j],
                    X_val,
                    None if Y_val is None else Y_val[:, j],
                    cache,
                    val_cache,
                )
            else:
                b, r, w = {}, [], 0
            best.append(b)
            results.append(r)
            warned += w
        self.target_params_ = [self._params(b) for b in best]
        self.models_ = []
        for j, p in enumerate(self.target_params_):
            model = self._build(p, self.n_jobs)
            warned += fit_counting_convergence(model, self._pool(X, p, cache), Y[:, j])
            self.models_.append(model)
        self.n_convergence_warnings_ = warned
        self.single_output_ = single
        self.n_outputs_ = Y.shape[1]
        self.best_params_ = best[0] if single else best
        self.search_results_ = results[0] if single else results
        self.pooled_feature_names_ = pool_sequences(
            X[:1],
            self.target_params_[0]["pooling"],
            self.target_params_[0]["percentiles"],
            self.target_params_[0]["features"],
        )[1]
        return self

    def predict(self, X) -> np.ndarray:
        """[N] predictions (or [N, k] when fit on [N, k] targets)."""
        check_is_fitted(self, "models_")
        X = as_featureset(X)
        cache: dict = {}
        pred = np.column_stack(
            [m.predict(self._pool(X, p, cache)) for m, p in zip(self.models_, self.target_params_)]
        )
        return pred[:, 0] if self.single_output_ else pred


# Parameters every classical head has, with their defaults, documented once here:
#   features      names of FeatureSet arrays to use (None: all, in the set's order)
#   pooling       statistics over time: any of "mean", "std", "min", "max"
#   percentiles   extra percentiles over time, e.g. (10, 50, 90)
#   scaler        "minmax" | "standard" | None, fit on the training rows
#   pca           None, n components (int) or explained-variance fraction (float)
#   scale_target  standardise y for the fit (predictions are mapped back)
#   search        None | {param: [values]} | [dicts] | "standard" (inner search, see above)
#   inner_split   fraction held out for the search (0.2 = VIDEVAL), or a fold count
#   search_scoring  "rmse" (raw predictions), "logistic-rmse" (VIDEVAL: after the 4-parameter
#                 logistic fit on the held-out rows) or "srcc"
#   random_state  seeds the inner split, PCA and the regressor where it is random
#   n_jobs        parallel search candidates (SVR: threads over gammas; LightGBM: also its
#                 threads for the final fit)
