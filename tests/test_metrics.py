import warnings

import numpy as np
import pytest
from scipy import stats

from aigvqa.pipeline.evaluation import metrics as M


def _noisy_pair(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(1, 5, n)
    pred = np.round(y + rng.normal(0, 0.6, n), 1)  # rounding makes ties, as real scores have
    return y, pred


def test_correlations_and_rmse_match_scipy_and_numpy():
    y, pred = _noisy_pair()
    assert M.srcc(y, pred) == pytest.approx(stats.spearmanr(y, pred)[0], abs=1e-12)
    assert M.krcc(y, pred) == pytest.approx(stats.kendalltau(y, pred)[0], abs=1e-12)
    assert M.plcc(y, pred) == pytest.approx(stats.pearsonr(y, pred)[0], abs=1e-12)
    assert M.rmse(y, pred) == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)), abs=1e-12)
    # a hand-computable case: perfectly reversed ranks
    assert M.srcc([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert M.krcc([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)


def test_correlation_of_constant_input_is_nan_not_an_error():
    assert np.isnan(M.srcc([1, 2, 3], [2, 2, 2]))
    assert np.isnan(M.plcc([1, 2, 3], [2, 2, 2]))


def test_logistic_fit_recovers_a_known_4_parameter_curve():
    x = np.linspace(-2, 2, 120)
    true = (4.5, 1.2, 0.3, 0.4)  # b1 (top), b2 (bottom), b3 (centre), b4 (slope)
    y = M.logistic_4(x, *true)
    fit = M.fit_logistic(y, x)
    assert not fit.fell_back
    assert fit.params[:3] == pytest.approx(true[:3], abs=1e-4)
    assert abs(fit.params[3]) == pytest.approx(true[3], abs=1e-4)
    raw = M.plcc(y, x)
    assert raw < 0.97  # the curve is far from linear ...
    assert M.plcc_logistic(y, x) == pytest.approx(1.0, abs=1e-9)  # ... and the fit undoes it
    # hand check of one value of the curve: x = b3 sits halfway between b1 and b2
    assert M.logistic_4(0.3, *true) == pytest.approx((4.5 + 1.2) / 2)


def test_logistic_fit_handles_other_scales():
    x = np.linspace(0, 100, 80)
    y = M.logistic_4(x, 5.0, 1.0, 50.0, 8.0)  # predictions on a 0-100 scale
    assert M.plcc_logistic(y, x) == pytest.approx(1.0, abs=1e-6)


def test_a_decreasing_logistic_is_not_used_so_a_backwards_ranking_keeps_a_negative_plcc():
    # predictions that rank the videos backwards: an unconstrained least-squares logistic
    # falls (b1 < b2) and maps them onto the MOS almost perfectly (PLCC ~ +1)
    x = np.linspace(0, 100, 80)
    y = M.logistic_4(x, 1.0, 5.0, 50.0, 8.0)
    with pytest.warns(M.MappingFitWarning, match="decreasing"):
        fit = M.fit_logistic(y, x)
    assert fit.fell_back and "invert the ranking" in fit.reason
    assert np.array_equal(fit.mapped, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MappingFitWarning)
        out = M.all_metrics(y, x)
    assert out["srcc"] == pytest.approx(-1.0)
    assert out["plcc_logistic"] == pytest.approx(M.plcc(y, x)) and out["plcc_logistic"] < -0.9
    assert out["logistic_fallback"]
    # noisy anti-correlated predictions, like a head that learned nothing on a few test videos
    rng = np.random.default_rng(3)
    mos = rng.uniform(1, 5, 12)
    pred = -mos + rng.normal(0, 1.0, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.MappingFitWarning)
        out = M.all_metrics(mos, pred)
    assert out["srcc"] < 0 and out["plcc_logistic"] < 0
    # an increasing fit is untouched
    assert not M.fit_logistic(mos, -pred).fell_back


def test_every_table_metric_has_a_legend_line_with_range_and_direction():
    from aigvqa.pipeline.evaluation.evaluate import TABLE_METRICS

    for name in TABLE_METRICS:
        line = M.METRIC_LEGEND[name]
        assert ".." in line and ("higher is better" in line or "LOWER is better" in line), name
    assert "LOWER is better" in M.METRIC_LEGEND["rmse"]
    legend = M.metric_legend(["srcc", "rmse", "no-such-metric", "srcc"])
    assert legend.splitlines() == ["- " + M.METRIC_LEGEND["srcc"], "- " + M.METRIC_LEGEND["rmse"]]


def test_poly3_fit_maps_a_cubic_exactly():
    x = np.linspace(-1, 1, 50)
    coefs = (0.8, -0.2, 0.3, 3.0)
    y = np.polyval(coefs, x)
    fit = M.fit_poly3(y, x)
    assert not fit.fell_back
    assert fit.params == pytest.approx(coefs, abs=1e-8)
    assert M.plcc(y, x) < 0.99
    assert M.plcc_poly3(y, x) == pytest.approx(1.0, abs=1e-12)


def test_failed_logistic_fit_falls_back_to_raw_with_a_warning_and_a_flag():
    x = np.linspace(-2, 2, 60)
    y = M.logistic_4(x, 4.5, 1.2, 0.3, 0.4)
    with pytest.warns(M.MappingFitWarning, match="logistic"):
        fit = M.fit_logistic(y, x, maxfev=1)  # the optimiser runs out of evaluations
    assert fit.fell_back and fit.params is None and "maxfev" in fit.reason
    np.testing.assert_array_equal(fit.mapped, x)


def test_all_metrics_on_three_test_points_falls_back_instead_of_crashing():
    # a tiny fold (e.g. a 3-video prompt-disjoint test set) has fewer points than the
    # logistic's 4 parameters: scipy raises TypeError there, which must become a fallback
    with pytest.warns(M.MappingFitWarning, match="3 points"):
        out = M.all_metrics(np.array([1.0, 2.0, 4.0]), np.array([0.1, 0.5, 0.3]))
    assert out["logistic_fallback"]
    assert out["plcc_logistic"] == pytest.approx(out["plcc"])


def test_all_metrics_never_crashes_on_constant_predictions_and_flags_the_fallbacks():
    y = np.linspace(1, 5, 30)
    with pytest.warns(M.MappingFitWarning):
        out = M.all_metrics(y, np.full(30, 3.0))
    assert out["logistic_fallback"] and out["poly3_fallback"]
    assert np.isnan(out["srcc"]) and np.isnan(out["plcc_logistic"])
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((y - 3.0) ** 2)))


def test_all_metrics_entries_and_ntire_score():
    y, pred = _noisy_pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.MappingFitWarning)  # a good fit must not fall back
        out = M.all_metrics(y, pred)
    assert set(M.METRIC_NAMES) <= set(out)
    assert out["logistic_fallback"] is False and out["poly3_fallback"] is False
    assert out["srcc"] == pytest.approx(stats.spearmanr(y, pred)[0])
    assert out["plcc_logistic"] == pytest.approx(M.plcc(y, M.fit_logistic(y, pred).mapped))
    assert out["ntire"] == pytest.approx((abs(out["srcc"]) + abs(out["plcc_poly3"])) / 2)
    assert M.ntire_score(-0.6, 0.8) == pytest.approx(0.7)


