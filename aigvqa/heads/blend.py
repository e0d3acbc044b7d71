"""Out-of-fold stacking of any heads, deep or classical.

    stack = StackingHead([("svr", SVRHead(search="standard")), ("lgbm", LightGBMHead()),
                          ("ugvq", create_head("ugvq", preset="small"))], meta="nnls", cv=5)
    stack.fit(X_train, y_train).predict(X_test)

How ``fit`` keeps every prediction honest:

1. The training rows are cut into ``cv`` folds. For each fold and base head, a fresh clone is
   fit on the other folds and predicts the held-out fold, so each row's out-of-fold (OOF)
   prediction comes from models that never saw that row (``oof_predictions_``).
2. The meta-learner is fit on the OOF predictions only: ``"linear"`` (least squares with
   intercept) or ``"nnls"`` (non-negative weights, free intercept). A head that memorises its
   training rows predicts nothing useful out of fold, so it earns no weight.
3. Each base head is then refit on all training rows (``estimators_``) for ``predict``.

Base heads whose ``fit`` takes ``X_val, y_val`` get the validation rows given to ``fit``
(those rows are never training rows). Base heads are given as ``(name, estimator)`` pairs or
``(name, "registered-head-name")``; nested parameters read ``<name>__<param>``.
"""

from __future__ import annotations

import inspect
from numbers import Integral
from typing import ClassVar

import numpy as np
from joblib import Parallel, delayed
from scipy.optimize import nnls
from sklearn.base import RegressorMixin, clone
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold, KFold
from sklearn.utils.metaestimators import _BaseComposition
from sklearn.utils.validation import check_is_fitted

from aigvqa.errors import HeadParameterError
from aigvqa.heads.params import Check, Interval, Options, check_parameters
from aigvqa.heads.registry import create_head, register_head

META_LEARNERS = ("linear", "nnls")


def _accepts_validation(estimator) -> bool:
    params = inspect.signature(estimator.fit).parameters
    return "X_val" in params and "y_val" in params


def _fit(estimator, X, y, X_val, y_val):
    model = clone(estimator)
    if X_val is not None and _accepts_validation(model):
        return model.fit(X, y, X_val=X_val, y_val=y_val)
    return model.fit(X, y)


def _fit_predict_fold(estimator, X, y, train, held_out, X_val, y_val) -> np.ndarray:
    model = _fit(estimator, X[train], y[train], X_val, y_val)
    return np.asarray(model.predict(X[held_out]), dtype=np.float64).reshape(len(held_out), -1)


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


def _estimator_list(value) -> bool:
    if not isinstance(value, list | tuple) or not value:
        return False
    if not all(isinstance(e, tuple | list) and len(e) == 2 and isinstance(e[0], str) for e in value):
        return False
    names = [name for name, _ in value]
    return len(set(names)) == len(names) and all(isinstance(h, str) or hasattr(h, "fit") for _, h in value)


