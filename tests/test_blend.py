import numpy as np
import pytest
from scipy import stats
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, KFold

from aigvqa.heads.blend import StackingHead, fit_meta
from aigvqa.heads.classical import ElasticNetHead, HeadParameterError, LightGBMHead
from aigvqa.heads.featureset import FeatureSet


class MemoriserHead(RegressorMixin, BaseEstimator):
    """A lookup table on video ids: perfect on rows it was fit on, the training mean elsewhere.
    If any of its predictions for a row came from a model that saw the row, stacking would
    see a perfect base model and give it all the weight."""

    def __init__(self, fallback="mean"):
        self.fallback = fallback

    def fit(self, X, y):
        y = np.asarray(y, dtype=np.float64)
        self.table_ = dict(zip(X.ids, y))
        self.mean_ = y.mean(axis=0)
        return self

    def predict(self, X):
        return np.array([self.table_.get(i, self.mean_) for i in X.ids])


def _data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3))
    y = 2 * x[:, 0] + rng.normal(0, 0.8, n)  # an honest head can learn part of it
    return FeatureSet({"x": x}, ids=[f"v{i}" for i in range(n)]), y


@pytest.mark.parametrize("meta", ["nnls", "linear"])
def test_stacking_never_learns_from_leaked_predictions(meta):
    X, y = _data()
    stack = StackingHead([("memo", MemoriserHead()), ("enet", ElasticNetHead())], meta=meta, cv=5,
                         random_state=0).fit(X, y)
    # The memoriser's out-of-fold predictions are honest: every row gets the mean of the other
    # folds, never its own target.
    folds = list(KFold(5, shuffle=True, random_state=0).split(np.arange(len(y))))
    memo_oof = stack.oof_predictions_[:, 0]
    for train, held in folds:
        np.testing.assert_allclose(memo_oof[held], y[train].mean())
    assert not np.any(np.isclose(memo_oof, y))
    # so it earns (almost) no weight and the honest head carries the blend; a leaky stack
    # would give the memoriser weight ~1 and the honest head ~0. (The fold means carry a
    # little honest signal, anti-correlated with each fold's own mean, which "linear" may use.)
    memo_w, enet_w = stack.coef_
    contribution = abs(memo_w) * memo_oof.std()
    assert contribution < 0.1 * abs(enet_w) * stack.oof_predictions_[:, 1].std()
    assert enet_w > 0.8
    # refit on all rows, the memoriser is perfect on them, but the blend does not trust it
    train_pred = stack.predict(X)
    assert np.abs(train_pred - y).mean() > 0.3


def test_nnls_meta_learner_has_non_negative_weights_and_free_intercept():
    rng = np.random.default_rng(1)
    P = rng.normal(0, 1, (200, 3))
    y = 5 + 1.5 * P[:, 0] - 2.0 * P[:, 1] + rng.normal(0, 0.1, 200)
    w, b = fit_meta(P, y, "nnls")
    assert np.all(w >= 0) and w[1] == 0 and w[0] == pytest.approx(1.5, abs=0.1)
    assert b == pytest.approx(5, abs=0.2)
    w_lin, b_lin = fit_meta(P, y, "linear")
    ref = LinearRegression().fit(P, y)
    np.testing.assert_allclose(w_lin, ref.coef_)
    assert b_lin == pytest.approx(ref.intercept_)


def test_meta_learner_is_fit_on_the_oof_predictions():
    X, y = _data(120)
    stack = StackingHead([("enet", ElasticNetHead()), ("lgbm", LightGBMHead(n_estimators=40))], meta="linear",
                         cv=4).fit(X, y)
    w, b = fit_meta(stack.oof_predictions_, y, "linear")
    np.testing.assert_allclose(stack.coef_, w)
    base = np.column_stack([e.predict(X) for e in stack.estimators_])
    np.testing.assert_allclose(stack.predict(X), base @ w + b)


