"""Correlation metrics of the VQA field, as the seed papers compute them.

* SRCC / KRCC / PLCC / RMSE on raw predictions.
* PLCC and RMSE after a 4-parameter logistic fit of predictions to MOS (VQEG, SimpleVQA,
  VIDEVAL: ``y = b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``).
* PLCC after a 3rd-order polynomial fit (NTIRE 2024 AIGC video challenge).
* NTIRE main score ``(|SRCC| + |PLCC_poly3|) / 2``.
* Model-level correlation: mean prediction vs mean MOS per generator.
* Ranking as the AIGC benchmarks read it: within-prompt pairwise accuracy, mean per-prompt
  SRCC (which of one prompt's videos is better?) and generator rank agreement (is the
  generator leaderboard right?).

A mapping fit that does not converge never raises: it warns (``MappingFitWarning``), falls
back to the raw predictions and says so in its ``MappingFit.fell_back`` flag, which
``all_metrics`` reports as ``logistic_fallback`` / ``poly3_fallback``.

The logistic is kept monotone increasing: a least-squares fit that comes out decreasing
(``b1 < b2``) maps the highest predictions to the lowest MOS, which turns a negative
correlation into a positive PLCC (SRCC -0.19 beside "PLCC (logistic)" 0.89). Such a fit is
not used: the raw predictions are, flagged as a fallback like a fit that did not converge.

``METRIC_LEGEND`` / ``metric_legend`` say in words what each metric means, its range and
which way is better; every table of results prints it under itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit


class MappingFitWarning(UserWarning):
    """A logistic / polynomial mapping fit failed and the raw predictions were used instead."""


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values, y_pred {y_pred.size}")
    return y_true, y_pred


def _constant(a: np.ndarray) -> bool:
    return a.size < 2 or bool(np.all(a == a[0]))


def _correlation(fn, y_true, y_pred) -> float:
    """scipy correlation, nan (no warning) when either side is constant or has < 2 values:
    an undefined correlation is reported as nan, not as a crash or a warning per trial.

    Numerically constant counts as constant: scipy's Pearson warns (NearConstantInputWarning)
    when ``norm(x - mean(x)) < 1e-13 |mean(x)|``, where the subtraction has lost the digits
    the coefficient is made of (a head predicting one value up to rounding noise); that
    value is noise, so it is nan too, like the exactly constant case."""
    y_true, y_pred = _pair(y_true, y_pred)
    if _constant(y_true) or _constant(y_pred):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error", stats.ConstantInputWarning)
        warnings.simplefilter("error", stats.NearConstantInputWarning)
        try:
            return float(fn(y_true, y_pred)[0])
        except (stats.ConstantInputWarning, stats.NearConstantInputWarning):
            return float("nan")


def srcc(y_true, y_pred) -> float:
    """Spearman rank-order correlation."""
    return _correlation(stats.spearmanr, y_true, y_pred)


def krcc(y_true, y_pred) -> float:
    """Kendall rank-order correlation (tau-b, scipy's default)."""
    return _correlation(stats.kendalltau, y_true, y_pred)


def plcc(y_true, y_pred) -> float:
    """Pearson linear correlation on raw predictions."""
    return _correlation(stats.pearsonr, y_true, y_pred)


def rmse(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def logistic_4(x, b1, b2, b3, b4):
    """VQEG's 4-parameter logistic, in VIDEVAL's parametrisation (b4 enters as |b4|):
    ``b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``, computed without overflow."""
    return b2 + (b1 - b2) * expit((np.asarray(x, dtype=np.float64) - b3) / np.abs(b4))


def _logistic_4_jacobian(x, b1, b2, b3, b4):
    # Analytic derivatives: MINPACK's finite differences scale their step by |parameter|, so
    # a centre b3 starting at ~0 (zero-mean predictions) would get a zero derivative and
    # never move.
    s = expit((x - b3) / np.abs(b4))
    ds = s * (1.0 - s) * (b1 - b2)
    return np.column_stack([s, 1.0 - s, -ds / np.abs(b4), -ds * (x - b3) * np.sign(b4) / b4**2])


@dataclass(frozen=True)
class MappingFit:
    """Predictions mapped onto the MOS scale, and how the mapping went."""

    mapped: np.ndarray
    params: np.ndarray | None  # logistic (b1..b4) or polynomial coefficients, highest first
    fell_back: bool  # True: the fit failed and ``mapped`` are the raw predictions
    reason: str = ""


def _fall_back(kind: str, y_pred: np.ndarray, reason: str) -> MappingFit:
    warnings.warn(
        f"{kind} fit of predictions to MOS failed ({reason}); using raw predictions instead",
        MappingFitWarning,
        stacklevel=3,
    )
    return MappingFit(y_pred.copy(), None, True, reason)


def fit_logistic(y_true, y_pred, maxfev: int = 20000) -> MappingFit:
    """Least-squares 4-parameter logistic from predictions to MOS (VIDEVAL's compute_metrics).

    The initial guess is VIDEVAL's ``[max(y), min(y), mean(pred), 0.5]`` except that the
    slope starts at the predictions' std, so the fit does not depend on the score scale.
    """
    y_true, y_pred = _pair(y_true, y_pred)
    if _constant(y_pred) or _constant(y_true):
        return _fall_back("logistic", y_pred, "constant predictions or MOS")
    if y_pred.size < 4:  # curve_fit raises TypeError when points < parameters
        return _fall_back("logistic", y_pred, f"{y_pred.size} points for 4 parameters")
    p0 = [y_true.max(), y_true.min(), y_pred.mean(), y_pred.std()]
    try:
        with warnings.catch_warnings():
            # "covariance could not be estimated" and overflow in exp are not failures of the
            # fitted curve itself; the finiteness check below catches real ones.
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = curve_fit(
                logistic_4, y_pred, y_true, p0=p0, jac=_logistic_4_jacobian, maxfev=maxfev
            )
            mapped = logistic_4(y_pred, *params)
    except (RuntimeError, ValueError, FloatingPointError) as err:
        return _fall_back("logistic", y_pred, str(err).splitlines()[0])
    if not np.all(np.isfinite(mapped)):
        return _fall_back("logistic", y_pred, "non-finite mapped values")
    if params[0] < params[1]:
        # b1 (the upper asymptote's weight) below b2: the curve falls, and would reward
        # predictions that rank the videos backwards with a high PLCC
        return _fall_back(
            "logistic", y_pred, "the fitted logistic is decreasing (it would invert the ranking)"
        )
    return MappingFit(mapped, params, False)


def fit_poly3(y_true, y_pred) -> MappingFit:
    """Least-squares 3rd-order polynomial from predictions to MOS (NTIRE 2024)."""
    y_true, y_pred = _pair(y_true, y_pred)
    if np.unique(y_pred).size < 4:
        return _fall_back("poly3", y_pred, "fewer than 4 distinct predictions")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.RankWarning)
            coefs = np.polyfit(y_pred, y_true, 3)
    except (np.exceptions.RankWarning, np.linalg.LinAlgError, ValueError) as err:
        return _fall_back("poly3", y_pred, str(err).splitlines()[0])
    mapped = np.polyval(coefs, y_pred)
    if not np.all(np.isfinite(mapped)):
        return _fall_back("poly3", y_pred, "non-finite mapped values")
    return MappingFit(mapped, coefs, False)


def plcc_logistic(y_true, y_pred) -> float:
    """PLCC after the 4-parameter logistic mapping (raw PLCC, with a warning, if it fails)."""
    return plcc(y_true, fit_logistic(y_true, y_pred).mapped)


def plcc_poly3(y_true, y_pred) -> float:
    """PLCC after the 3rd-order polynomial mapping (raw PLCC, with a warning, if it fails)."""
    return plcc(y_true, fit_poly3(y_true, y_pred).mapped)


def ntire_score(srcc_value: float, plcc_value: float) -> float:
    """NTIRE 2024 main score: (|SRCC| + |PLCC|) / 2."""
    return (abs(srcc_value) + abs(plcc_value)) / 2.0


# What each metric means, in the words a results table prints under itself (metric_legend).
METRIC_LEGEND = {
    "srcc": "SRCC: Spearman rank correlation of predictions with MOS, -1..1, higher is better "
    "(1: same order; 0: no relation; negative: backwards)",
    "krcc": "KRCC: Kendall rank correlation, -1..1, higher is better (stricter than SRCC: "
    "0.6 KRCC is about 0.8 SRCC)",
    "plcc": "PLCC: Pearson linear correlation of raw predictions with MOS, -1..1, higher is better",
    "plcc_logistic": "PLCC (logistic): PLCC after fitting an increasing 4-parameter logistic from "
    "predictions to MOS (VQEG, VIDEVAL), -1..1, higher is better",
    "plcc_poly3": "PLCC (poly3): PLCC after a 3rd-order polynomial fit (NTIRE 2024), -1..1, "
    "higher is better",
    "rmse": "RMSE: root-mean-square error of raw predictions in MOS units, 0..inf, LOWER is better",
    "rmse_logistic": "RMSE (logistic): RMSE after the logistic fit, MOS units, LOWER is better",
    "ntire": "NTIRE: (|SRCC| + |PLCC (poly3)|) / 2, the NTIRE 2024 challenge score, 0..1, "
    "higher is better",
    "pair_acc": "pair acc (in prompt): share of one prompt's video pairs with different MOS "
    "that the prediction orders right, averaged over prompts, 0..1, higher is better (0.5: chance)",
    "prompt_srcc": "SRCC (in prompt): mean over prompts of the SRCC among one prompt's videos, "
    "-1..1, higher is better",
    "model_srcc": "model SRCC: SRCC of the generators' mean prediction vs mean MOS (the "
    "leaderboard), -1..1, higher is better; few generators make it coarse",
    "model_plcc": "model PLCC: PLCC of the same per-generator means, -1..1, higher is better",
    "model_pair_acc": "model pair acc: share of generator pairs ranked right, 0..1, higher is "
    "better (0.5: chance)",
}


def metric_legend(metrics, *, prefix: str = "- ") -> str:
    """The ``METRIC_LEGEND`` lines of ``metrics`` (names as in ``all_metrics``; unknown names
    are skipped), one per line: what a reader of a results table needs to read it."""
    return "\n".join(
        prefix + METRIC_LEGEND[m] for m in dict.fromkeys(metrics) if m in METRIC_LEGEND
    )


# Names and order of the numeric entries of ``all_metrics``; the evaluation tables use them.
METRIC_NAMES = (
    "srcc",
    "krcc",
    "plcc",
    "plcc_logistic",
    "plcc_poly3",
    "rmse",
    "rmse_logistic",
    "ntire",
)
# ``ranking_metrics``: within-prompt ranking (needs prompt groups).
RANKING_NAMES = ("pair_acc", "prompt_srcc")


def all_metrics(y_true, y_pred) -> dict:
    """Every metric for one MOS dimension.

    Numeric keys are ``METRIC_NAMES``; ``ntire`` uses the poly3 PLCC; ``rmse_logistic`` is
    VIDEVAL's RMSE (after the logistic). ``logistic_fallback`` / ``poly3_fallback`` are True
    when that fit failed and its entries were computed on raw predictions.
    """
    y_true, y_pred = _pair(y_true, y_pred)
    logistic = fit_logistic(y_true, y_pred)
    poly = fit_poly3(y_true, y_pred)
    out = {
        "srcc": srcc(y_true, y_pred),
        "krcc": krcc(y_true, y_pred),
        "plcc": plcc(y_true, y_pred),
        "plcc_logistic": plcc(y_true, logistic.mapped),
        "plcc_poly3": plcc(y_true, poly.mapped),
        "rmse": rmse(y_true, y_pred),
        "rmse_logistic": rmse(y_true, logistic.mapped),
    }
    out["ntire"] = ntire_score(out["srcc"], out["plcc_poly3"])
    out["logistic_fallback"] = logistic.fell_back
    out["poly3_fallback"] = poly.fell_back
    return out


def model_level_correlation(pred, mos, generator, min_models: int = 3) -> dict:
    """Correlation of per-generator means: mean prediction vs mean MOS of each generator.

    Returns ``{"srcc", "krcc", "plcc", "n_models"}``; the correlations are nan (with a
    warning) when fewer than ``min_models`` generators are present.
    """
    pred, mos = _pair(pred, mos)
    generator = np.asarray(generator).ravel()
    if generator.shape != pred.shape:
        raise ValueError(f"{generator.size} generator labels for {pred.size} predictions")
    names, inverse = np.unique(generator, return_inverse=True)
    counts = np.bincount(inverse)
    mean_pred = np.bincount(inverse, weights=pred) / counts
    mean_mos = np.bincount(inverse, weights=mos) / counts
    out = {"n_models": int(names.size)}
    if names.size < min_models:
        warnings.warn(
            f"model-level correlation needs at least {min_models} generators, got {names.size}; "
            "reporting nan",
            UserWarning,
            stacklevel=2,
        )
        out.update(srcc=float("nan"), krcc=float("nan"), plcc=float("nan"))
        return out
    out.update(
        srcc=srcc(mean_mos, mean_pred),
        krcc=krcc(mean_mos, mean_pred),
        plcc=plcc(mean_mos, mean_pred),
    )
    return out


# -- ranking within prompts and across generators (the AIGC benchmarks' view) ----------------
# Text-to-video benchmarks compare videos *of one prompt* (which generator did this prompt
# best?) and generators with each other (the leaderboard), not every video with every other.


def _group_index(groups, n: int) -> tuple[np.ndarray, int]:
    """Group number of each row (-1 for a row without one: None, NaN or ""), group count."""
    groups = np.asarray(groups, dtype=object).ravel()
    if groups.shape != (n,):
        raise ValueError(f"{groups.size} group labels for {n} predictions")
    labels = np.array(
        ["" if g is None or (isinstance(g, float) and np.isnan(g)) else str(g) for g in groups],
        dtype=object,
    )
    present = labels != ""
    inverse = np.full(n, -1, dtype=np.int64)
    names, inverse[present] = np.unique(labels[present].astype(str), return_inverse=True)
    return inverse, int(names.size)


def _group_rows(inverse: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Row indices of each group (rows without a group, -1, are in none)."""
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse[inverse >= 0], minlength=n_groups)
    start = int((inverse < 0).sum())
    return np.split(order[start:], np.cumsum(counts)[:-1]) if n_groups else []


def _pair_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, int]:
    """(correctly ordered pairs, ties in the prediction counted half; pairs with different MOS)."""
    dt = np.sign(y_true[:, None] - y_true[None, :])
    dp = np.sign(y_pred[:, None] - y_pred[None, :])
    upper = np.triu(np.ones_like(dt, dtype=bool), k=1) & (dt != 0)
    agree = (dt == dp) & upper
    tied = (dp == 0) & upper
    return float(agree.sum() + 0.5 * tied.sum()), int(upper.sum())


def pairwise_accuracy(y_true, y_pred, groups) -> float:
    """Within-group pairwise accuracy: for each group (prompt), the fraction of its video pairs
    with different MOS that the prediction orders the same way (a tie in the prediction
    counts half, as a coin toss would), averaged over the groups that have such a pair.
    Rows without a group label are left out; nan when no group has a pair."""
    y_true, y_pred = _pair(y_true, y_pred)
    fractions = []
    for rows in _group_rows(*_group_index(groups, y_true.size)):
        correct, pairs = _pair_counts(y_true[rows], y_pred[rows])
        if pairs:
            fractions.append(correct / pairs)
    return float(np.mean(fractions)) if fractions else float("nan")


def per_group_srcc(y_true, y_pred, groups) -> float:
    """Mean over groups (prompts) of the SRCC between prediction and MOS inside the group.

    Groups with fewer than two videos or one MOS value are left out (nothing to rank), as
    are rows without a group label; a group whose predictions are all equal counts 0 (it
    ranks nothing), rather than being left out, which would flatter a head that cannot
    tell a prompt's videos apart. nan when no group is left."""
    y_true, y_pred = _pair(y_true, y_pred)
    values = []
    for rows in _group_rows(*_group_index(groups, y_true.size)):
        t, p = y_true[rows], y_pred[rows]
        if _constant(t):
            continue
        values.append(0.0 if _constant(p) else float(stats.spearmanr(t, p)[0]))
    return float(np.mean(values)) if values else float("nan")


def generator_rank_agreement(pred, mos, generator) -> dict:
    """How well the generator leaderboard by mean prediction agrees with the one by mean MOS:
    ``{"pair_acc": fraction of generator pairs (different mean MOS) in the same order, ties
    half; "srcc": SRCC of the means; "n_models"}``. Rows without a generator label are left
    out; pair_acc is nan with fewer than two generators, srcc with fewer than three distinct
    means (``model_level_correlation`` gives the same SRCC with PLCC and KRCC)."""
    pred, mos = _pair(pred, mos)
    inverse, n_models = _group_index(generator, pred.size)
    known = inverse >= 0
    inverse, pred, mos = inverse[known], pred[known], mos[known]
    counts = np.bincount(inverse, minlength=n_models)
    mean_pred = np.bincount(inverse, weights=pred, minlength=n_models) / np.maximum(counts, 1)
    mean_mos = np.bincount(inverse, weights=mos, minlength=n_models) / np.maximum(counts, 1)
    correct, pairs = _pair_counts(mean_mos, mean_pred)
    return {
        "pair_acc": correct / pairs if pairs else float("nan"),
        "srcc": srcc(mean_mos, mean_pred),
        "n_models": n_models,
    }


def ranking_metrics(y_true, y_pred, prompts) -> dict:
    """``{"pair_acc": pairwise_accuracy, "prompt_srcc": per_group_srcc}`` over ``prompts``."""
    return {
        "pair_acc": pairwise_accuracy(y_true, y_pred, prompts),
        "prompt_srcc": per_group_srcc(y_true, y_pred, prompts),
    }
