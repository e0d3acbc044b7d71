"""What an evaluation gives (``pipeline.evaluation.evaluate``): ``TrialResult`` per trial,
``EvaluationResult`` over them -- medians and stds per metric and MOS dimension, and the
result as a markdown table, a per-trial table, flat rows, a CSV file or a DataFrame."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aigvqa.pipeline.evaluation.metrics import METRIC_NAMES, RANKING_NAMES, metric_legend

MODEL_LEVEL_NAMES = ("model_srcc", "model_plcc", "model_pair_acc")
FALLBACK_NAMES = ("logistic_fallback", "poly3_fallback")
# Columns of the markdown table, and their headers.
TABLE_METRICS = {
    "srcc": "SRCC",
    "krcc": "KRCC",
    "plcc": "PLCC",
    "plcc_logistic": "PLCC (logistic)",
    "plcc_poly3": "PLCC (poly3)",
    "rmse": "RMSE",
    "ntire": "NTIRE",
    "pair_acc": "pair acc (in prompt)",
    "prompt_srcc": "SRCC (in prompt)",
    "model_srcc": "model SRCC",
    "model_plcc": "model PLCC",
    "model_pair_acc": "model pair acc",
}


@dataclass
class TrialResult:
    """One fitted-and-tested trial; ``test`` indexes rows of ``EvaluationResult.y_true``."""

    name: str
    seed: int
    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray
    y_pred: np.ndarray  # [n_test, k]
    metrics: dict[str, dict[str, Any]]  # label -> all_metrics (+ ranking, model-level)
    fit_seconds: float
    best_params: Any = None  # the head's best_params_ after fit, when it has one
    meta_weights: Any = None  # a stack's meta_weights_ ({base: weight}, a list per output)
    meta_choice: Any = None  # a stack's meta_choice_ ("blend" or the base it kept)
    convergence_warnings: int = 0  # ConvergenceWarnings the fit raised (counted, not printed)

    def weights(self, j: int) -> dict[str, float] | None:
        """Meta weights for output column ``j`` (None for heads that are not stacks)."""
        if self.meta_weights is None:
            return None
        return self.meta_weights if isinstance(self.meta_weights, Mapping) else self.meta_weights[j]

    def choice(self, j: int) -> str | None:
        if self.meta_choice is None:
            return None
        return self.meta_choice if isinstance(self.meta_choice, str) else self.meta_choice[j]


@dataclass
class EvaluationResult:
    head: str
    split: str
    label_names: list[str]
    y_true: np.ndarray  # [N, k] targets of the rows trials were tested on
    trials: list[TrialResult]
    # Model-level correlation from the pooled test predictions, when every row was tested
    # exactly once (leave-one-generator-out): label -> model_level_correlation output.
    pooled_model_level: dict[str, dict] | None = None
    notes: list[str] = field(default_factory=list)

    # -- numbers ----------------------------------------------------------------------
    def _label(self, label: str | None) -> str:
        if label is None:
            if len(self.label_names) != 1:
                raise ValueError(f"several MOS dimensions {self.label_names}: name one with label=")
            return self.label_names[0]
        if label not in self.label_names:
            raise KeyError(f"no dimension {label!r}; have {self.label_names}")
        return label

    def metric_names(self) -> list[str]:
        present = set(self.trials[0].metrics[self.label_names[0]]) if self.trials else set()
        return [m for m in (*METRIC_NAMES, *RANKING_NAMES, *MODEL_LEVEL_NAMES) if m in present]

    def values(self, metric: str, label: str | None = None) -> np.ndarray:
        """Per-trial values of one metric for one dimension."""
        label = self._label(label)
        return np.array([float(t.metrics[label][metric]) for t in self.trials])

    def median(self, metric: str, label: str | None = None) -> float:
        v = self.values(metric, label)
        return float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")

    def std(self, metric: str, label: str | None = None) -> float:
        v = self.values(metric, label)
        return float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")

    def fallbacks(self, label: str | None = None) -> dict[str, int]:
        """How many trials' logistic / poly3 fits fell back to raw predictions."""
        label = self._label(label)
        return {f: sum(bool(t.metrics[label][f]) for t in self.trials) for f in FALLBACK_NAMES}

    def caveats(self) -> list[str]:
        """Sentences for numbers that mislead when read alone: a negative SRCC beside a
        positive PLCC (poly3) and the NTIRE score (the polynomial may decrease, NTIRE takes
        absolute values: neither shows an inverted ranking), and within-prompt ranking
        metrics that are nan in every trial (why)."""
        out = []
        names = self.metric_names()
        for label in self.label_names:
            if "srcc" in names and "plcc_poly3" in names:
                srcc = self.values("srcc", label)
                inverted = int(np.sum(srcc < 0))
                if inverted:
                    out.append(
                        f"{label}: SRCC is negative in {inverted} of {len(srcc)} trials: the "
                        "predictions rank those videos backwards, which PLCC (poly3) and NTIRE do "
                        "not show (the cubic fit may decrease and NTIRE adds |SRCC| and "
                        "|PLCC|); read SRCC for the direction of the ranking"
                    )
            ranked = [m for m in RANKING_NAMES if m in names]
            if ranked and all(np.isnan(self.values(m, label)).all() for m in ranked):
                why = (
                    " (each fold tests one generator, so a prompt has one test video)"
                    if self.split.startswith("leave-one-generator-out")
                    else ""
                )
                out.append(
                    f"{label}: the within-prompt ranking ({', '.join(ranked)}) is nan: no "
                    f"test split holds a prompt with two videos of different MOS{why}"
                )
        return out

    def convergence_warnings(self) -> int:
        """ConvergenceWarnings raised by the fits of every trial (counted, never printed)."""
        return sum(t.convergence_warnings for t in self.trials)

    def meta_weights(self, label: str | None = None) -> dict[str, float] | None:
        """A stack's meta weight per base, median over trials (None for other heads)."""
        j = self.label_names.index(self._label(label))
        per_trial = [t.weights(j) for t in self.trials]
        if not per_trial or any(w is None for w in per_trial):
            return None
        names = list(per_trial[0])
        return {n: float(np.median([w.get(n, 0.0) for w in per_trial])) for n in names}

    def meta_choices(self, label: str | None = None) -> dict[str, int]:
        """How many trials kept the blend, and how many kept each single base."""
        j = self.label_names.index(self._label(label))
        counts: dict[str, int] = {}
        for t in self.trials:
            choice = t.choice(j)
            if choice is not None:
                counts[choice] = counts.get(choice, 0) + 1
        return counts

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """label -> metric -> {"median", "std"} over trials."""
        return {
            label: {
                m: {"median": self.median(m, label), "std": self.std(m, label)}
                for m in self.metric_names()
            }
            for label in self.label_names
        }

    # -- tables and files ---------------------------------------------------------------
    def cell(self, metric: str, label: str | None = None, digits: int = 4) -> str:
        """ "median ± std" over trials; a single trial's value alone (its std says nothing)."""
        if len(self.trials) == 1:
            return f"{self.median(metric, label):.{digits}f}"
        return f"{self.median(metric, label):.{digits}f} ± {self.std(metric, label):.{digits}f}"

    def table(
        self, metrics: Sequence[str] | None = None, digits: int = 4, legend: bool = True
    ) -> str:
        """Markdown: one row per MOS dimension, "median ± std" per metric (one trial: its
        value), and under it what each metric means (``legend=False``: the table only)."""
        names = [m for m in (metrics or TABLE_METRICS) if m in self.metric_names()]
        head = ["dimension", *[TABLE_METRICS.get(m, m) for m in names]]
        n = len(self.trials)
        how = "1 trial" if n == 1 else f"{n} trials · median ± std"
        lines = [
            f"**{self.head}** · split `{self.split}` · {how}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for label in self.label_names:
            cells = [self.cell(m, label, digits) for m in names]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        if self.pooled_model_level:
            for label, ml in self.pooled_model_level.items():
                lines.append(
                    f"\nModel level, {label}, pooled over folds ({ml['n_models']} generators): "
                    f"SRCC {ml['srcc']:.{digits}f}, PLCC {ml['plcc']:.{digits}f}, "
                    f"pair acc {ml['pair_acc']:.{digits}f}"
                )
        for label in self.label_names:
            fb = self.fallbacks(label)
            if any(fb.values()):
                lines.append(
                    f"\n{label}: mapping fits fell back to raw predictions in "
                    f"{fb['logistic_fallback']} (logistic) / {fb['poly3_fallback']} (poly3) trials "
                    "(the fit did not converge, had too few points or, for the logistic, came out "
                    "decreasing, which would invert the ranking)"
                )
        lines += [f"\n{line}" for line in self.caveats()]
        for label in self.label_names:
            weights = self.meta_weights(label)
            if weights is not None:
                where = f"{label}: " if len(self.label_names) > 1 else ""
                choices = self.meta_choices(label)
                kept = {k: v for k, v in choices.items() if k != "blend"}
                line = (
                    f"\n{where}meta weights, median over {len(self.trials)} trials: "
                    + ", ".join(f"{n} {w:.3f}" for n, w in weights.items())
                )
                if kept:
                    line += "; the best single base was kept instead of the blend in " + ", ".join(
                        f"{v} trials ({k})" for k, v in kept.items()
                    )
                lines.append(line)
        warned = self.convergence_warnings()
        if warned:
            lines.append(
                f"\n{warned} fits over the {len(self.trials)} trials stopped at max_iter before "
                "converging (scikit-learn ConvergenceWarnings, counted here instead of printed); "
                "a larger max_iter in the head config makes them converge"
            )
        lines += [f"\n{n}" for n in self.notes]
        if legend:
            lines += ["", "What the columns mean:", metric_legend(names)]
        return "\n".join(lines)

    def trial_table(self, digits: int = 4) -> str:
        """Markdown: one row per trial (and dimension): SRCC, PLCC (logistic), the chosen
        hyper-parameters and, for a stack, its meta weights."""
        lines = [
            "| trial | dimension | SRCC | PLCC (logistic) | chosen hyper-parameters | meta "
            "weights |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.trials:
            for j, label in enumerate(self.label_names):
                m = t.metrics[label]
                weights = t.weights(j)
                lines.append(
                    f"| {t.name} | {label} | {m['srcc']:.{digits}f} | "
                    f"{m['plcc_logistic']:.{digits}f} | "
                    f"{_compact(t.best_params)} | {_compact(weights)} |"
                )
        return "\n".join(lines)

    def rows(self, per_trial: bool = False) -> list[dict[str, Any]]:
        """Flat dicts for CSV: one per dimension (median and std columns), or one per trial
        and dimension with that trial's values."""
        out = []
        if per_trial:
            for t in self.trials:
                for label in self.label_names:
                    row = {
                        "head": self.head,
                        "split": self.split,
                        "trial": t.name,
                        "seed": t.seed,
                        "dimension": label,
                        "n_train": len(t.train),
                        "n_test": len(t.test),
                        "fit_seconds": round(t.fit_seconds, 4),
                    }
                    row.update(
                        {m: t.metrics[label][m] for m in (*self.metric_names(), *FALLBACK_NAMES)}
                    )
                    j = self.label_names.index(label)
                    row["best_params"] = _json(t.best_params)
                    row["meta_weights"] = _json(t.weights(j))
                    row["meta_choice"] = t.choice(j) or ""
                    row["convergence_warnings"] = t.convergence_warnings
                    out.append(row)
            return out
        for label in self.label_names:
            row = {
                "head": self.head,
                "split": self.split,
                "trials": len(self.trials),
                "dimension": label,
            }
            for m in self.metric_names():
                row[f"{m}_median"] = self.median(m, label)
                row[f"{m}_std"] = self.std(m, label)
            row.update({f"n_{k}": v for k, v in self.fallbacks(label).items()})
            weights = self.meta_weights(label)
            if weights is not None:
                row["meta_weights_median"] = _json(weights)
            row["n_convergence_warnings"] = self.convergence_warnings()
            out.append(row)
        return out

    def to_csv(self, path, per_trial: bool = False) -> None:
        rows = self.rows(per_trial)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def to_frame(self, per_trial: bool = False):
        """``rows`` as a pandas DataFrame (needs pandas, which aigvqa does not depend on)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError(
                "to_frame needs pandas (pip install pandas); rows() / to_csv() do not"
            ) from err
        return pd.DataFrame(self.rows(per_trial))

    def predictions(self, label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(MOS, prediction) of every tested row over all trials, for scatter plots."""
        j = self.label_names.index(self._label(label))
        mos = np.concatenate([self.y_true[t.test, j] for t in self.trials])
        pred = np.concatenate([t.y_pred[:, j] for t in self.trials])
        return mos, pred

    def __repr__(self) -> str:
        return (
            f"EvaluationResult({self.head!r}, split={self.split!r}, trials={len(self.trials)}, "
            f"labels={self.label_names})"
        )


def _plain(value):
    """JSON-ready: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _json(value) -> str:
    return "" if value is None else json.dumps(_plain(value), sort_keys=True, default=str)


def _compact(value) -> str:
    """``{"C": 8.0, "gamma": 0.125}`` as ``C=8, gamma=0.125`` for tables."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return ", ".join(
            f"{k}={_compact(v) if isinstance(v, Mapping) else _short(v)}" for k, v in value.items()
        )
    return _short(value)


def _short(value) -> str:
    value = _plain(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return "{" + _compact(value) + "}"
    return str(value)
