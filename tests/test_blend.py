import numpy as np
import pytest
from scipy import stats
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, KFold

from aigvqa.heads.blend import StackingHead, fit_meta
from aigvqa.heads.classical import ElasticNetHead, HeadParameterError, LightGBMHead
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.registry import create_head


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
    stack = StackingHead(
        [("memo", MemoriserHead()), ("enet", ElasticNetHead())], meta=meta, cv=5, random_state=0
    ).fit(X, y)
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
    stack = StackingHead(
        [("enet", ElasticNetHead()), ("lgbm", LightGBMHead(n_estimators=40))], meta="linear", cv=4
    ).fit(X, y)
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
    stack = StackingHead(
        [("enet", ElasticNetHead()), ("lgbm", LightGBMHead(n_estimators=30))], cv=3
    )
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
    assert np.all(
        stack.oof_predictions_[:, 0] == 0
    )  # no out-of-fold row had its prompt in training
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


# -- tuned bases, best-base fallback, meta weights (issue 16) --------------------------------


class SearchWitness(RegressorMixin, BaseEstimator):
    """A classical-looking head (``search`` parameter, ``standard_search`` grid) that logs the
    ids and the search setting of every fit, and predicts its training mean."""

    standard_search = {"shift": [0.0, 1.0]}
    log: list = []

    def __init__(self, search=None, shift=0.0):
        self.search = search
        self.shift = shift

    def fit(self, X, y):
        SearchWitness.log.append((frozenset(X.ids), self.search, self.shift))
        self.mean_ = float(np.mean(y)) + self.shift
        if self.search is not None:
            self.best_params_ = {"shift": 0.0}
        return self

    def predict(self, X):
        return np.full(len(X), self.mean_)


def test_bases_are_tuned_once_on_the_training_rows_and_folds_reuse_the_winner():
    X, y = _data(100)
    SearchWitness.log = []
    stack = StackingHead([("w", SearchWitness()), ("en", ElasticNetHead())], cv=4).fit(X, y)
    searched = [entry for entry in SearchWitness.log if entry[1] is not None]
    assert (
        len(searched) == 1 and searched[0][0] == frozenset(X.ids) and searched[0][1] == "standard"
    )
    fold_fits = [entry for entry in SearchWitness.log if entry[1] is None]
    assert len(fold_fits) == 4 and all(
        len(ids) == 75 and shift == 0.0 for ids, _, shift in fold_fits
    )
    # the classical base was given its standard grid too, and says what it chose
    assert stack.named_estimators_["en"].search == "standard"
    assert set(stack.best_params_) == {"w", "en"} and "alpha" in stack.best_params_["en"]
    # the user's own base objects are left untouched
    assert dict(stack.estimators)["en"].search is None


def test_per_fold_tuning_never_lets_a_search_see_its_held_out_rows():
    X, y = _data(100)
    SearchWitness.log = []
    StackingHead([("w", SearchWitness()), ("en", ElasticNetHead())], cv=4, tune_per_fold=True).fit(
        X, y
    )
    folds = list(KFold(4, shuffle=True, random_state=0).split(np.arange(100)))
    searched = sorted((entry[0] for entry in SearchWitness.log if entry[1] == "standard"), key=len)
    assert len(searched) == 5  # one search per fold, one for the final model
    for ids, (train, _) in zip(searched[:4], sorted(folds, key=lambda f: len(f[0]))):
        assert len(ids) == len(train)
    fold_sets = {frozenset(X.ids[train]) for train, _ in folds}
    assert set(searched[:4]) == fold_sets and searched[4] == frozenset(X.ids)


def test_untuned_bases_on_request():
    X, y = _data(60)
    stack = StackingHead(
        [("en", ElasticNetHead()), ("en2", ElasticNetHead(alpha=0.3))], cv=3, tune_bases=None
    ).fit(X, y)
    assert stack.named_estimators_["en"].search is None and stack.best_params_ is None
    off = StackingHead([("en", ElasticNetHead())], cv=3, tune_bases=False).fit(
        X, y
    )  # what a TOML file can say
    assert off.named_estimators_["en"].search is None
    with pytest.raises(HeadParameterError, match="tune_bases"):
        StackingHead([("en", ElasticNetHead())], tune_bases="grid").fit(X, y)


def _halves(n=400, seed=0, noise=0.3):
    """y = f(a) + g(b) + noise, with a and b independent feature blocks."""
    rng = np.random.default_rng(seed)
    a, b, junk = rng.normal(size=(n, 4)), rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    y = (
        a @ np.array([1.0, -0.6, 0.4, 0.2])
        + b @ np.array([0.9, 0.5, -0.5, 0.3])
        + rng.normal(0, noise, n)
    )
    return FeatureSet({"a": a, "b": b, "junk": junk}), y


def _test_srcc(head, X, y, n_train=300):
    head.fit(X[:n_train], y[:n_train])
    return stats.spearmanr(y[n_train:], head.predict(X[n_train:]))[0], head


