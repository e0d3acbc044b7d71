"""Evaluate a head under the field's protocols: repeated splits, metrics per MOS dimension,
median and std over trials, model-level (per generator) correlation and, with prompt
groups, the AIGC benchmarks' ranking metrics (within-prompt pairwise accuracy, mean
per-prompt SRCC) and the generator leaderboard's pairwise agreement.

    result = evaluate(create_head("svr", search="standard"), X, y,
                      groups={"prompt": p, "generator": g}, split="prompt-disjoint", trials=10)
    print(result.table())            # markdown: median ± std per metric and dimension
    result.to_csv("results.csv")     # one row per dimension (per_trial=True: per trial too)
    result.median("srcc")            # a number, for notebooks and tests

Each trial fits a fresh ``sklearn.base.clone`` of the head, seeded with the split's seed
(its ``random_state`` or ``seed`` parameter), on the training rows only. Protocols with a
validation part (``random-7:1:2``) hand it to heads whose ``fit`` accepts ``X_val, y_val``
(the classical heads rank their search candidates on it); other heads do not see it.

Deep heads train their trials together (``batch_trials=True``, the default): one vectorised
model for all splits (``aigvqa.heads.trials.fit_trials``), whose per-trial results equal
fitting the trials one by one up to float rounding; a trial's ``fit_seconds`` is then the
group's time divided by the trials. ``batch_trials=False`` (``--no-batch-trials``) fits them
one by one; with ``n_jobs=1`` the progress bar then shows each trial's epoch and validation
loss, as the trials-together bar shows its epochs.

``evaluate_cache`` does the same from a feature cache and a head name (what ``aigvqa
evaluate`` runs), reading rows through ``pipeline.training_data``.
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from tqdm.auto import tqdm

from aigvqa.heads.classical import fit_counting_convergence
from aigvqa.heads.featureset import FeatureSet
from aigvqa.pipeline.evaluation.metrics import (
    MappingFitWarning,
    all_metrics,
    generator_rank_agreement,
    model_level_correlation,
    ranking_metrics,
)

# The result classes and their tables live in results; their names stay importable from
# here, where the API has always had them.
from aigvqa.pipeline.evaluation.results import (  # noqa: F401  (re-exported)
    FALLBACK_NAMES,
    MODEL_LEVEL_NAMES,
    TABLE_METRICS,
    EvaluationResult,
    TrialResult,
)
from aigvqa.pipeline.evaluation.splits import Split, make_splits

# -- running trials ---------------------------------------------------------------------------


def accepts_validation(head) -> bool:
    """Whether ``head.fit`` takes ``X_val, y_val`` (the optional validation hook)."""
    params = inspect.signature(head.fit).parameters
    return "X_val" in params and "y_val" in params


def seeded(head, seed: int):
    """``head`` with its ``random_state`` / ``seed`` parameter set to ``seed`` (when it has one);
    a stack's bases get it too, so each searches and trains as it would alone in this trial
    (under VIDEVAL's protocol: the inner split seeded ``ceil(6.6 * i)``)."""
    params = head.get_params(deep=False)
    for key in ("random_state", "seed"):
        if key in params:
            head.set_params(**{key: seed})
    bases = params.get("estimators")
    if isinstance(bases, list) and all(isinstance(b, tuple | list) and len(b) == 2 for b in bases):
        from aigvqa.heads.registry import create_head

        nested = {}
        for name, base in bases:
            base_params = (create_head(base) if isinstance(base, str) else base).get_params(
                deep=False
            )
            nested.update(
                {f"{name}__{key}": seed for key in ("random_state", "seed") if key in base_params}
            )
        head.set_params(**nested)
    return head


def _as_2d(y) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        return y[:, None]
    if y.ndim != 2:
        raise ValueError(f"y must be [N] or [N, k], got shape {y.shape}")
    return y


def _labels(label_names, k: int) -> list[str]:
    if label_names is None:
        return ["mos"] if k == 1 else [f"mos{j}" for j in range(k)]
    label_names = list(label_names)
    if len(label_names) != k:
        raise ValueError(f"{len(label_names)} label names for {k} MOS dimensions")
    return label_names


def _score(
    Y_test: np.ndarray, pred: np.ndarray, labels: list[str], generators, prompts=None
) -> dict:
    metrics = {}
    for j, label in enumerate(labels):
        with warnings.catch_warnings():
            # a fit that falls back is counted per trial (logistic_fallback, poly3_fallback)
            # and reported once under the table, not warned in the middle of the progress bar
            warnings.simplefilter("ignore", MappingFitWarning)
            m = all_metrics(Y_test[:, j], pred[:, j])
        if prompts is not None:
            m.update(ranking_metrics(Y_test[:, j], pred[:, j], prompts))
        if generators is not None:
            if np.unique(generators).size >= 3:
                ml = model_level_correlation(pred[:, j], Y_test[:, j], generators)
                m["model_srcc"], m["model_plcc"] = ml["srcc"], ml["plcc"]
            else:  # a fold of one or two generators has no model-level correlation
                m["model_srcc"] = m["model_plcc"] = float("nan")
            m["model_pair_acc"] = generator_rank_agreement(pred[:, j], Y_test[:, j], generators)[
                "pair_acc"
            ]
        metrics[label] = m
    return metrics


def _prompt_groups(groups) -> np.ndarray | None:
    """Per-row prompt labels for the ranking metrics, None when no row has one."""
    if not groups or "prompt" not in groups:
        return None
    prompts = np.asarray(groups["prompt"], dtype=object).ravel()
    return prompts if any(p is not None and str(p) != "" for p in prompts) else None


def accepts_groups(head) -> bool:
    """Whether ``head.fit`` takes ``groups`` (heads with inner folds, e.g. stacking)."""
    return "groups" in inspect.signature(head.fit).parameters


@dataclass
class FitInfo:
    """What a fitted head says about itself, in ``TrialResult`` field order."""

    best_params: Any
    meta_weights: Any
    meta_choice: Any
    convergence_warnings: int

    def __iter__(self):
        return iter(
            (self.best_params, self.meta_weights, self.meta_choice, self.convergence_warnings)
        )


def _epoch_postfix(bar, trial: str):
    """A deep head's ``verbose`` callback that shows, in the evaluation's bar, the trial's
    epoch and its validation loss (what ``--no-batch-trials`` fits one by one show)."""

    def report(head, record) -> None:
        text = f"{trial}, epoch {int(record['epoch']) + 1}/{int(head._hp('epochs'))}"
        if "val_loss" in record:
            text += f", val_loss {record['val_loss']:.4g}"
        bar.set_postfix_str(text)

    return report


def _fit_predict(
    head, X_train, y_train, X_val, y_val, X_test, seed: int, prompts_train=None, on_epoch=None
):
    model = seeded(clone(head), seed)
    if on_epoch is not None and model.get_params(deep=False).get("verbose", True) is False:
        model.set_params(verbose=on_epoch)  # a deep head left quiet reports to the bar
    y_fit = y_train[:, 0] if y_train.shape[1] == 1 else y_train
    kwargs = {}
    if prompts_train is not None and accepts_groups(model):
        # inner folds (stacking) keep the videos of one prompt together, so the meta-learner
        # is fit on predictions for prompts the base heads did not see, as the test will be
        kwargs["groups"] = prompts_train
    start = time.perf_counter()
    if X_val is not None and accepts_validation(model):
        y_v = y_val[:, 0] if y_val.shape[1] == 1 else y_val
        kwargs.update(X_val=X_val, y_val=y_v)
    # ConvergenceWarnings (ElasticNet searches raise hundreds) are counted and reported as
    # one line: the classical heads count their own, a plain estimator's are caught here
    warned = fit_counting_convergence(model, X_train, y_fit, **kwargs)
    warned += int(getattr(model, "n_convergence_warnings_", 0))
    seconds = time.perf_counter() - start
    pred = np.asarray(model.predict(X_test), dtype=np.float64).reshape(len(X_test), -1)
    return (
        pred,
        seconds,
        FitInfo(
            getattr(model, "best_params_", None),
            getattr(model, "meta_weights_", None),
            getattr(model, "meta_choice_", None),
            warned,
        ),
    )


def _run_trial(
    head,
    X: FeatureSet,
    Y: np.ndarray,
    split: Split,
    labels,
    generators,
    prompts=None,
    prompt_groups=None,
    on_epoch=None,
) -> TrialResult:
    has_val = split.val is not None and len(split.val) > 0
    pred, seconds, best = _fit_predict(
        head,
        X[split.train],
        Y[split.train],
        X[split.val] if has_val else None,
        Y[split.val] if has_val else None,
        X[split.test],
        split.seed,
        prompts_train=None if prompts is None else prompts[split.train],
        on_epoch=on_epoch,
    )
    gen = None if generators is None else generators[split.test]
    ranked = None if prompt_groups is None else prompt_groups[split.test]
    return TrialResult(
        split.name,
        split.seed,
        split.train,
        split.val,
        split.test,
        pred,
        _score(Y[split.test], pred, labels, gen, ranked),
        seconds,
        *best,
    )


def _trains_trials_together(head) -> bool:
    """A deep head whose trials ``fit_trials`` can vectorise. Only a deep head can be one,
    and a deep head's module has been imported by then: classical runs never import torch."""
    if "aigvqa.heads.base" not in sys.modules:
        return False
    from aigvqa.heads.trials import can_train_together

    return can_train_together(head)


def _own_params(head) -> dict:
    get_params = getattr(head, "get_params", None)
    return get_params(deep=False) if get_params is not None else {}


def _run_trials_together(
    head, X: FeatureSet, Y: np.ndarray, splits: list[Split], labels, generators, prompt_groups, bar
) -> list[TrialResult]:
    from aigvqa.heads.trials import fit_trials, predict_trials

    def on_epoch(epoch: int, epochs: int) -> None:
        bar.set_postfix_str(f"trials together, epoch {epoch}/{epochs}")

    start = time.perf_counter()
    heads = fit_trials(
        head,
        X,
        Y[:, 0] if Y.shape[1] == 1 else Y,
        [s.train for s in splits],
        seeds=[s.seed for s in splits],
        on_epoch=on_epoch,
    )
    total = time.perf_counter() - start
    predictions = predict_trials(heads, X, [s.test for s in splits])
    results = []
    for s, h, pred in zip(splits, heads, predictions):
        pred = np.asarray(pred, dtype=np.float64).reshape(len(s.test), -1)
        gen = None if generators is None else generators[s.test]
        ranked = None if prompt_groups is None else prompt_groups[s.test]
        results.append(
            TrialResult(
                s.name,
                s.seed,
                s.train,
                s.val,
                s.test,
                pred,
                _score(Y[s.test], pred, labels, gen, ranked),
                total / len(splits),
                getattr(h, "best_params_", None),
            )
        )
        bar.update()
    return results


def _head_label(head) -> str:
    try:
        from aigvqa.heads.registry import head_name

        return head_name(type(head))
    except (ImportError, ValueError):  # an unregistered estimator (e.g. a plain sklearn one)
        return type(head).__name__


def evaluate(
    head,
    X: FeatureSet,
    y,
    groups: Mapping[str, Sequence] | None = None,
    split: str | Sequence[Split] = "random-8:2",
    trials: int = 10,
    seed: int = 0,
    label_names: Sequence[str] | None = None,
    n_jobs: int = 1,
    progress: bool = True,
    batch_trials: bool = True,
) -> EvaluationResult:
    """Fit and test clones of ``head`` on every split of a protocol (see ``splits``).

    ``groups``: per-row "prompt" / "generator" labels (needed by prompt-disjoint and
    leave-one-generator-out; a "generator" group also adds model-level correlation and the
    generator pairwise accuracy, a "prompt" group the within-prompt ranking metrics, computed
    on each trial's test rows).
    ``split``: a protocol name or a list of ``Split`` objects. ``n_jobs`` runs trials in
    parallel processes; results do not depend on it. ``batch_trials``: a deep head trains
    all its trials together as one vectorised model (module docstring; ``n_jobs`` is then
    not used); False fits them one by one, and so do the deep bases of a stack (which
    otherwise train their out-of-fold models together: ``StackingHead(batch_trials=...)``).
    """
    Y = _as_2d(y)
    if len(Y) != len(X):
        raise ValueError(f"X has {len(X)} rows, y {len(Y)}")
    labels = _labels(label_names, Y.shape[1])
    generators = (
        None if not groups or "generator" not in groups else np.asarray(groups["generator"]).ravel()
    )
    prompt_groups = _prompt_groups(groups)
    prompts = None
    if (
        isinstance(split, str)
        and split.startswith("prompt-disjoint")
        and groups
        and "prompt" in groups
    ):
        prompts = np.asarray(groups["prompt"]).ravel()
    if isinstance(split, str):
        splits, split_name = make_splits(split, len(Y), groups, trials, seed), split
    else:
        splits, split_name = list(split), "custom"
    name = _head_label(head)
    if not batch_trials and "batch_trials" in _own_params(head):
        head = clone(head).set_params(batch_trials=False)  # a stack's deep bases fit alone too

    bar = tqdm(
        total=len(splits),
        desc=f"evaluate {name} ({split_name})",
        disable=not progress,
        unit="trial",
    )
    results: list[TrialResult | None] = [None] * len(splits)
    if batch_trials and len(splits) > 1 and _trains_trials_together(head):
        results = _run_trials_together(head, X, Y, splits, labels, generators, prompt_groups, bar)
    elif n_jobs == 1:
        for i, s in enumerate(splits):
            report = _epoch_postfix(bar, f"trial {i + 1}/{len(splits)}") if progress else None
            results[i] = _run_trial(
                head, X, Y, s, labels, generators, prompts, prompt_groups, on_epoch=report
            )
            bar.update()
    else:

        def indexed(i, s):
            return i, _run_trial(head, X, Y, s, labels, generators, prompts, prompt_groups)

        runner = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for i, r in runner(delayed(indexed)(i, s) for i, s in enumerate(splits)):
            results[i] = r
            bar.update()
    bar.close()

    result = EvaluationResult(name, split_name, labels, Y, results)
    tested = np.concatenate([s.test for s in splits])
    if generators is not None and tested.size == len(Y) and np.unique(tested).size == len(Y):
        # every row predicted once by a model that never saw its generator (or its row)
        order = np.argsort(tested)
        result.pooled_model_level = {}
        for j, label in enumerate(labels):
            pred = np.concatenate([t.y_pred[:, j] for t in results])[order]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result.pooled_model_level[label] = model_level_correlation(
                    pred, Y[:, j], generators
                )
            result.pooled_model_level[label]["pair_acc"] = generator_rank_agreement(
                pred, Y[:, j], generators
            )["pair_acc"]
    return result


def cross_dataset(
    head,
    X_a: FeatureSet,
    y_a,
    X_b: FeatureSet,
    y_b,
    groups_b: Mapping[str, Sequence] | None = None,
    label_names: Sequence[str] | None = None,
    seed: int = 0,
    name: str = "A->B",
) -> EvaluationResult:
    """Train on all of dataset A, test on all of dataset B (one trial).

    Trial ``train`` indexes A's rows and ``test`` B's rows; ``y_true`` is B's MOS.
    """
    Y_a, Y_b = _as_2d(y_a), _as_2d(y_b)
    if Y_a.shape[1] != Y_b.shape[1]:
        raise ValueError(f"A has {Y_a.shape[1]} MOS dimensions, B {Y_b.shape[1]}")
    labels = _labels(label_names, Y_b.shape[1])
    pred, seconds, best = _fit_predict(head, X_a, Y_a, None, None, X_b, seed)
    gen = (
        None
        if not groups_b or "generator" not in groups_b
        else np.asarray(groups_b["generator"]).ravel()
    )
    trial = TrialResult(
        name,
        seed,
        np.arange(len(Y_a)),
        None,
        np.arange(len(Y_b)),
        pred,
        _score(Y_b, pred, labels, gen, _prompt_groups(groups_b)),
        seconds,
        *best,
    )
    return EvaluationResult(_head_label(head), f"cross-dataset {name}", labels, Y_b, [trial])


def _selection_rules(estimator) -> str:
    """How the head (or each base of a stack) picks its hyper-parameters, in words."""
    bases = getattr(estimator, "estimators", None)
    parts = (
        [(n, b) for n, b in bases if hasattr(b, "get_params")]
        if isinstance(bases, list)
        else [("", estimator)]
    )
    words = []
    stack_tunes = getattr(estimator, "tune_bases", None) if isinstance(bases, list) else None
    for name, head in parts:
        params = head.get_params(deep=False)
        if params.get("search") is None and stack_tunes and getattr(head, "standard_search", None):
            params["search"] = stack_tunes  # what the stack gives an untuned classical base
        if params.get("search") is None:
            words.append(f"{name or _head_label(head)} does not search")
        else:
            words.append(
                f"{name or _head_label(head)} searches "
                f"{params['search'] if isinstance(params['search'], str) else 'a grid'}"
                f" ranked by {params.get('search_scoring')}"
            )
    return ", ".join(words)


def evaluate_cache(
    cache: str | Path,
    head: str | None,
    *,
    config: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    features: str | Sequence[str] | None = None,
    labels: str | Sequence[str] | None = None,
    split: str | None = None,
    trials: int | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    test_cache: str | Path | None = None,
    progress: bool = True,
    batch_trials: bool = True,
    protocol: str | None = None,
    order_from: str | Path | None = None,
    order_column: str | None = None,
):
    """``evaluate`` (or ``cross_dataset`` with ``test_cache``) of a named head on a cache.

    ``protocol`` (``pipeline.evaluation.protocols``, e.g. "videval") sets the split, the
    number of trials and the head's search defaults (``split``, ``trials`` and the head's own
    parameters win over it; the head defaults to the protocol's). Without either, the split
    is random-8:2 with 10 trials.

    Row order: VIDEVAL's splits index rows, so under ``split="videval"`` the rows are put in
    the imported file's order (the cache's ``source_order``) when every video has one;
    ``order_from`` (a CSV listing the videos, id column ``order_column`` or found) puts them
    in that file's order under any split. The result's notes say which order was used.

    With ``test_cache`` the head trains on every video of ``cache`` and is tested on every
    video of ``test_cache``, whose groups must come from the same extractors and weights.
    """
    from aigvqa.errors import ProvenanceMismatchError
    from aigvqa.pipeline.evaluation.protocols import get_protocol, protocol_params
    from aigvqa.pipeline.training_data import (
        build_head,
        load_training_data,
        order_rows,
        provenance_problems,
    )

    chosen = get_protocol(protocol) if protocol is not None else None
    split = split or (chosen.split if chosen else "random-8:2")
    trials = trials or (chosen.trials if chosen else 10)
    data = load_training_data(cache, features, labels)
    name, estimator = build_head(
        head,
        config,
        params,
        default_name=chosen.default_head if chosen else None,
        defaults=(lambda head_name, given: protocol_params(chosen, head_name, given))
        if chosen
        else None,
        X=data.X,
    )
    if test_cache is None:
        notes = []
        if order_from is not None or split == "videval":
            data, how = order_rows(data, order_from, order_column)
            notes.append(f"{len(data.ids)} videos, {how}.")
        if chosen is not None:
            notes.insert(
                0, f"protocol {chosen.name}: {chosen.summary}; {_selection_rules(estimator)}."
            )
        result = evaluate(
            estimator,
            data.X,
            data.y,
            data.groups,
            split=split,
            trials=trials,
            seed=seed,
            label_names=data.label_names,
            n_jobs=n_jobs,
            progress=progress,
            batch_trials=batch_trials,
        )
        result.notes.extend(notes)
        return result
    test = load_training_data(test_cache, data.cache_groups, data.label_names)
    problems = provenance_problems(data.provenance, test.provenance)
    if problems:
        raise ProvenanceMismatchError(
            f"{test_cache} holds features of another origin than {cache}: "
            + " | ".join(problems)
            + f" ({cache} vs {test_cache}); extract both caches with the same extractor "
            "configs and weights"
        )
    result = cross_dataset(
        estimator,
        data.X,
        data.y,
        test.X,
        test.y,
        test.groups,
        label_names=data.label_names,
        seed=seed,
        name=f"{Path(cache).stem}->{Path(test_cache).stem}",
    )
    if chosen is not None:
        result.notes.append(
            f"protocol {chosen.name}: its head and hyper-parameter selection apply "
            f"({_selection_rules(estimator)}); its splits do not: --test-cache trains once on "
            f"every video of {cache} and tests on every video of {test_cache}."
        )
    return result
