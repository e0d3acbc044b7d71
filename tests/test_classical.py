import numpy as np
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, ParameterGrid, train_test_split
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVR

from aigvqa.errors import AigvqaError
from aigvqa.heads.classical import (
    ElasticNetHead,
    FeatureValueError,
    HeadParameterError,
    LightGBMHead,
    SVRHead,
    pool_sequences,
)
from aigvqa.heads.featureset import FeatureSet

HEADS = [SVRHead, ElasticNetHead, LightGBMHead]


def _signal_set(n=160, seed=0):
    """Frames [N, 6, 4] with ragged lengths; y depends on the mean of channel 0 over the valid
    frames and on the std of channel 1 (a pooled-statistics signal)."""
    rng = np.random.default_rng(seed)
    frames = rng.normal(0, 1, (n, 6, 4))
    lengths = rng.integers(3, 7, n)
    frames[np.arange(6)[None, :] >= lengths[:, None]] = 50.0  # padding must not matter
    fs = FeatureSet({"frames": frames, "clip": rng.normal(0, 1, (n, 3))}, {"frames": lengths})
    valid = np.arange(6)[None, :] < lengths[:, None]
    mean0 = np.where(valid, frames[..., 0], 0).sum(1) / lengths
    m1 = np.where(valid, frames[..., 1], 0).sum(1) / lengths
    std1 = np.sqrt(np.where(valid, (frames[..., 1] - m1[:, None]) ** 2, 0).sum(1) / lengths)
    y = 3 + mean0 + 0.8 * std1 + rng.normal(0, 0.05, n)
    return fs, y


# -- pooling -------------------------------------------------------------------------------


def test_pooling_respects_lengths_and_ignores_padding():
    a = np.array(
        [
            [[1.0, 10.0], [3.0, 20.0], [np.nan, 99.0]],
            [[2.0, 5.0], [4.0, 7.0], [9.0, 0.0]],
            [[7.0, 7.0], [7.0, 7.0], [7.0, 7.0]],
        ]
    )
    fs = FeatureSet({"f": a}, {"f": np.array([2, 3, 0])})
    Z, names = pool_sequences(fs, ("mean", "std", "min", "max"), percentiles=(50,))
    assert names[:2] == ["f.mean[0]", "f.mean[1]"] and names[-1] == "f.p50[1]"
    np.testing.assert_allclose(Z[0], [2, 15, 1, 5, 1, 10, 3, 20, 2, 15])
    np.testing.assert_allclose(Z[1], [5, 4, np.std([2, 4, 9]), np.std([5, 7, 0]), 2, 0, 9, 7, 4, 5])
    np.testing.assert_array_equal(Z[2], 0.0)  # a row without data pools to zeros


def test_pooling_passes_one_vector_per_video_through_unchanged():
    v = np.arange(12.0).reshape(4, 3)
    Z, names = pool_sequences(FeatureSet({"v": v}), ("mean", "std", "max"))
    np.testing.assert_array_equal(Z, v)
    assert names == ["v[0]", "v[1]", "v[2]"]


def test_pooling_selects_features_in_the_given_order():
    fs, _ = _signal_set(10)
    Z, names = pool_sequences(fs, ("mean",), features=["clip", "frames"])
    assert Z.shape == (10, 3 + 4) and names[0] == "clip[0]"
    with pytest.raises(HeadParameterError, match="not in the feature set"):
        pool_sequences(fs, features=["nope"])
    with pytest.raises(HeadParameterError, match="unknown pooling"):
        pool_sequences(fs, ("median",))


# -- estimator contract --------------------------------------------------------------------


@pytest.mark.parametrize("cls", HEADS)
def test_clone_and_params_roundtrip(cls):
    head = cls(pca=3, search={"random_state": [1, 2]})
    copy = clone(head)
    assert copy is not head and copy.get_params() == head.get_params()
    copy.set_params(scaler="standard", pooling=("mean",))
    assert copy.scaler == "standard" and head.pooling == ("mean", "std")
    assert not hasattr(cls(), "models_")  # __init__ stores parameters only


@pytest.mark.parametrize("cls", HEADS)
def test_each_head_learns_a_pooled_signal_and_gridsearchcv_works(cls):
    fs, y = _signal_set(200)
    train, test = np.arange(150), np.arange(150, 200)
    grid = {
        "SVRHead": {"C": [1.0, 10.0]},
        "ElasticNetHead": {"alpha": [0.001, 0.1]},
        "LightGBMHead": {"num_leaves": [4, 8]},
    }[cls.__name__]
    search = GridSearchCV(
        cls(n_estimators=100) if cls is LightGBMHead else cls(),
        grid,
        cv=3,
        scoring="neg_mean_squared_error",
    )
    search.fit(fs[train], y[train])
    pred = search.predict(fs[test])
    assert pred.shape == (50,)
    assert stats.spearmanr(y[test], pred)[0] > 0.8
    shuffled = (
        cls().fit(fs[train], np.random.default_rng(0).permutation(y[train])).predict(fs[test])
    )
    assert stats.spearmanr(y[test], shuffled)[0] < 0.5  # the control has nothing to learn