def test_model_level_correlation_uses_per_generator_means():
    generator = np.array(["a", "a", "b", "b", "c", "c", "d"])
    mos = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 3.0, 4.5])  # means: a 2, b 2, c 4, d 4.5
    pred = np.array([0.1, 0.3, 0.0, 0.6, 0.9, 0.9, 0.2])  # means: a .2, b .3, c .9, d .2
    out = M.model_level_correlation(pred, mos, generator)
    mean_mos, mean_pred = [2.0, 2.0, 4.0, 4.5], [0.2, 0.3, 0.9, 0.2]
    assert out["n_models"] == 4
    assert out["srcc"] == pytest.approx(stats.spearmanr(mean_mos, mean_pred)[0])
    assert out["plcc"] == pytest.approx(stats.pearsonr(mean_mos, mean_pred)[0])


def test_model_level_correlation_with_too_few_generators_is_nan_with_a_warning():
    with pytest.warns(UserWarning, match="at least 3 generators"):
        out = M.model_level_correlation([1, 2, 3, 4], [1, 2, 3, 5], ["a", "a", "b", "b"])
    assert out["n_models"] == 2 and np.isnan(out["srcc"])


def test_logistic_plcc_matches_videvals_reference_computation():
    """VIDEVAL's compute_metrics, written out: curve_fit of its logistic from its initial guess."""
    from scipy.optimize import curve_fit

    def videval_logistic(x, b1, b2, b3, b4):
        return b2 + np.divide(b1 - b2, 1 + np.exp(np.negative(np.divide(x - b3, np.abs(b4)))))

    rng = np.random.default_rng(3)
    y = rng.uniform(1, 5, 240)
    pred = 3 + 0.8 * np.tanh(y - 3) + rng.normal(0, 0.3, y.size)
    popt, _ = curve_fit(
        videval_logistic, pred, y, p0=[y.max(), y.min(), pred.mean(), 0.5], maxfev=100000
    )
    reference = stats.pearsonr(y, videval_logistic(pred, *popt))[0]
    assert M.plcc_logistic(y, pred) == pytest.approx(reference, abs=1e-6)
    assert M.plcc_logistic(y, pred) > M.plcc(y, pred)


