"""Trials trained together (``aigvqa.heads.trials.fit_trials``): every trial equals the
same fit run alone, whatever the other trials (row counts, early stopping, dropout, FGM),
and the fitted heads are ordinary heads. Tiny synthetic data, one torch thread."""

import numpy as np
import pytest
from sklearn.base import clone
from test_heads_deep import (
    DEEP,
    all_features,
    one_torch_thread,  # noqa: F401  (autouse: these tests run on one torch thread too)
    tiny,
)

from aigvqa.heads.base import TorchHead
from aigvqa.heads.classical import FeatureValueError
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.losses import mae_loss
from aigvqa.heads.mlp import PooledMLPHead
from aigvqa.heads.trials import can_train_together, fit_trials


def trial_rows(n, sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.permutation(n)[:size] for size in sizes]


def one_by_one(head, X, y, rows, seeds):
    return [clone(head).set_params(seed=s).fit(X[r], y[r]) for r, s in zip(rows, seeds)]


def assert_same_fits(alone, together, X, y):
    for a, b in zip(alone, together):
        assert len(a.history_) == len(b.history_) and a.best_epoch_ == b.best_epoch_
        for ra, rb in zip(a.history_, b.history_):
            assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4, abs=1e-6)
            assert ra.get("val_loss", 0) == pytest.approx(rb.get("val_loss", 0), rel=1e-4, abs=1e-6)
            assert ra["lr"] == pytest.approx(rb["lr"])
        np.testing.assert_allclose(b.predict(X), a.predict(X), rtol=1e-4, atol=1e-4 * np.std(y))


@pytest.mark.parametrize("name", DEEP)
def test_trials_together_equal_trials_one_by_one(name):
    """Different row counts (so different numbers of steps per epoch and padded batches),
    dropout (keyed masks), a validation split with early stopping and multi-output."""
    X, y = all_features(90)
    y2 = np.column_stack([y, y**2])
    rows = trial_rows(90, (60, 72, 45))
    head = tiny(name, epochs=4, dropout=0.2, val_fraction=0.2, patience=1, lr=1e-2)
    together = fit_trials(head, X, y2, rows, seeds=[1, 2, 3])
    assert_same_fits(one_by_one(head, X, y2, rows, [1, 2, 3]), together, X, y2)


def test_early_stopped_trial_stops_changing_while_others_go_on():
    X, y = all_features(90)
    rows = trial_rows(90, (70, 70, 70, 70), seed=1)
    head = tiny("mlp", epochs=10, val_fraction=0.25, patience=1, lr=5e-2)
    together = fit_trials(head, X, y, rows, seeds=[0, 1, 2, 3])
    epochs_run = [len(h.history_) for h in together]
    assert len(set(epochs_run)) > 1, epochs_run  # the case this test is about happened
    assert_same_fits(one_by_one(head, X, y, rows, [0, 1, 2, 3]), together, X, y)


def test_fgm_and_weight_decay_per_trial():
    X, y = all_features(60)
    rows = trial_rows(60, (40, 50))
    head = tiny("ugvq", epochs=2, fgm_epsilon=0.5, weight_decay=1e-3)
    assert_same_fits(
        one_by_one(head, X, y, rows, [5, 6]), fit_trials(head, X, y, rows, seeds=[5, 6]), X, y
    )


def test_fitted_trials_are_ordinary_heads():
    X, y = all_features(60)
    rows = trial_rows(60, (40, 45))
    heads = fit_trials(tiny("msavqa"), X, y, rows, seeds=[0, 1])
    for h in heads:
        assert isinstance(h, TorchHead) and h.seed in (0, 1)
        assert next(h.module_.parameters()).device.type == "cpu"
        config, tensors = h.get_state()
        np.testing.assert_allclose(
            TorchHead.from_state(config, tensors).predict(X), h.predict(X), rtol=1e-6, atol=1e-6
        )
    assert not np.allclose(heads[0].predict(X), heads[1].predict(X))


class UnweightedLoss(PooledMLPHead):
    """A user head whose loss knows nothing of row weights: trained one by one."""

    def _loss(self, outputs, y):
        return mae_loss(outputs["score"], y)


def test_heads_that_cannot_be_vectorised_are_fitted_one_by_one():
    X, y = all_features(40)
    head = UnweightedLoss(hidden=8, epochs=2, features=["vit-keyframes"])
    assert not can_train_together(head) and can_train_together(tiny("mlp"))
    rows = trial_rows(40, (30, 30))
    heads = fit_trials(head, X, y, rows, seeds=[0, 1])
    np.testing.assert_array_equal(
        heads[0].predict(X), clone(head).set_params(seed=0).fit(X[rows[0]], y[rows[0]]).predict(X)
    )