def test_plain_arrays_are_accepted_as_one_feature():
    fs, y = _signal_set(80)
    X = np.concatenate([fs.arrays["frames"].mean(1), fs.arrays["clip"][:, 0]], axis=1)
    head = ElasticNetHead().fit(X, y)
    assert head.predict(X).shape == (80,)
    assert head.pooled_feature_names_[0] == "x[0]"


def test_multi_output_fits_one_model_and_one_search_per_target():
    fs, y = _signal_set(160)
    clip = fs.arrays["clip"][:, 0, :]
    Y = np.column_stack([y, 2 * clip[:, 0] - clip[:, 1]])  # the 2nd target lives in "clip"
    head = ElasticNetHead(search={"features": [["frames"], ["clip"]]}).fit(fs[:120], Y[:120])
    assert len(head.models_) == 2 and head.n_outputs_ == 2
    assert head.best_params_ == [{"features": ["frames"]}, {"features": ["clip"]}]
    pred = head.predict(fs[120:])
    assert pred.shape == (40, 2)
    for j in range(2):
        assert stats.spearmanr(Y[120:, j], pred[:, j])[0] > 0.8
    # a single column given as [N, 1] keeps its 2-D shape
    assert ElasticNetHead().fit(fs, Y[:, :1]).predict(fs[:5]).shape == (5, 1)


# -- search inside the training rows -------------------------------------------------------