def test_a_stack_whose_signal_is_in_one_base_stays_with_that_base():
    X, y = _halves()
    y = y - X.arrays["b"][:, 0] @ np.array([0.9, 0.5, -0.5, 0.3])  # all the signal in "a" now
    strong, _ = _test_srcc(ElasticNetHead(features=["a"]), X, y)
    stack_srcc, stack = _test_srcc(
        StackingHead(
            [
                ("a", ElasticNetHead(features=["a"])),
                ("junk", ElasticNetHead(features=["junk"])),
                ("lgbm", LightGBMHead(features=["junk"], n_estimators=50)),
            ]
        ),
        X,
        y,
    )
    assert strong > 0.8
    assert stack_srcc >= strong - 0.01
    assert stack.meta_weights_["a"] > 0.8 and set(stack.meta_weights_) == {"a", "junk", "lgbm"}


def test_a_stack_of_bases_with_independent_halves_of_the_signal_beats_both():
    X, y = _halves()
    only_a, _ = _test_srcc(ElasticNetHead(features=["a"]), X, y)
    only_b, _ = _test_srcc(ElasticNetHead(features=["b"]), X, y)
    stack_srcc, stack = _test_srcc(
        StackingHead(
            [("a", ElasticNetHead(features=["a"])), ("b", ElasticNetHead(features=["b"]))]
        ),
        X,
        y,
    )
    assert stack.meta_choice_ == "blend"
    assert stack_srcc > max(only_a, only_b) + 0.05
    assert min(stack.meta_weights_.values()) > 0.5


def test_the_best_single_base_wins_when_blending_cannot_help():
    from aigvqa.heads.blend import choose_meta

    rng = np.random.default_rng(5)
    y = rng.normal(size=40)
    # base 0 is informative; bases 1..10 are noise that a linear blend fits to chance structure
    P = np.column_stack([y + rng.normal(0, 0.5, 40), rng.normal(size=(40, 10))])
    folds = list(KFold(5, shuffle=True, random_state=0).split(P))
    w, b, k = choose_meta(P, y, "linear", folds)
    assert k == 0 and np.all(w[1:] == 0.0) and w[0] > 0.5
    assert np.all(fit_meta(P, y, "linear")[0][1:] != 0.0)  # what the blend alone would do
    # with two bases that each carry half of the signal, the blend is kept
    z = rng.normal(size=(40, 2))
    halves = z + rng.normal(0, 0.2, (40, 2))
    w, b, k = choose_meta(halves, z.sum(axis=1), "nnls", folds)
    assert k is None and np.all(w > 0.5)


def test_deep_and_classical_bases_stack_together():
    from aigvqa.heads.msavqa import MSAVQAHead

    rng = np.random.default_rng(6)
    n = 60
    frames = rng.normal(size=(n, 4, 8)).astype(np.float16)
    text = rng.normal(size=(n, 1, 8)).astype(np.float16)
    y = frames.astype(np.float64).mean(axis=(1, 2)) + rng.normal(0, 0.1, n)
    X = FeatureSet({"clip-frames": frames, "clip-text-pooled": text})
    msa = MSAVQAHead(
        preset="small", d_model=16, adapter_dim=8, mlp_hidden=16, epochs=2, batch_size=16
    )
    stack = StackingHead([("msa", msa), ("svr", "svr")], cv=3).fit(X[:45], y[:45])
    assert np.isfinite(stack.predict(X[45:])).all()
    assert set(stack.meta_weights_) == {"msa", "svr"}
    assert set(stack.best_params_) == {
        "svr"
    }  # the SVR searched its grid, the deep head trained as given


def test_named_bases_take_nested_params_and_gridsearch_over_them():
    X, y = _data(90)
    stack = StackingHead([("svr", "svr"), ("en", "elasticnet")], cv=3, tune_bases=None)
    params = stack.get_params(deep=True)
    assert params["svr"] == "svr" and params["svr__C"] == 1.0 and params["en__alpha"] == 0.01
    tuned = clone(stack).set_params(svr__C=2.0)
    assert dict(tuned.estimators)["svr"].C == 2.0 and dict(stack.estimators)["svr"] == "svr"
    search = GridSearchCV(stack, {"svr__C": [0.5, 4.0]}, cv=3).fit(X, y)
    assert search.best_params_["svr__C"] in (0.5, 4.0)
    assert search.best_estimator_.named_estimators_["svr"].C == search.best_params_["svr__C"]
    with pytest.raises(HeadParameterError, match="svr__C"):
        stack.set_params(nope=1)
    with pytest.raises(HeadParameterError, match="its parameters"):
        clone(stack).set_params(svr__bogus=1)


def test_plain_arrays_and_lists_are_accepted():
    X, y = _data(60)
    rows = X.arrays["x"][:, 0, :]
    stack = StackingHead([("en", ElasticNetHead()), ("lgbm", LightGBMHead(n_estimators=20))], cv=3)
    from_list = stack.fit(rows.tolist(), y).predict(rows[:5].tolist())
    np.testing.assert_allclose(from_list, clone(stack).fit(rows, y).predict(rows[:5]))
    with pytest.raises(HeadParameterError, match="FeatureSet"):
        clone(stack).fit([["a", "b"]] * 60, y)