@register_head("stack")
class StackingHead(RegressorMixin, _BaseComposition):
    """Out-of-fold stacking (see the module docstring).

    Parameters: ``estimators`` list of (name, head or registered head name); ``meta``
    "nnls" | "linear"; ``cv`` fold count or an sklearn splitter; ``random_state`` shuffles
    the folds; ``n_jobs`` fits (fold, head) pairs in parallel.
    Fitted: ``estimators_``, ``named_estimators_``, ``oof_predictions_`` [N, m] (or
    [N, m, k]), ``coef_`` [m] (or [k, m]), ``intercept_``.
    """

    PARAMETER_CONSTRAINTS: ClassVar[dict[str, list]] = {
        "estimators": [Check(_estimator_list, "a non-empty list of (name, head or registered head name) "
                                              "pairs with unique names")],
        "meta": [Options(*META_LEARNERS)],
        "cv": [Interval(Integral, 2, None), Check(lambda v: callable(getattr(v, "split", None)),
                                                  "a splitter with a split() method (e.g. KFold)")],
        "random_state": [None, Integral, np.random.RandomState],
        "n_jobs": [None, Integral],
    }

    def __init__(self, estimators, *, meta="nnls", cv=5, random_state=0, n_jobs=1):
        self.estimators = estimators
        self.meta = meta
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs

    # nested parameters (<name>__<param>) like sklearn's own StackingRegressor
    def get_params(self, deep=True):
        return self._get_params("estimators", deep=deep)

    def set_params(self, **params):
        self._set_params("estimators", **params)
        return self

    def _bases(self) -> list[tuple[str, object]]:
        return [(name, create_head(est) if isinstance(est, str) else est) for name, est in self.estimators]

    def _folds(self, n: int, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
        rows = np.arange(n)
        if groups is not None:
            groups = np.asarray(groups).ravel()
            if groups.shape != (n,):
                raise HeadParameterError(f"StackingHead groups must have one entry per row ({n}), got {groups.shape}")
        if isinstance(self.cv, (int, np.integer)) and groups is not None:
            n_groups = np.unique(groups).size
            if n_groups < 2:
                raise HeadParameterError("StackingHead groups: out-of-fold stacking needs at least 2 groups")
            folds = list(GroupKFold(min(int(self.cv), n_groups)).split(rows, groups=groups))
        elif isinstance(self.cv, (int, np.integer)):
            folds = list(KFold(int(self.cv), shuffle=True, random_state=self.random_state).split(rows))
        else:
            folds = list(self.cv.split(rows, groups=groups))
        covered = np.concatenate([held for _, held in folds])
        if covered.size != n or np.unique(covered).size != n:
            raise HeadParameterError("StackingHead cv must hold out every training row exactly once (a K-fold splitter)")
        for train, held in folds:
            if np.intersect1d(train, held).size:
                raise HeadParameterError("StackingHead cv yields a fold whose held-out rows are also training rows")
        return folds

    def fit(self, X, y, X_val=None, y_val=None, groups=None):
        """``groups`` (e.g. prompt ids): inner folds keep each group on one side, so the
        out-of-fold predictions the meta-learner sees are for unseen groups."""
        check_parameters(self)
        y = np.asarray(y, dtype=np.float64)
        single = y.ndim == 1
        Y = y[:, None] if single else y
        bases = self._bases()
        folds = self._folds(len(Y), groups)
        jobs = [(f, m) for f in range(len(folds)) for m in range(len(bases))]
        parallel = Parallel(n_jobs=self.n_jobs)
        fold_preds = parallel(
            delayed(_fit_predict_fold)(bases[m][1], X, y, folds[f][0], folds[f][1], X_val, y_val) for f, m in jobs
        )
        oof = np.full((len(Y), len(bases), Y.shape[1]), np.nan)
        for (f, m), pred in zip(jobs, fold_preds):
            oof[folds[f][1], m, :] = pred
        weights = [fit_meta(oof[:, :, j], Y[:, j], self.meta) for j in range(Y.shape[1])]
        self.estimators_ = parallel(delayed(_fit)(est, X, y, X_val, y_val) for _, est in bases)
        self.named_estimators_ = {name: est for (name, _), est in zip(bases, self.estimators_)}
        self.oof_predictions_ = oof[:, :, 0] if single else oof
        coef = np.stack([w for w, _ in weights])
        intercept = np.array([b for _, b in weights])
        self.coef_ = coef[0] if single else coef
        self.intercept_ = float(intercept[0]) if single else intercept
        self.single_output_ = single
        self.n_outputs_ = Y.shape[1]
        return self

    def base_predictions(self, X) -> np.ndarray:
        """[N, m, k] predictions of the refit base heads."""
        check_is_fitted(self, "estimators_")
        return np.stack(
            [np.asarray(est.predict(X), dtype=np.float64).reshape(len(X), -1) for est in self.estimators_], axis=1
        )

    def predict(self, X) -> np.ndarray:
        P = self.base_predictions(X)
        coef = np.atleast_2d(self.coef_)
        intercept = np.atleast_1d(self.intercept_)
        pred = np.einsum("nmk,km->nk", P, coef) + intercept[None, :]
        return pred[:, 0] if self.single_output_ else pred