# -- ranking within prompts and across generators ------------------------------------------------
def brute_force_pair_accuracy(y_true, y_pred, groups):
    """The definition, pair by pair: per group, ordered-correctly pairs (prediction ties half)
    over pairs with different MOS; the mean over groups that have such pairs."""
    fractions = []
    for g in dict.fromkeys(groups):
        rows = [i for i, h in enumerate(groups) if h == g]
        correct = pairs = 0
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                i, j = rows[a], rows[b]
                if y_true[i] == y_true[j]:
                    continue
                pairs += 1
                if y_pred[i] == y_pred[j]:
                    correct += 0.5
                elif (y_pred[i] > y_pred[j]) == (y_true[i] > y_true[j]):
                    correct += 1
        if pairs:
            fractions.append(correct / pairs)
    return sum(fractions) / len(fractions) if fractions else float("nan")


def test_pairwise_accuracy_matches_a_brute_force_count_with_ties():
    rng = np.random.default_rng(0)
    for case in range(200):
        n = int(rng.integers(2, 12))
        groups = [f"p{g}" for g in rng.integers(0, 3, size=n)]
        y_true = rng.integers(1, 4, size=n).astype(float)  # few values: MOS ties
        y_pred = rng.integers(0, 3, size=n).astype(float)  # few values: prediction ties
        expected = brute_force_pair_accuracy(list(y_true), list(y_pred), groups)
        got = M.pairwise_accuracy(y_true, y_pred, groups)
        if np.isnan(expected):
            assert np.isnan(got), case
        else:
            assert got == pytest.approx(expected, abs=1e-12), case


def test_pairwise_accuracy_small_cases_by_hand():
    assert M.pairwise_accuracy([1, 2, 3], [10, 20, 30], ["a"] * 3) == 1.0
    assert M.pairwise_accuracy([1, 2, 3], [30, 20, 10], ["a"] * 3) == 0.0
    assert M.pairwise_accuracy([1, 2, 3], [5, 5, 5], ["a"] * 3) == 0.5  # all tied: half each
    # per prompt, then the mean: a (1 of 1) and b (0 of 1); pairs across prompts never count
    assert M.pairwise_accuracy([1, 2, 1, 2], [0, 1, 9, 3], ["a", "a", "b", "b"]) == 0.5
    # equal MOS is no pair; a group with none is left out, as are rows without a prompt
    assert M.pairwise_accuracy([2, 2, 1, 3, 5], [0, 1, 0, 1, 0], ["a", "a", "b", "b", ""]) == 1.0
    assert np.isnan(M.pairwise_accuracy([2, 2], [0, 1], ["a", "a"]))


def test_per_prompt_srcc_is_the_mean_of_scipys_per_prompt_spearman():
    rng = np.random.default_rng(1)
    groups = np.repeat(["p0", "p1", "p2", "p3"], [5, 4, 6, 3])
    y_true = rng.normal(size=groups.size)
    y_pred = y_true + rng.normal(scale=0.8, size=groups.size)
    y_pred[:2] = y_pred[2]  # prediction ties inside a prompt
    expected = np.mean(
        [stats.spearmanr(y_true[groups == g], y_pred[groups == g])[0] for g in np.unique(groups)]
    )
    assert M.per_group_srcc(y_true, y_pred, groups) == pytest.approx(expected, abs=1e-12)
    # a prompt with one MOS value is left out; one with constant predictions counts 0
    y_true[groups == "p3"] = 3.0
    y_pred[groups == "p2"] = 1.0
    kept = [stats.spearmanr(y_true[groups == g], y_pred[groups == g])[0] for g in ("p0", "p1")]
    assert M.per_group_srcc(y_true, y_pred, groups) == pytest.approx(
        (sum(kept) + 0.0) / 3, abs=1e-12
    )


def test_generator_rank_agreement_orders_the_leaderboard():
    gen = np.repeat(["g1", "g2", "g3", "g4"], 3)
    mos = np.repeat([1.0, 2.0, 3.0, 4.0], 3)
    right = M.generator_rank_agreement(mos * 10, mos, gen)
    assert (right["pair_acc"], right["srcc"], right["n_models"]) == (1.0, 1.0, 4)
    swapped = np.repeat([2.0, 1.0, 3.0, 4.0], 3)  # g1 and g2 swapped: 5 of 6 pairs right
    assert M.generator_rank_agreement(swapped, mos, gen)["pair_acc"] == pytest.approx(5 / 6)
    tied = np.repeat([1.0, 1.0, 3.0, 4.0], 3)  # g1 and g2 tied: half a pair
    assert M.generator_rank_agreement(tied, mos, gen)["pair_acc"] == pytest.approx(5.5 / 6)
    assert np.isnan(M.generator_rank_agreement([1.0, 2.0], [1.0, 2.0], ["g", "g"])["pair_acc"])
