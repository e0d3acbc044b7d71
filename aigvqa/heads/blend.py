"""Out-of-fold stacking of any heads, deep or classical.

    stack = StackingHead([("svr", "svr"), ("lgbm", LightGBMHead()),
                          ("ugvq", create_head("ugvq", preset="small"))], meta="nnls", cv=5)
    stack.fit(X_train, y_train).predict(X_test)
    stack.meta_weights_      # {"svr": 0.61, "lgbm": 0.37, "ugvq": 0.05}: what the stack did

How ``fit`` keeps every prediction honest (it only ever sees the rows given to ``fit``: in an
evaluation, one outer training split; the outer test rows never reach it):

1. **Tuned bases.** A classical base without a search of its own gets its standard grid
   (``tune_bases="standard"``), the same in-split search a user would give it alone. By
   default each base searches once, on the stack's training rows, and its out-of-fold models
   reuse the chosen hyper-parameters (``tune_per_fold=True`` repeats the search inside every
   fold instead: strictly nested, about ``cv + 1`` times the cost).
2. The training rows are cut into ``cv`` folds. For each fold and base head, a fresh clone is
   fit on the other folds and predicts the held-out fold, so each row's out-of-fold (OOF)
   prediction comes from a model that never saw that row (``oof_predictions_``).
3. The meta-learner is fit on the OOF predictions only: ``"linear"`` (least squares with
   intercept) or ``"nnls"`` (non-negative weights, free intercept). A head that memorises its
   training rows predicts nothing useful out of fold, so it earns no weight. Its candidates
   include the best single base (``allow_best_base``): the blend and "the base with the
   lowest error, linearly calibrated" are compared by cross-validation over the OOF rows
   (the same folds), and the better one is kept (``meta_choice_``), so a stack does not
   trail its strongest member when blending does not help.
4. Each base head is then refit on all training rows (``estimators_``) for ``predict``.

A deep base whose trials ``aigvqa.heads.trials`` can vectorise (``can_train_together``)
trains its ``cv`` out-of-fold models and its refit on all rows as one vectorised model
(``fit_trials``: ``cv + 1`` trials on different row sets, each equal to its fit alone up to
float rounding); ``batch_trials=False`` fits them one by one, like the classical bases.

Base heads whose ``fit`` takes ``X_val, y_val`` get the validation rows given to ``fit``
(those rows are never training rows). Base heads are given as ``(name, estimator)`` pairs or
``(name, "registered-head-name")``; nested parameters read ``<name>__<param>``, also for
bases given by name (``set_params(svr__C=2.0)``, ``GridSearchCV`` over them).
``StackingHead.from_config`` builds a stack from a head config (TOML) with one table per base.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Mapping
from numbers import Integral
from typing import ClassVar

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GroupKFold, KFold
from sklearn.utils.metaestimators import _BaseComposition
from sklearn.utils.validation import check_is_fitted

from aigvqa.errors import HeadParameterError
from aigvqa.heads.classical import as_featureset, fit_counting_convergence
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.meta_learners import (  # re-exported: the stack's public helpers
    META_LEARNERS,
    choose_meta,
    fit_best_base,
    fit_meta,
)
from aigvqa.heads.params import Check, Interval, Options, check_head, check_parameters
from aigvqa.heads.registry import UnknownHeadError, create_head, get_head_class, register_head

__all__ = [
    "META_LEARNERS",
    "StackingHead",
    "choose_meta",
    "fit_best_base",
    "fit_meta",
    "stack_base_tables",
]


def _accepts_validation(estimator) -> bool:
    params = inspect.signature(estimator.fit).parameters
    return "X_val" in params and "y_val" in params


def _fit(estimator, X, y, X_val, y_val):
    """A fitted clone of ``estimator`` and the ConvergenceWarnings its fit raised (its own
    count, for heads that keep one, plus those that reached this call)."""
    model = clone(estimator)
    if X_val is not None and _accepts_validation(model):
        warned = fit_counting_convergence(model, X, y, X_val=X_val, y_val=y_val)
    else:
        warned = fit_counting_convergence(model, X, y)
    return model, warned + int(getattr(model, "n_convergence_warnings_", 0))


def _fit_predict_fold(estimator, X, y, train, held_out, X_val, y_val) -> tuple[np.ndarray, int]:
    model, warned = _fit(estimator, X[train], y[train], X_val, y_val)
    return np.asarray(model.predict(X[held_out]), dtype=np.float64).reshape(
        len(held_out), -1
    ), warned


def _oof_together(estimator, X, y, folds) -> tuple[list[np.ndarray], object]:
    """A deep base's out-of-fold predictions (one [held, k] array per fold) and its refit on
    all rows, trained as ``len(folds) + 1`` trials of one vectorised model."""
    from aigvqa.heads.trials import fit_trials, predict_trials

    rows = [train for train, _ in folds] + [np.arange(len(X))]
    heads = fit_trials(estimator, X, y, rows)
    held = [held for _, held in folds]
    preds = predict_trials(heads[:-1], X, held)
    return [
        np.asarray(p, dtype=np.float64).reshape(len(h), -1) for p, h in zip(preds, held)
    ], heads[-1]


def _trains_together(estimator, X_val) -> bool:
    """A deep base ``fit_trials`` can vectorise (and that would not be given validation
    rows: ``fit_trials`` has none to give). Only a deep head can be one, and its module has
    been imported by then: a stack of classical bases never imports torch."""
    if "aigvqa.heads.base" not in sys.modules:
        return False
    if X_val is not None and _accepts_validation(estimator):
        return False
    from aigvqa.heads.trials import can_train_together

    return can_train_together(estimator)


def _estimator_list(value) -> bool:
    if not isinstance(value, list | tuple) or not value:
        return False
    if not all(
        isinstance(e, tuple | list) and len(e) == 2 and isinstance(e[0], str) for e in value
    ):
        return False
    names = [name for name, _ in value]
    return len(set(names)) == len(names) and all(
        isinstance(h, str) or hasattr(h, "fit") for _, h in value
    )


def stack_base_tables(raw) -> list[tuple[str, object]]:
    """The bases of a stack config as (name, spec) pairs; a spec is a table
    ``{"head": registered name, **parameters}`` (a bare head name becomes ``{"head": name}``)
    or, from Python, an estimator. Accepts a list of [name, head] pairs, one table per base
    ({name: {...}}, ``head`` defaulting to the name) or a list of tables with ``name``."""
    if raw is None:
        raise HeadParameterError(
            "a stack config needs estimators (e.g. [estimators.svr] tables, one per base)"
        )
    if isinstance(raw, Mapping):
        items = list(raw.items())
    elif isinstance(raw, list | tuple):
        items = []
        for entry in raw:
            if isinstance(entry, Mapping):
                entry = dict(entry)
                if "name" not in entry:
                    raise HeadParameterError(
                        f'stack estimators table {entry} needs a name = "..." key'
                    )
                items.append((entry.pop("name"), entry))
            elif isinstance(entry, list | tuple) and len(entry) == 2:
                items.append((entry[0], entry[1]))
            else:
                raise HeadParameterError(
                    f"stack estimators entry {entry!r}: use [name, head] or a table"
                )
    else:
        raise HeadParameterError(
            f"stack estimators {raw!r}: use a list of [name, head] or one table per base"
        )
    out = []
    for name, spec in items:
        if not isinstance(name, str):
            raise HeadParameterError(f"stack estimator name {name!r} must be a string")
        if isinstance(spec, str):
            spec = {"head": spec}
        elif isinstance(spec, Mapping):
            spec = {"head": name, **spec}
            if not isinstance(spec["head"], str):
                raise HeadParameterError(
                    f"stack base {name!r}: head = {spec['head']!r} must be a head name"
                )
        elif not hasattr(spec, "fit"):
            raise HeadParameterError(
                f"stack base {name!r}: give a registered head name or a table, not {spec!r}"
            )
        out.append((name, spec))
    return out


def _base_key_error(name: str, head: str, spec: Mapping, err: TypeError) -> HeadParameterError:
    """A base table's keys that its head does not take (only those), with a "did you mean"
    for each near miss, and the head's parameters."""
    valid = sorted(
        p.name
        for p in inspect.signature(get_head_class(head)).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    unknown = sorted(set(spec) - set(valid))
    if not unknown:  # the head's __init__ itself raised
        return HeadParameterError(f"stack base {name!r} (head {head!r}): {err}")
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return HeadParameterError(
        f"stack base {name!r} (head {head!r}) does not take {unknown}{hint}; "
        f"its parameters: {', '.join(valid)}"
    )


def _tunable(estimator) -> bool:
    """A classical head with a standard search grid and no search set."""
    params = estimator.get_params(deep=False) if hasattr(estimator, "get_params") else {}
    return (
        "search" in params
        and params["search"] is None
        and bool(getattr(estimator, "standard_search", None))
    )


def _frozen(base, fitted):
    """``base`` with the hyper-parameters its fitted search chose and no search: what the
    out-of-fold models fit when each base searches once. A base without a single winner
    (no search, or one per output column) is returned as is and searches in every fold."""
    best = getattr(fitted, "best_params_", None)
    if (
        not isinstance(best, Mapping)
        or "search" not in base.get_params(deep=False)
        or base.search is None
    ):
        return base
    return clone(base).set_params(search=None, **best)


def _as_rows(X):
    """X as row-indexable features: a FeatureSet as is, anything array-like (a list, an
    [N, D] array) as the single feature ``"x"``."""
    if isinstance(X, FeatureSet):
        return X
    try:
        return as_featureset(np.asarray(X, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise HeadParameterError(
            "StackingHead X must be a FeatureSet or an [N, D] / [N, T, D] array "
            f"(got {type(X).__name__}: {err})"
        ) from err


@register_head("stack")
class StackingHead(RegressorMixin, _BaseComposition):
    """Out-of-fold stacking (see the module docstring).

    Parameters: ``estimators`` list of (name, head or registered head name); ``meta``
    "nnls" | "linear"; ``cv`` fold count or an sklearn splitter; ``tune_bases`` "standard"
    (classical bases without a search get their standard grid) or None / False (bases as
    given);
    ``tune_per_fold`` repeat each base's search inside every fold; ``allow_best_base`` the
    meta-learner may pick the best single base over the blend; ``batch_trials`` a deep base
    trains its out-of-fold models and refit together (module docstring); ``random_state``
    shuffles the folds; ``n_jobs`` fits (fold, head) pairs of the other bases in parallel.
    Fitted: ``estimators_``, ``named_estimators_``, ``oof_predictions_`` [N, m] (or
    [N, m, k]), ``coef_`` [m] (or [k, m]), ``intercept_``, ``meta_weights_`` {name: weight}
    (a list of them for k outputs), ``meta_choice_`` "blend" or the chosen base's name,
    ``best_params_`` {name: that base's best_params_} for searched bases,
    ``n_convergence_warnings_``.
    """

    PARAMETER_CONSTRAINTS: ClassVar[dict[str, list]] = {
        "estimators": [
            Check(
                _estimator_list,
                "a non-empty list of (name, head or registered head name) "
                "pairs with unique names (in a head config: one "
                "[estimators.<name>] table per base)",
            )
        ],
        "meta": [Options(*META_LEARNERS)],
        "cv": [
            Interval(Integral, 2, None),
            Check(
                lambda v: callable(getattr(v, "split", None)),
                "a splitter with a split() method (e.g. KFold)",
            ),
        ],
        "tune_bases": [
            None,
            Options("standard"),
            Check(lambda v: v is False, "False (bases as given)"),
        ],
        "tune_per_fold": [bool],
        "allow_best_base": [bool],
        "batch_trials": [bool],
        "random_state": [None, Integral, np.random.RandomState],
        "n_jobs": [None, Integral],
    }

    def __init__(
        self,
        estimators=None,
        *,
        meta="nnls",
        cv=5,
        tune_bases="standard",
        tune_per_fold=False,
        allow_best_base=True,
        batch_trials=True,
        random_state=0,
        n_jobs=1,
    ):
        # stores only (scikit-learn's rule, so clone and GridSearchCV work); a missing
        # ``estimators`` is refused by PARAMETER_CONSTRAINTS at fit / from_config
        self.estimators = estimators
        self.meta = meta
        self.cv = cv
        self.tune_bases = tune_bases
        self.tune_per_fold = tune_per_fold
        self.allow_best_base = allow_best_base
        self.batch_trials = batch_trials
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- parameters ---------------------------------------------------------------------
    def _pairs(self) -> list[tuple[str, object]]:
        """``estimators`` checked: a list of (unique name, head or registered name)."""
        estimators = self.estimators
        if (
            isinstance(estimators, Mapping)
            or isinstance(estimators, (str, bytes))
            or not estimators
        ):
            raise HeadParameterError(
                "StackingHead estimators must be a non-empty list of (name, head) pairs, e.g. "
                '[("svr", "svr"), ("lgbm", "lightgbm")]; a config file gives one table per base '
                "([estimators.svr] ...), read with StackingHead.from_config"
            )
        pairs = []
        for item in estimators:
            if not (
                isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)
            ):
                raise HeadParameterError(
                    f"StackingHead estimators entry {item!r} is not a (name, head) pair"
                )
            pairs.append((item[0], item[1]))
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise HeadParameterError(f"StackingHead estimator names must be unique, got {names}")
        bad = [name for name in names if "__" in name]
        if bad:
            raise HeadParameterError(
                f"StackingHead estimator names {bad} contain '__', which nests parameters"
            )
        return pairs

    def get_params(self, deep=True):
        """Own parameters; with ``deep``, also each base by its name (a base given by
        registered name as a default instance of that head) and its ``<name>__<param>``."""
        out = BaseEstimator.get_params(self, deep=False)
        if not deep:
            return out
        for name, est in self._pairs():
            head = create_head(est) if isinstance(est, str) else est
            out[name] = est
            if hasattr(head, "get_params"):
                out.update(
                    {f"{name}__{key}": value for key, value in head.get_params(deep=True).items()}
                )
        return out

    def set_params(self, **params):
        """Own parameters, whole bases by name, and base parameters as ``<name>__<param>``
        (a base given by registered name becomes an instance of that head first)."""
        if "estimators" in params:
            self.estimators = params.pop("estimators")
        own = set(BaseEstimator.get_params(self, deep=False))
        pairs = self._pairs() if params else []
        names = [name for name, _ in pairs]
        replace, nested, direct = {}, {}, {}
        for key, value in params.items():
            base, sep, sub = key.partition("__")
            if key in names:
                replace[key] = value
            elif sep and base in names:
                nested.setdefault(base, {})[sub] = value
            elif key in own:
                direct[key] = value
            else:
                raise HeadParameterError(
                    f"StackingHead has no parameter {key!r}: use one of {sorted(own)}, a base name "
                    f"({', '.join(names)}) or <base>__<parameter>, "
                    f"e.g. {names[0] if names else 'svr'}__C"
                )
        if replace or nested:
            new = []
            for name, est in pairs:
                est = replace.get(name, est)
                if name in nested:
                    est = create_head(est) if isinstance(est, str) else est
                    try:
                        est.set_params(**nested[name])
                    except ValueError as err:
                        valid = sorted(est.get_params(deep=False))
                        raise HeadParameterError(
                            f"base {name!r} ({type(est).__name__}) has no parameter among "
                            f"{sorted(nested[name])}; its parameters: {', '.join(valid)}"
                        ) from err
                new.append((name, est))
            self.estimators = new
        for key, value in direct.items():
            setattr(self, key, value)
        return self

    @classmethod
    def from_config(cls, config: Mapping) -> StackingHead:
        """A stack from a head config (a parsed TOML file), any of:

        * ``estimators = [["svr", "svr"], ["lgbm", "lightgbm"]]`` (name, registered head);
        * one table per base: ``[estimators.svr]`` with the base's parameters and an optional
          ``head = "svr"`` (default: the table's name);
        * ``[[estimators]]`` tables with ``name`` and ``head`` keys and the base's parameters;

        plus ``<base>__<param> = value`` keys anywhere at the top level. The whole stack is
        checked here, before any fit: an unknown key (named with what is valid), an unknown
        base head, a bad base parameter or ``search`` raise a HeadParameterError naming the
        base.
        """
        config = dict(config)
        config.pop("head", None)
        pairs = []
        for name, spec in stack_base_tables(config.pop("estimators", None)):
            if isinstance(spec, Mapping) and set(spec) == {"head"}:
                pairs.append((name, spec["head"]))  # a bare registered name stays a name
            elif isinstance(spec, Mapping):
                spec = dict(spec)
                head = spec.pop("head")
                try:
                    est = create_head(head, **spec)
                except TypeError as err:
                    raise _base_key_error(name, head, spec, err) from err
                except UnknownHeadError as err:
                    raise HeadParameterError(f"stack base {name!r}: {err}") from err
                pairs.append((name, est))
            else:
                pairs.append((name, spec))
        nested = {k: config.pop(k) for k in list(config) if "__" in k}
        try:
            stack = cls(pairs, **config)
        except TypeError as err:
            valid = sorted(inspect.signature(cls).parameters)
            raise HeadParameterError(
                f"stack config keys {sorted(config)}: {err}; stack parameters: {valid}"
            ) from err
        stack.set_params(**nested)
        stack.check_config()  # a bad base is refused now, before any fit
        return stack

    def check_config(self, X=None) -> None:
        """Raise what ``fit`` would about the stack's parameters and every base as a fit
        would build it -- a registered head name, its parameters, a classical base's
        ``search`` grid and, given the FeatureSet ``X``, a deep base's feature roles --
        naming the base, before any fit (``aigvqa.heads.params.check_head``)."""
        check_parameters(self)
        for name, est in self._pairs():
            try:
                check_head(create_head(est) if isinstance(est, str) else est, X)
            except (HeadParameterError, UnknownHeadError) as err:
                raise HeadParameterError(f"stack base {name!r}: {err}") from err

    # -- fitting ------------------------------------------------------------------------
    def _bases(self) -> list[tuple[str, object]]:
        out = []
        for name, est in self._pairs():
            est = create_head(est) if isinstance(est, str) else est
            if self.tune_bases and _tunable(est):
                est = clone(est).set_params(search=self.tune_bases)
            out.append((name, est))
        return out

    def _folds(self, n: int, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
        rows = np.arange(n)
        if groups is not None:
            groups = np.asarray(groups).ravel()
            if groups.shape != (n,):
                raise HeadParameterError(
                    f"StackingHead groups must have one entry per row ({n}), got {groups.shape}"
                )
        if isinstance(self.cv, (int, np.integer)) and groups is not None:
            n_groups = np.unique(groups).size
            if n_groups < 2:
                raise HeadParameterError(
                    "StackingHead groups: out-of-fold stacking needs at least 2 groups"
                )
            folds = list(GroupKFold(min(int(self.cv), n_groups)).split(rows, groups=groups))
        elif isinstance(self.cv, (int, np.integer)):
            folds = list(
                KFold(int(self.cv), shuffle=True, random_state=self.random_state).split(rows)
            )
        else:
            folds = list(self.cv.split(rows, groups=groups))
        covered = np.concatenate([held for _, held in folds])
        if covered.size != n or np.unique(covered).size != n:
            raise HeadParameterError(
                "StackingHead cv must hold out every training row exactly once (a K-fold splitter)"
            )
        for train, held in folds:
            if np.intersect1d(train, held).size:
                raise HeadParameterError(
                    "StackingHead cv yields a fold whose held-out rows are also training rows"
                )
        return folds

    def fit(self, X, y, X_val=None, y_val=None, groups=None):
        """``groups`` (e.g. prompt ids): inner folds keep each group on one side, so the
        out-of-fold predictions the meta-learner sees are for unseen groups."""
        self.check_config()
        X = _as_rows(X)
        if X_val is not None:
            X_val = _as_rows(X_val)
        y = np.asarray(y, dtype=np.float64)
        single = y.ndim == 1
        Y = y[:, None] if single else y
        if len(Y) != len(X):
            raise ValueError(f"X has {len(X)} rows, y {len(Y)}")
        bases = self._bases()
        folds = self._folds(len(Y), groups)
        parallel = Parallel(n_jobs=self.n_jobs)
        together = [self.batch_trials and _trains_together(est, X_val) for _, est in bases]
        alone = [m for m in range(len(bases)) if not together[m]]
        finals: list = [None] * len(bases)
        # Final models first: with one search per base, their winners fix the fold models'
        # hyper-parameters (every search ran on the stack's training rows only).
        fitted = parallel(delayed(_fit)(bases[m][1], X, y, X_val, y_val) for m in alone)
        for m, result in zip(alone, fitted):
            finals[m] = result
        fold_bases = {
            m: bases[m][1] if self.tune_per_fold else _frozen(bases[m][1], finals[m][0])
            for m in alone
        }
        jobs = [(f, m) for f in range(len(folds)) for m in alone]
        fold_out = parallel(
            delayed(_fit_predict_fold)(fold_bases[m], X, y, folds[f][0], folds[f][1], X_val, y_val)
            for f, m in jobs
        )
        oof = np.full((len(Y), len(bases), Y.shape[1]), np.nan)
        for (f, m), (pred, _) in zip(jobs, fold_out):
            oof[folds[f][1], m, :] = pred
        for m in np.flatnonzero(together):
            preds, final = _oof_together(bases[m][1], X, y, folds)
            for (_, held), pred in zip(folds, preds):
                oof[held, m, :] = pred
            finals[m] = (final, int(getattr(final, "n_convergence_warnings_", 0)))
        names = [name for name, _ in bases]
        fits, choices = [], []
        for j in range(Y.shape[1]):
            if self.allow_best_base and len(bases) > 1:
                w, b, k = choose_meta(oof[:, :, j], Y[:, j], self.meta, folds)
            else:
                (w, b), k = fit_meta(oof[:, :, j], Y[:, j], self.meta), None
            fits.append((w, b))
            choices.append("blend" if k is None else names[k])
        self.estimators_ = [model for model, _ in finals]
        self.named_estimators_ = dict(zip(names, self.estimators_))
        self.oof_predictions_ = oof[:, :, 0] if single else oof
        coef = np.stack([w for w, _ in fits])
        intercept = np.array([b for _, b in fits])
        self.coef_ = coef[0] if single else coef
        self.intercept_ = float(intercept[0]) if single else intercept
        weights = [dict(zip(names, map(float, row))) for row in coef]
        self.meta_weights_ = weights[0] if single else weights
        self.meta_choice_ = choices[0] if single else choices
        self.best_params_ = {
            name: est.best_params_
            for name, est in self.named_estimators_.items()
            if getattr(est, "best_params_", None)
        } or None
        self.n_convergence_warnings_ = sum(w for _, w in finals) + sum(w for _, w in fold_out)
        self.single_output_ = single
        self.n_outputs_ = Y.shape[1]
        return self

    def base_predictions(self, X) -> np.ndarray:
        """[N, m, k] predictions of the refit base heads."""
        check_is_fitted(self, "estimators_")
        X = _as_rows(X)
        return np.stack(
            [
                np.asarray(est.predict(X), dtype=np.float64).reshape(len(X), -1)
                for est in self.estimators_
            ],
            axis=1,
        )

    def predict(self, X) -> np.ndarray:
        P = self.base_predictions(X)
        coef = np.atleast_2d(self.coef_)
        intercept = np.atleast_1d(self.intercept_)
        pred = np.einsum("nmk,km->nk", P, coef) + intercept[None, :]
        return pred[:, 0] if self.single_output_ else pred