def test_multi_output_stacking():
    X, y = _data(120)
    Y = np.column_stack([y, -y + 1])
    stack = StackingHead([("memo", MemoriserHead()), ("enet", ElasticNetHead())], cv=3).fit(X, Y)
    assert stack.oof_predictions_.shape == (120, 2, 2) and stack.coef_.shape == (2, 2)
    pred = stack.predict(X[:10])
    assert pred.shape == (10, 2)
    assert stats.spearmanr(Y[:, 1], stack.predict(X)[:, 1])[0] > 0.8


def test_clone_nested_params_and_gridsearch():
    stack = StackingHead([("enet", ElasticNetHead()), ("lgbm", LightGBMHead(n_estimators=30))], cv=3)
    params = stack.get_params()
    assert params["enet__alpha"] == 0.01 and params["lgbm__n_estimators"] == 30
    copy = clone(stack).set_params(enet__alpha=0.5)
    assert dict(copy.estimators)["enet"].alpha == 0.5
    assert dict(stack.estimators)["enet"].alpha == 0.01
    X, y = _data(90)
    search = GridSearchCV(stack, {"meta": ["nnls", "linear"]}, cv=3).fit(X, y)
    assert search.best_params_["meta"] in ("nnls", "linear")


def test_estimators_by_registered_name_and_bad_configs():
    X, y = _data(60)
    stack = StackingHead([("enet", "elasticnet"), ("memo", MemoriserHead())], cv=3).fit(X, y)
    assert isinstance(stack.named_estimators_["enet"], ElasticNetHead)
    with pytest.raises(HeadParameterError, match="unique"):
        StackingHead([("a", MemoriserHead()), ("a", MemoriserHead())]).fit(X, y)
    with pytest.raises(HeadParameterError, match="meta"):
        StackingHead([("a", MemoriserHead())], meta="ridge").fit(X, y)


class GroupWitness(RegressorMixin, BaseEstimator):
    """Predicts, for each row, how many training rows shared its group (0 when its group
    was never seen in training)."""

    def fit(self, X, y):
        self.train_groups_ = [i.split(":")[0] for i in X.ids]
        return self

    def predict(self, X):
        return np.array([float(self.train_groups_.count(i.split(":")[0])) for i in X.ids])


def test_grouped_inner_folds_never_predict_a_row_from_its_own_group():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(12), 5)
    X = FeatureSet({"f": rng.normal(size=(60, 3))}, ids=[f"p{g}:{i}" for i, g in enumerate(groups)])
    y = rng.normal(size=60)
    stack = StackingHead([("witness", GroupWitness()), ("en", ElasticNetHead())], cv=4)
    stack.fit(X, y, groups=groups.astype(str))
    assert np.all(stack.oof_predictions_[:, 0] == 0)  # no out-of-fold row had its prompt in training
    plain = StackingHead([("witness", GroupWitness()), ("en", ElasticNetHead())], cv=4).fit(X, y)
    assert np.any(plain.oof_predictions_[:, 0] > 0)  # ungrouped folds do mix a prompt's videos


def test_prompt_disjoint_evaluation_hands_prompt_groups_to_stacking(monkeypatch):
    from aigvqa.pipeline.evaluation.evaluate import evaluate

    seen = []
    real_fit = StackingHead.fit

    def spy(self, X, y, X_val=None, y_val=None, groups=None):
        seen.append(groups)
        return real_fit(self, X, y, X_val=X_val, y_val=y_val, groups=groups)

    monkeypatch.setattr(StackingHead, "fit", spy)
    rng = np.random.default_rng(4)
    prompts = np.repeat([f"p{i}" for i in range(15)], 4)
    X = FeatureSet({"f": rng.normal(size=(60, 3))})
    y = X.arrays["f"][:, 0, 0] + rng.normal(scale=0.1, size=60)
    head = StackingHead([("en", ElasticNetHead()), ("en2", ElasticNetHead(alpha=0.5))], cv=3)
    evaluate(head, X, y, {"prompt": prompts}, split="prompt-disjoint", trials=2, progress=False)
    assert len(seen) == 2 and all(g is not None and len(g) == 48 for g in seen)
    evaluate(head, X, y, {"prompt": prompts}, split="random-8:2", trials=1, progress=False)
    assert seen[-1] is None
