"""Head hyper-parameters are checked in one place (aigvqa.heads.params): each head class has a
constraints table, checked at the top of ``fit``; a bad value is one HeadParameterError that
names the head, the parameter, the value and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli_train_evaluate import make_cache

from aigvqa.errors import AigvqaError, HeadParameterError
from aigvqa.heads import FeatureSet, create_head, list_heads
from aigvqa.heads.params import check_parameters
from aigvqa.heads.registry import get_head_class
from aigvqa.pipeline.cli import main

BUILTIN = ["ugvq", "msavqa", "branchsum", "mlp", "svr", "elasticnet", "lightgbm", "stack"]


def _data(n=20):
    rng = np.random.default_rng(0)
    return FeatureSet({"x": rng.normal(size=(n, 3, 4)).astype(np.float32)}), rng.normal(size=n)


def _defaults(name):
    return create_head(name, estimators=[("s", "svr")]) if name == "stack" else create_head(name)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_parameter_has_a_constraint_and_the_defaults_pass(name):
    assert set(BUILTIN) <= set(list_heads())
    head = _defaults(name)
    table = get_head_class(name).PARAMETER_CONSTRAINTS
    assert set(table) == set(head.get_params(deep=False))
    check_parameters(head)


# (head, bad parameters, parameter named in the error, words of what is allowed)
BAD = [
    ("ugvq", {"preset": "huge"}, "preset", "one of 'paper', 'small'"),
    ("ugvq", {"patience": -1}, "patience", "None or an integer >= 1"),
    (
        "ugvq",
        {"features": {"audio": "x"}},
        "features",
        "no feature roles besides spatial, temporal, text",
    ),
    ("msavqa", {"frame_loss": "l2"}, "frame_loss", "one of 'smooth_l1', 'fcl'"),
    ("msavqa", {"level_weights": (1.0, 1.0)}, "level_weights", "3 non-negative weights"),
    ("branchsum", {"loss": "hinge"}, "loss", "one of 'mae_rank'"),
    ("branchsum", {"dropout": 1.5}, "dropout", "None or a number in [0, 1)"),
    ("mlp", {"pooling": "max"}, "pooling", "one of 'mean', 'mean_std'"),
    ("mlp", {"epochs": 0}, "epochs", "None or an integer >= 1"),
    ("svr", {"C": -1.0}, "C", "a number > 0"),
    ("svr", {"gamma": "median"}, "gamma", "one of 'scale', 'auto' or a number > 0"),
    ("elasticnet", {"l1_ratio": 2}, "l1_ratio", "a number in [0, 1]"),
    ("elasticnet", {"scaler": "robust"}, "scaler", "None or one of 'minmax', 'standard'"),
    ("lightgbm", {"num_leaves": 1}, "num_leaves", "an integer >= 2"),
    ("lightgbm", {"subsample": 0.0}, "subsample", "a number in (0, 1]"),
    ("stack", {"estimators": []}, "estimators", "non-empty list"),
    ("stack", {"estimators": [("s", "svr")], "meta": "ridge"}, "meta", "one of 'linear', 'nnls'"),
]


@pytest.mark.parametrize(
    ("name", "params", "parameter", "allowed"), BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD]
)
def test_a_bad_value_is_one_error_naming_head_parameter_value_and_what_is_allowed(
    name, params, parameter, allowed
):
    X, y = _data()
    head = create_head(name, **params)
    with pytest.raises(HeadParameterError) as caught:
        head.fit(X, y)
    error = caught.value
    value = params[parameter]
    assert str(error).startswith(f"{type(head).__name__}: {parameter}={value!r}")
    assert allowed in str(error)
    assert (error.head, error.parameter, error.value) == (type(head).__name__, parameter, value)
    assert isinstance(error, AigvqaError) and isinstance(error, ValueError)


def test_bool_is_not_a_number_and_nan_is_in_no_interval():
    X, y = _data()
    with pytest.raises(HeadParameterError, match="n_estimators=True"):
        create_head("lightgbm", n_estimators=True).fit(X, y)
    with pytest.raises(HeadParameterError, match="C=nan"):
        create_head("svr", C=float("nan")).fit(X, y)


def test_searched_values_are_checked_like_parameters():
    X, y = _data()
    with pytest.raises(
        HeadParameterError,
        match=r"SVRHead: C=-2.0 \(in search\) is not allowed; C must be a number > 0",
    ):
        create_head("svr", search={"C": [1.0, -2.0]}).fit(X, y)


def test_early_stopping_without_a_validation_split_names_patience():
    X, y = _data()
    with pytest.raises(
        HeadParameterError, match=r"PooledMLPHead: patience=2 is not allowed.*val_fraction"
    ):
        create_head("mlp", patience=2, epochs=1).fit(X, y)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("params") / "feats.h5")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            'preset = "huge"',
            "UGVQHead: preset='huge' is not allowed; preset must be one of 'paper', 'small'",
        ),
        (
            "patience = -3",
            "UGVQHead: patience=-3 is not allowed; patience must be None or an integer >= 1",
        ),
    ],
)
def test_cli_train_prints_the_parameter_error_without_a_traceback(
    cache, tmp_path, capsys, line, expected
):
    config = tmp_path / "head.toml"
    config.write_text(f'{line}\nfeatures = {{ spatial = "a", temporal = "a", text = "b" }}\n')
    code = main(
        [
            "train",
            str(cache),
            "--head",
            "ugvq",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"aigvqa train: error: {config}: {expected}"  # the file named first
    assert "Traceback" not in err
