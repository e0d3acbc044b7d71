import csv
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

from aigvqa.heads.classical import ElasticNetHead
from aigvqa.heads.featureset import FeatureSet
from aigvqa.pipeline.evaluation.evaluate import accepts_validation, cross_dataset, evaluate
from aigvqa.pipeline.evaluation.metrics import MappingFitWarning
from aigvqa.pipeline.evaluation.splits import Split, SplitError


class SpyHead(RegressorMixin, BaseEstimator):
    """Predicts with a linear fit of feature 0, and reports in ``best_params_`` what it saw:
    its seed, the validation rows it was given and how many predicted rows it was fit on."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        x = X.arrays["x"][:, 0, 0]
        y = np.asarray(y, dtype=np.float64)
        self.coef_ = (
            np.polyfit(x, y, 1) if y.ndim == 1 else np.stack([np.polyfit(x, c, 1) for c in y.T])
        )
        self.seen_ = set(X.ids)
        self.best_params_ = {
            "seed": self.random_state,
            "n_val": None if X_val is None else len(X_val),
        }
        return self

    def predict(self, X):
        x = X.arrays["x"][:, 0, 0]
        self.best_params_["overlap"] = len(self.seen_ & set(X.ids))
        if np.ndim(self.coef_) == 1:
            return np.polyval(self.coef_, x)
        return np.column_stack([np.polyval(c, x) for c in self.coef_])


class ConstantHead(RegressorMixin, BaseEstimator):
    def fit(self, X, y):
        self.value_ = float(np.mean(y))
        return self

    def predict(self, X):
        return np.full(len(X), self.value_)


def _data(n=120, seed=0, prompts_per=3, generators=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3))
    gen = np.array([f"gen-{i % generators}" for i in range(n)])
    offset = np.array([int(g[-1]) for g in gen]) * 0.5  # generators differ in quality
    y = np.column_stack(
        [x[:, 0] + offset + rng.normal(0, 0.3, n), -x[:, 0] + rng.normal(0, 0.3, n)]
    )
    groups = {"prompt": np.arange(n) // prompts_per, "generator": gen}
    return FeatureSet({"x": x}, ids=[f"v{i}" for i in range(n)]), y, groups


def test_evaluate_random_splits_gives_median_and_std_per_dimension():
    X, y, groups = _data()
    result = evaluate(
        ElasticNetHead(),
        X,
        y,
        groups,
        split="random-8:2",
        trials=5,
        label_names=["spatial", "temporal"],
        progress=False,
    )
    assert len(result.trials) == 5 and result.label_names == ["spatial", "temporal"]
    for label in ("spatial", "temporal"):
        v = result.values("srcc", label)
        assert v.shape == (5,) and result.median("srcc", label) == pytest.approx(np.median(v))
        assert result.std("srcc", label) == pytest.approx(np.std(v))
        assert result.median("srcc", label) > 0.7
    assert result.median("srcc", "temporal") != result.median("srcc", "spatial")
    # a "generator" group adds model-level correlation per trial
    assert "model_srcc" in result.metric_names()
    table = result.table()
    assert "| spatial |" in table and "PLCC (logistic)" in table and "model SRCC" in table
    assert f"{result.median('srcc', 'spatial'):.4f}" in table


def test_rows_and_csv(tmp_path):
    X, y, groups = _data()
    result = evaluate(ElasticNetHead(), X, y[:, 0], split="random-7:1:2", trials=3, progress=False)
    assert result.label_names == ["mos"]
    summary = result.rows()
    assert len(summary) == 1 and summary[0]["srcc_median"] == pytest.approx(result.median("srcc"))
    per_trial = result.rows(per_trial=True)
    assert len(per_trial) == 3 and per_trial[0]["n_test"] == 24
    path = tmp_path / "results.csv"
    result.to_csv(path, per_trial=True)
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert float(back[2]["srcc"]) == pytest.approx(result.values("srcc")[2])


def test_each_trial_gets_a_fresh_seeded_head_the_val_rows_and_no_training_row_at_test():
    X, y, groups = _data()
    assert accepts_validation(SpyHead()) and not accepts_validation(ConstantHead())
    result = evaluate(
        SpyHead(random_state=999),
        X,
        y[:, 0],
        split="random-7:1:2",
        trials=4,
        seed=2,
        progress=False,
    )
    for t in result.trials:
        assert t.best_params["seed"] == t.seed  # the split's seed, not the template's 999
        assert t.best_params["n_val"] == len(t.val) == 12
        assert t.best_params["overlap"] == 0  # no test row was a training row
    assert len({t.seed for t in result.trials}) == 4
    no_val = evaluate(SpyHead(), X, y[:, 0], split="random-8:2", trials=2, progress=False)
    assert all(t.best_params["n_val"] is None for t in no_val.trials)


def test_parallel_trials_give_the_same_results():
    X, y, groups = _data()
    one = evaluate(
        ElasticNetHead(), X, y, groups, split="prompt-disjoint", trials=3, progress=False
    )
    two = evaluate(
        ElasticNetHead(), X, y, groups, split="prompt-disjoint", trials=3, n_jobs=2, progress=False
    )
    for a, b in zip(one.trials, two.trials):
        assert a.name == b.name
        np.testing.assert_allclose(a.y_pred, b.y_pred)


def test_prompt_disjoint_evaluation_needs_prompts():
    X, y, _ = _data()
    with pytest.raises(SplitError, match="prompt"):
        evaluate(ElasticNetHead(), X, y, None, split="prompt-disjoint", progress=False)


def test_leave_one_generator_out_pools_model_level_correlation():
    X, y, groups = _data(generators=5)
    result = evaluate(
        SpyHead(), X, y[:, 0], groups, split="leave-one-generator-out", progress=False
    )
    assert [t.name for t in result.trials] == [f"generator=gen-{i}" for i in range(5)]
    assert np.isnan(result.values("model_srcc")).all()  # one generator per fold: undefined per fold
    pooled = result.pooled_model_level["mos"]
    assert pooled["n_models"] == 5 and np.isfinite(pooled["srcc"])
    assert "pooled over folds (5 generators)" in result.table()


def test_mapping_fallbacks_are_reported_not_raised():
    X, y, _ = _data()
    with warnings.catch_warnings():  # counted per trial and said once under the table, not warned
        warnings.simplefilter("error", MappingFitWarning)
        result = evaluate(ConstantHead(), X, y[:, 0], split="random-8:2", trials=2, progress=False)
    assert result.fallbacks() == {"logistic_fallback": 2, "poly3_fallback": 2}
    assert "fell back to raw predictions in 2 (logistic)" in result.table()
    assert np.isnan(result.median("srcc"))


def test_custom_splits_and_cross_dataset():
    X, y, groups = _data()
    splits = [Split(np.arange(0, 80), None, np.arange(80, 120), "first-80", 7)]
    result = evaluate(SpyHead(), X, y[:, 0], split=splits, progress=False)
    assert result.split == "custom" and result.trials[0].best_params["seed"] == 7
    X_b, y_b, groups_b = _data(seed=1)
    cross = cross_dataset(SpyHead(), X, y, X_b, y_b, groups_b=groups_b, label_names=["s", "t"])
    assert len(cross.trials) == 1 and cross.y_true.shape == (120, 2)
    assert cross.median("srcc", "t") > 0.8 and np.isfinite(cross.median("model_srcc", "s"))
    assert cross.split.startswith("cross-dataset")
    # one trial: its values, without a "± 0.0000" that would read as a spread
    table = cross.table()
    assert "1 trial" in table and "median ± std" not in table and "±" not in table
    assert f"| t | {cross.median('srcc', 't'):.4f} |" in table


def test_table_says_what_the_metrics_mean():
    X, y, groups = _data()
    result = evaluate(
        ElasticNetHead(), X, y[:, 0], groups, split="random-8:2", trials=2, progress=False
    )
    table = result.table()
    assert "What the columns mean:" in table
    assert "SRCC: Spearman" in table and "RMSE" in table and "LOWER is better" in table
    assert "model SRCC:" in table  # the generator column has its line too
    assert "What the columns mean" not in result.table(legend=False)


def test_ranking_metrics_per_trial_in_table_and_csv(tmp_path):
    from aigvqa.pipeline.evaluation.metrics import (
        generator_rank_agreement,
        pairwise_accuracy,
        per_group_srcc,
    )

    X, y, groups = _data(prompts_per=4)
    result = evaluate(
        SpyHead(),
        X,
        y,
        groups,
        split="prompt-disjoint",
        trials=3,
        label_names=["spatial", "temporal"],
        progress=False,
    )
    names = result.metric_names()
    assert {"pair_acc", "prompt_srcc", "model_pair_acc"} <= set(names)
    prompts = np.asarray(groups["prompt"])
    for j, label in enumerate(result.label_names):
        for t, value in zip(result.trials, result.values("pair_acc", label)):
            mos, pred = y[t.test, j], t.y_pred[:, j]
            assert value == pytest.approx(pairwise_accuracy(mos, pred, prompts[t.test]))
            assert t.metrics[label]["prompt_srcc"] == pytest.approx(
                per_group_srcc(mos, pred, prompts[t.test])
            )
            assert t.metrics[label]["model_pair_acc"] == pytest.approx(
                generator_rank_agreement(pred, mos, groups["generator"][t.test])["pair_acc"]
            )
    # a head that orders by the right feature ranks each prompt's videos mostly right
    assert result.median("pair_acc", "temporal") > 0.8
    table = result.table()
    assert (
        "pair acc (in prompt)" in table
        and "SRCC (in prompt)" in table
        and "model pair acc" in table
    )
    result.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as fh:
        header = next(csv.reader(fh))
    assert {"pair_acc_median", "prompt_srcc_std", "model_pair_acc_median"} <= set(header)


def test_ranking_metrics_need_prompt_labels():
    X, y, groups = _data()
    plain = evaluate(SpyHead(), X, y[:, 0], None, split="random-8:2", trials=2, progress=False)
    assert "pair_acc" not in plain.metric_names() and "model_pair_acc" not in plain.metric_names()
    unlabelled = {"prompt": np.full(len(y), ""), "generator": groups["generator"]}
    result = evaluate(
        SpyHead(), X, y[:, 0], unlabelled, split="random-8:2", trials=2, progress=False
    )
    assert "pair_acc" not in result.metric_names() and "model_pair_acc" in result.metric_names()


def test_leave_one_generator_out_pools_the_generator_pair_accuracy():
    X, y, groups = _data(generators=5)
    result = evaluate(
        SpyHead(), X, y[:, 0], groups, split="leave-one-generator-out", progress=False
    )
    assert np.isnan(result.values("model_pair_acc")).all()  # one generator per fold
    assert 0.0 <= result.pooled_model_level["mos"]["pair_acc"] <= 1.0
    assert "pair acc" in result.table()


def _deep_data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4, 6)).astype(np.float16)
    lengths = rng.integers(1, 5, size=n)
    y = x[:, 0, :2].astype(float).sum(1) + 0.2 * rng.normal(size=n)
    groups = {"prompt": np.arange(n) // 4, "generator": np.array([f"g{i % 3}" for i in range(n)])}
    return FeatureSet({"x": x}, {"x": lengths}, ids=[f"v{i}" for i in range(n)]), y, groups


def test_deep_head_trials_together_equal_trials_one_by_one(monkeypatch):
    """evaluate trains a deep head's trials as one vectorised model by default; on a
    prompt-disjoint split (training sets of different sizes) every trial's metrics equal the
    one-by-one run's."""
    import aigvqa.heads.trials as trials
    from aigvqa.heads.mlp import PooledMLPHead

    calls = []
    real = trials.fit_trials
    monkeypatch.setattr(
        trials, "fit_trials", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k)
    )
    X, y, groups = _deep_data()
    head = PooledMLPHead(hidden=8, epochs=3, dropout=0.1, lr=1e-2)
    together = evaluate(head, X, y, groups, split="prompt-disjoint", trials=3, progress=False)
    assert calls == [3]
    alone = evaluate(
        head, X, y, groups, split="prompt-disjoint", trials=3, progress=False, batch_trials=False
    )
    assert calls == [3]
    assert len({len(t.train) for t in together.trials}) > 1  # unequal training sets
    assert together.metric_names() == alone.metric_names()  # within-prompt ranking metrics too
    for a, b in zip(alone.trials, together.trials):
        np.testing.assert_array_equal(a.test, b.test)
        np.testing.assert_allclose(b.y_pred, a.y_pred, rtol=1e-4, atol=1e-5)
        assert abs(a.metrics["mos"]["srcc"] - b.metrics["mos"]["srcc"]) < 1e-3