def test_from_config_builds_a_stack_from_tables_per_base():
    config = {
        "head": "stack",
        "meta": "nnls",
        "cv": 3,
        "estimators": {
            "svr": {"search": {"C": [1.0, 4.0]}},
            "boost": {"head": "lightgbm", "n_estimators": 20},
        },
        "svr__epsilon": 0.2,
    }
    stack = StackingHead.from_config(config)
    bases = dict(stack.estimators)
    assert bases["svr"].search == {"C": [1.0, 4.0]} and bases["svr"].epsilon == 0.2
    assert isinstance(bases["boost"], LightGBMHead) and bases["boost"].n_estimators == 20
    pairs = StackingHead.from_config(
        {"estimators": [["svr", "svr"], ["en", "elasticnet"]], "svr__search": "standard"}
    )
    assert (
        dict(pairs.estimators)["svr"].search == "standard"
        and dict(pairs.estimators)["en"] == "elasticnet"
    )
    listed = StackingHead.from_config(
        {"estimators": [{"name": "e", "head": "elasticnet", "alpha": 0.1}]}
    )
    assert dict(listed.estimators)["e"].alpha == 0.1
    X, y = _data(60)
    assert stack.fit(X, y).predict(X).shape == (60,)
    with pytest.raises(HeadParameterError, match="does not take"):
        StackingHead.from_config({"estimators": {"svr": {"Cee": 1.0}}})
    with pytest.raises(HeadParameterError, match="no parameter"):
        StackingHead.from_config({"estimators": {"svr": {}}, "svr__Cee": 1.0})
    with pytest.raises(HeadParameterError, match="stack parameters"):
        StackingHead.from_config({"estimators": {"svr": {}}, "metta": "nnls"})
    with pytest.raises(HeadParameterError, match=r"\[estimators.<name>\] table per base"):
        StackingHead({"svr": {}}).fit(X, y)


def test_convergence_warnings_of_bases_are_counted_not_printed():
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    X, y = _data(80)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = StackingHead(
            [("en", ElasticNetHead(max_iter=1, alpha=1e-5)), ("m", MemoriserHead())],
            cv=3,
            tune_bases=None,
        ).fit(X, y)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert stack.n_convergence_warnings_ >= 4  # 3 fold fits + the final fit


def test_a_bad_base_key_is_named_alone_with_a_hint():
    with pytest.raises(HeadParameterError) as caught:
        StackingHead.from_config({"estimators": {"svr": {"search": "standard", "Cc": 3}}})
    message = str(caught.value)
    assert "does not take ['Cc']" in message and "did you mean 'Cc' -> 'C'" in message
    with pytest.raises(HeadParameterError, match=r"does not take \['Cee', 'epsilonn'\]"):
        StackingHead.from_config({"estimators": {"svr": {"epsilonn": 0.1, "Cee": 1}}})


@pytest.mark.parametrize(
    "config, message",
    [
        ({"boost": {"head": "lightgbmm"}}, "stack base 'boost': unknown head 'lightgbmm'"),
        ({"boost": {"head": "lightgbmm", "n_estimators": 3}}, "did you mean 'lightgbm'"),
        ([["boost", "lightgbmm"]], "stack base 'boost': unknown head"),
        ({"svr": {"search": "standrd"}}, "stack base 'svr': SVRHead: search='standrd'"),
        ({"svr": {"search": {"Cee": [1.0, 2.0]}}}, r"unknown parameters \['Cee'\]"),
        ({"svr": {"search": {"C": [-1.0, 2.0]}}}, r"C=-1.0 \(in search\)"),
        ({"svr": {"C": -1.0}}, "stack base 'svr': SVRHead: C=-1.0"),
    ],
)
def test_a_bad_base_is_refused_when_the_stack_is_built_not_mid_fit(config, message):
    from aigvqa.errors import AigvqaError

    with pytest.raises(HeadParameterError, match=message) as caught:
        StackingHead.from_config({"estimators": config})  # building only: no fit runs
    assert isinstance(caught.value, AigvqaError)


def test_a_base_param_set_at_the_top_level_is_checked_at_build_too():
    with pytest.raises(HeadParameterError, match="stack base 'svr': SVRHead: search='nope'"):
        StackingHead.from_config({"estimators": {"svr": {}}, "svr__search": "nope"})


def test_a_stack_built_in_python_checks_its_bases_before_fitting_any():
    X, y = _data(40)
    stack = StackingHead([("m", MemoriserHead()), ("svr", create_head("svr", search="nope"))])
    with pytest.raises(HeadParameterError, match="stack base 'svr'"):
        stack.fit(X, y)
    assert not hasattr(stack.estimators[0][1], "table_")  # the memoriser was never fit


def test_create_head_stack_without_estimators_says_what_to_give():
    from aigvqa.errors import AigvqaError

    head = create_head("stack")  # __init__ only stores (scikit-learn's contract)
    with pytest.raises(AigvqaError, match=r"estimators=None is not allowed.*non-empty list"):
        head.fit(np.zeros((8, 2)), np.arange(8.0))
    assert clone(create_head("stack", estimators=[("s", "svr")])).estimators == [("s", "svr")]