def _shifted_set(n_train=120, n_test=60, seed=0):
    """Training rows: y follows feature "a". Test rows: y follows feature "b".
    A search that peeked at the test rows would pick "b"."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    a, b = rng.normal(0, 1, (n, 2)), rng.normal(0, 1, (n, 2))
    y = np.where(np.arange(n) < n_train, a[:, 0], b[:, 0]) + rng.normal(0, 0.05, n)
    return FeatureSet({"a": a, "b": b}), y, np.arange(n_train), np.arange(n_train, n)


def test_search_uses_only_the_training_rows():
    fs, y, train, test = _shifted_set()
    head = ElasticNetHead(search={"features": [["a"], ["b"]]}).fit(fs[train], y[train])
    assert head.best_params_ == {"features": ["a"]}
    assert stats.spearmanr(y[test], head.predict(fs[test]))[0] < 0.5  # the test signal was not seen
    # with validation rows given, the candidates are ranked on them instead
    val, rest = test[:30], test[30:]
    head_val = ElasticNetHead(search={"features": [["a"], ["b"]]}).fit(
        fs[train], y[train], X_val=fs[val], y_val=y[val]
    )
    assert head_val.best_params_ == {"features": ["b"]}
    assert (
        stats.spearmanr(y[rest], head_val.predict(fs[rest]))[0] < 0.5
    )  # final fit: training rows only


def _videval_inner_loop(X, y, grid, random_state, rmse):
    """VIDEVAL's grid search written out: train_test_split(X_train, test_size=0.2,
    random_state=...), MinMax fit on the fitting rows, one RBF SVR per (C, gamma), each scored
    by ``rmse(y_held_out, predictions)``. Returns {(C, gamma): rmse}."""
    Xp, Xv, yp, yv = train_test_split(X, y, test_size=0.2, random_state=random_state)
    scaler = MinMaxScaler().fit(Xp)
    rmses = {}
    for C in grid["C"]:
        for g in grid["gamma"]:
            pred = (
                SVR(kernel="rbf", C=C, gamma=g)
                .fit(scaler.transform(Xp), yp)
                .predict(scaler.transform(Xv))
            )
            rmses[(C, g)] = rmse(yv, pred)
    return rmses


def test_svr_search_reproduces_videvals_inner_split_loop():
    rng = np.random.default_rng(2)
    X = rng.normal(0, 1, (90, 5))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] + rng.normal(0, 0.1, 90)
    grid = {"C": [1.0, 8.0, 64.0], "gamma": [0.05, 0.5]}
    head = SVRHead(search=grid, random_state=13).fit(X, y)
    rmses = _videval_inner_loop(X, y, grid, 13, lambda yv, pred: np.sqrt(np.mean((yv - pred) ** 2)))
    best = min(rmses, key=rmses.get)
    assert (head.best_params_["C"], head.best_params_["gamma"]) == best
    for r in head.search_results_:
        assert r["rmse"] == pytest.approx(rmses[(r["params"]["C"], r["params"]["gamma"])])
    # and the final model is refit on all rows with the winner
    final = SVR(kernel="rbf", C=best[0], gamma=best[1]).fit(MinMaxScaler().fit_transform(X), y)
    np.testing.assert_allclose(head.predict(X), final.predict(MinMaxScaler().fit(X).transform(X)))


def test_inner_k_fold_search_and_parallel_candidates_agree():
    fs, y = _signal_set(100)
    grid = {"alpha": [0.001, 0.01, 1.0]}
    one = ElasticNetHead(search=grid, inner_split=4, random_state=5).fit(fs, y)
    two = ElasticNetHead(search=grid, inner_split=4, random_state=5, n_jobs=2).fit(fs, y)
    assert one.best_params_ == two.best_params_
    assert [r["rmse"] for r in one.search_results_] == pytest.approx(
        [r["rmse"] for r in two.search_results_]
    )
    # the k-fold losses are the mean over KFold(4, shuffle, random_state) folds
    from aigvqa.heads.classical import pool_sequences as pool

    Z = pool(fs)[0]
    folds = KFold(4, shuffle=True, random_state=5).split(Z)
    losses = []
    for tr, va in folds:
        m = ElasticNetHead(alpha=1.0).fit(Z[tr], y[tr])
        losses.append(np.sqrt(np.mean((y[va] - m.predict(Z[va])) ** 2)))
    assert one.search_results_[2]["rmse"] == pytest.approx(np.mean(losses))


def test_standard_search_grid_and_bad_search_keys():
    assert len(SVRHead.standard_search["C"]) == 10 and SVRHead.standard_search["C"][0] == 2.0
    assert (
        SVRHead.standard_search["gamma"][0] == 2.0**-8
        and SVRHead.standard_search["gamma"][-1] == 2.0
    )
    fs, y = _signal_set(40)
    with pytest.raises(HeadParameterError, match="unknown parameters"):
        SVRHead(search={"kernel": ["linear"]}).fit(fs, y)
    with pytest.raises(HeadParameterError):
        SVRHead(scaler="robust").fit(fs, y)
    with pytest.raises(HeadParameterError):
        SVRHead(search={"C": [1.0]}, inner_split=1.5).fit(fs, y)


def test_pca_and_target_scaling_options():
    fs, y = _signal_set(120)
    head = SVRHead(pca=0.95, scale_target=True).fit(fs, 100 * y)
    pred = head.predict(fs)
    assert stats.spearmanr(y, pred)[0] > 0.8 and pred.mean() == pytest.approx(
        100 * y.mean(), rel=0.05
    )


def test_nan_features_are_a_clear_user_error():
    fs, y = _signal_set(30)
    fs.arrays["clip"][3, 0, 1] = np.nan
    with pytest.raises(FeatureValueError, match="NaN") as err:
        ElasticNetHead().fit(fs, y)
    assert isinstance(err.value, AigvqaError)


def test_lightgbm_is_deterministic_for_a_seed():
    fs, y = _signal_set(100)
    a = LightGBMHead(n_estimators=50, random_state=3).fit(fs, y).predict(fs)
    b = LightGBMHead(n_estimators=50, random_state=3).fit(fs, y).predict(fs)
    np.testing.assert_array_equal(a, b)


def test_heads_are_registered_by_name():
    from aigvqa.heads.registry import create_head

    assert isinstance(create_head("svr", C=4.0), SVRHead)
    assert isinstance(create_head("elasticnet"), ElasticNetHead)
    assert isinstance(create_head("lightgbm"), LightGBMHead)


# -- shared SVR kernels, VIDEVAL's logistic-RMSE rule, counted warnings ----------------------


def _svr_problem(n=120, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (n, 6))
    y = 3 + np.sin(X[:, 0]) + 0.4 * X[:, 1] ** 2 + rng.normal(0, 0.2, n)
    return X, y


@pytest.mark.parametrize("scoring", ["rmse", "logistic-rmse", "srcc"])
@pytest.mark.parametrize("setup", ["inner-split", "k-fold", "validation", "threads"])
def test_shared_kernel_search_equals_one_rbf_svr_per_candidate(monkeypatch, scoring, setup):
    X, y = _svr_problem()
    grid = {"C": [0.5, 4.0, 64.0], "gamma": [0.02, 0.3, "scale", "auto"], "epsilon": [0.05, 0.2]}
    kwargs = dict(
        search=grid, search_scoring=scoring, random_state=4, pca=5 if setup == "k-fold" else None
    )
    if setup == "k-fold":
        kwargs["inner_split"] = 3
    if setup == "threads":
        kwargs["n_jobs"] = 2
    fit_args = {"X_val": X[90:], "y_val": y[90:]} if setup == "validation" else {}
    kernels = []
    real_fit = SVR.fit

    def spy(self, *args, **kw):
        kernels.append(self.kernel)
        return real_fit(self, *args, **kw)

    monkeypatch.setattr(SVR, "fit", spy)
    shared = SVRHead(**kwargs).fit(X[:90], y[:90], **fit_args)
    assert kernels.count("precomputed") == len(ParameterGrid(grid)) * (
        3 if setup == "k-fold" else 1
    )
    monkeypatch.setattr(SVRHead, "shared_kernels", False)
    kernels.clear()
    reference = SVRHead(**kwargs).fit(X[:90], y[:90], **fit_args)
    assert "precomputed" not in kernels
    assert shared.best_params_ == reference.best_params_
    # the logistic fit's own tolerance (~1e-8 on its parameters) shows in its RMSEs
    rtol = 1e-6 if scoring == "logistic-rmse" else 1e-9
    np.testing.assert_allclose(
        [r[scoring] for r in shared.search_results_],
        [r[scoring] for r in reference.search_results_],
        rtol=rtol,
        atol=1e-12,
    )
    np.testing.assert_array_equal(shared.predict(X[90:]), reference.predict(X[90:]))


def test_precomputed_kernel_svr_predicts_as_the_rbf_svr():
    X, y = _svr_problem(150)
    Z = MinMaxScaler().fit_transform(X)
    head = SVRHead(scaler=None)
    head.features_used_ = ["x"]
    params = head._params({"C": 8.0, "gamma": 0.5})
    preds = head._precomputed_predictions(params, [params], Z[:100], y[:100], Z[100:])
    rbf = SVR(kernel="rbf", C=8.0, gamma=0.5).fit(Z[:100], y[:100]).predict(Z[100:])
    np.testing.assert_allclose(preds[0], rbf, rtol=0, atol=1e-9)


def _videval_logistic(x, b1, b2, b3, b4):
    # VIDEVAL's logistic_func, written out as the paper's code describes it
    return b2 + (b1 - b2) / (1 + np.exp(-(x - b3) / np.abs(b4)))


def test_logistic_rmse_selection_matches_videvals_rule():
    from scipy.optimize import curve_fit

    X, y = _svr_problem(160, seed=8)
    grid = {"C": [1.0, 16.0, 256.0], "gamma": [0.01, 0.2, 2.0]}
    head = SVRHead(search=grid, search_scoring="logistic-rmse", random_state=21).fit(X, y)

    def logistic_rmse(yv, pred):  # VIDEVAL's: RMSE after its logistic fit, from its start point
        beta = [np.max(yv), np.min(yv), np.mean(pred), 0.5]
        popt, _ = curve_fit(_videval_logistic, pred, yv, p0=beta, maxfev=100000)
        return np.sqrt(np.mean((yv - _videval_logistic(pred, *popt)) ** 2))

    rmses = _videval_inner_loop(X, y, grid, 21, logistic_rmse)
    best = min(rmses, key=rmses.get)
    assert (head.best_params_["C"], head.best_params_["gamma"]) == best
    for r in head.search_results_:
        assert r["logistic-rmse"] == pytest.approx(
            rmses[(r["params"]["C"], r["params"]["gamma"])], rel=1e-5
        )
    raw = SVRHead(search=grid, search_scoring="rmse", random_state=21).fit(X, y)
    assert [r["rmse"] for r in raw.search_results_] != pytest.approx(
        [r["logistic-rmse"] for r in head.search_results_]
    )


def test_logistic_rmse_falls_back_to_raw_rmse_for_constant_predictions():
    from aigvqa.heads.classical import logistic_rmse

    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    value, fell_back = logistic_rmse(y, np.full(5, 3.0))
    assert fell_back and value == pytest.approx(np.sqrt(2.0))
    value, fell_back = logistic_rmse(y, y * 0.1)
    assert not fell_back and value < 0.05


def test_search_scoring_names_are_checked():
    X, y = _svr_problem(40)
    with pytest.raises(HeadParameterError, match="logistic-rmse"):
        SVRHead(search={"C": [1.0]}, search_scoring="mae").fit(X, y)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_elasticnet_convergence_warnings_are_counted_not_printed(n_jobs):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    fs, y = _signal_set(120)
    head = ElasticNetHead(search={"alpha": [1e-5, 1e-4]}, max_iter=1, n_jobs=n_jobs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head.fit(fs, y)
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert head.n_convergence_warnings_ == 3  # two candidates on the inner split + the final fit
    assert ElasticNetHead().fit(fs, y).n_convergence_warnings_ == 0