def test_classical_heads_ignore_batch_trials():
    X, y, groups = _data()
    a = evaluate(ElasticNetHead(), X, y, groups, split="random-8:2", trials=3, progress=False)
    b = evaluate(
        ElasticNetHead(),
        X,
        y,
        groups,
        split="random-8:2",
        trials=3,
        progress=False,
        batch_trials=False,
    )
    assert a.values("srcc", "mos0").tolist() == b.values("srcc", "mos0").tolist()


class InvertedHead(SpyHead):
    """Ranks the videos backwards: the negated linear fit."""

    def predict(self, X):
        return -super().predict(X)


def test_an_inverted_ranking_is_flagged_beside_poly3_plcc_and_ntire():
    X, y, _ = _data()
    result = evaluate(InvertedHead(), X, y[:, 0], split="random-8:2", trials=2, progress=False)
    assert (result.values("srcc") < 0).all() and (result.values("ntire") > 0.5).all()
    assert "SRCC is negative in 2 of 2 trials" in result.table()
    plain = evaluate(SpyHead(), X, y[:, 0], split="random-8:2", trials=2, progress=False)
    assert "SRCC is negative" not in plain.table()


def test_in_prompt_ranking_that_is_nan_in_every_trial_says_why():
    X, y, groups = _data(generators=5)
    result = evaluate(
        SpyHead(), X, y[:, 0], groups, split="leave-one-generator-out", progress=False
    )
    assert np.isnan(result.values("pair_acc")).all()
    table = result.table()
    assert "within-prompt ranking (pair_acc, prompt_srcc) is nan" in table
    assert "each fold tests one generator" in table
    ranked = evaluate(SpyHead(), X, y[:, 0], groups, split="random-8:2", trials=2, progress=False)
    assert "within-prompt ranking" not in ranked.table()