def test_together_false_and_argument_errors():
    X, y = all_features(40)
    rows = trial_rows(40, (30, 30))
    alone = fit_trials(tiny("mlp"), X, y, rows, seeds=[0, 1], together=False)
    np.testing.assert_array_equal(
        alone[1].predict(X),
        clone(tiny("mlp")).set_params(seed=1).fit(X[rows[1]], y[rows[1]]).predict(X),
    )
    with pytest.raises(ValueError, match="seeds"):
        fit_trials(tiny("mlp"), X, y, rows, seeds=[0])
    assert fit_trials(tiny("mlp"), X, y, [], seeds=[]) == []


def test_trials_refuse_non_finite_features_in_their_rows_only():
    X, y = all_features(40)
    arrays = {k: v.copy() for k, v in X.arrays.items()}
    arrays["vit-keyframes"][7, 2, 3] = np.nan
    bad = FeatureSet(arrays, X.lengths, X.ids)
    rows = [np.arange(0, 20), np.arange(20, 40)]
    with pytest.raises(FeatureValueError, match="v7"):
        fit_trials(tiny("mlp"), bad, y, rows, seeds=[0, 1])
    fit_trials(
        tiny("mlp"), bad, y, [np.arange(10, 25), np.arange(20, 40)], seeds=[0, 1]
    )  # row 7 unused


def test_trials_split_into_groups_give_the_same_fits():
    X, y = all_features(60)
    rows = trial_rows(60, (40, 45, 50))
    head = tiny("mlp", epochs=2)
    assert_same_fits(
        one_by_one(head, X, y, rows, [0, 1, 2]),
        fit_trials(head, X, y, rows, seeds=[0, 1, 2], max_together=2),
        X,
        y,
    )


@pytest.mark.parametrize("name", ["mlp", "msavqa"])
def test_a_stacks_deep_base_trains_its_folds_and_refit_together(name, monkeypatch):
    """StackingHead's deep base: its cv out-of-fold models and its refit on all rows are one
    fit_trials call of cv + 1 trials, and the stack equals the one-by-one stack."""
    import aigvqa.heads.trials as trials
    from aigvqa.heads.blend import StackingHead

    calls = []

    def spy(head, X, y, train_rows, *args, **kwargs):
        calls.append([len(r) for r in train_rows])
        return fit_trials(head, X, y, train_rows, *args, **kwargs)

    monkeypatch.setattr(trials, "fit_trials", spy)
    X, y = all_features(60)
    deep = tiny(name, epochs=3, dropout=0.1, val_fraction=0.2, lr=1e-2)
    # a linear blend of both (no best-base fallback), so both weights depend on both bases
    stack = StackingHead(
        [("deep", deep), ("svr", "svr")], cv=3, meta="linear", allow_best_base=False
    )
    together = clone(stack).fit(X, y)
    assert calls == [[40, 40, 40, 60]]  # 3 folds' training rows and all rows, in one call
    alone = clone(stack).set_params(batch_trials=False).fit(X, y)
    assert len(calls) == 1  # one by one: fit_trials is not used
    np.testing.assert_allclose(
        together.oof_predictions_, alone.oof_predictions_, rtol=1e-4, atol=1e-4 * np.std(y)
    )
    assert together.meta_weights_ == pytest.approx(alone.meta_weights_, rel=1e-3, abs=1e-4)
    assert all(abs(w) > 1e-3 for w in together.meta_weights_.values())
    np.testing.assert_allclose(
        together.predict(X), alone.predict(X), rtol=1e-4, atol=1e-4 * np.std(y)
    )
    assert not np.allclose(together.oof_predictions_[:, 0], together.oof_predictions_[:, 1])


def test_evaluate_no_batch_trials_reaches_a_stacks_deep_bases(monkeypatch):
    """``evaluate(batch_trials=False)`` (``--no-batch-trials``) fits a stack's deep base one
    by one too; by default each trial's stack trains the deep base's folds together."""
    import aigvqa.heads.trials as trials
    from aigvqa.heads.blend import StackingHead
    from aigvqa.pipeline.evaluation.evaluate import evaluate

    calls = []

    def spy(head, X, y, train_rows, *args, **kwargs):
        calls.append(len(train_rows))
        return fit_trials(head, X, y, train_rows, *args, **kwargs)

    monkeypatch.setattr(trials, "fit_trials", spy)
    X, y = all_features(40)
    stack = StackingHead([("deep", tiny("mlp", epochs=1)), ("en", "elasticnet")], cv=2)
    evaluate(stack, X, y, trials=2, progress=False, batch_trials=False)
    assert calls == [] and stack.batch_trials is True  # the caller's head is left as given
    evaluate(stack, X, y, trials=2, progress=False)
    assert calls == [3, 3]  # per trial: 2 folds and the refit
