"""Result tables and plots shared by ``aigvqa evaluate``, ``ablate`` and ``demo``.

Rows are plain dicts (one per model x MOS dimension); tables go out as CSV and markdown,
plots as PNG through matplotlib's non-interactive Agg backend (no display needed):

- ``scatter_with_fit``: predicted score vs MOS, with the 4-parameter logistic the PLCC is
  computed after (``aigvqa.pipeline.evaluation.metrics.fit_logistic``);
- ``metric_bars``: median SRCC / PLCC per model with std error bars.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on headless machines and in worker processes
    import matplotlib.pyplot as plt

    return plt


def format_value(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float | np.floating):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def write_csv(
    rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str] | None = None
) -> Path:
    """Rows as CSV; columns default to every key, in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns or _columns(rows))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    tmp.replace(path)
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, list | tuple):
        return "+".join(map(str, value))
    return value


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Sequence[str] | None = None,
    digits: int = 4,
) -> str:
    """A GitHub markdown table of ``columns`` (``headers`` renames them)."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append(
            "| " + " | ".join(format_value(row.get(c, ""), digits) for c in columns) + " |"
        )
    return "\n".join(lines)


def scatter_with_fit(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    groups: Sequence[str] | None = None,
    xlabel: str = "predicted score",
    ylabel: str = "MOS",
) -> Path:
    """Predicted score vs MOS, coloured by ``groups`` (e.g. generator), with the fitted
    4-parameter logistic curve; when the fit fails the plot says so instead of a curve."""
    from aigvqa.pipeline.evaluation.metrics import (
        MappingFitWarning,
        fit_logistic,
        logistic_4,
        plcc,
        srcc,
    )

    plt = _pyplot()
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    if groups is not None:
        groups = np.asarray(groups, dtype=object)
        for name in sorted(set(groups.tolist())):
            sel = groups == name
            ax.scatter(y_pred[sel], y_true[sel], s=22, alpha=0.8, label=str(name) or "(none)")
        ax.legend(fontsize=8, loc="best")
    else:
        ax.scatter(y_pred, y_true, s=22, alpha=0.8)
    with warnings.catch_warnings():
        # a fallback is said in the plot's title, where the reader of the plot looks
        warnings.simplefilter("ignore", MappingFitWarning)
        fit = fit_logistic(y_true, y_pred)
    if not fit.fell_back and fit.params is not None:
        xs = np.linspace(y_pred.min(), y_pred.max(), 200)
        ax.plot(
            xs, logistic_4(xs, *fit.params), color="black", lw=1.5, label="4-param logistic fit"
        )
        ax.legend(fontsize=8, loc="best")
        note = ""
    else:
        note = f"\n(no logistic curve: {fit.reason}; PLCC on raw predictions)"
    stats = (
        f"SRCC {srcc(y_true, y_pred):.3f}  PLCC(logistic) {plcc(y_true, fit.mapped):.3f}  "
        f"n={y_true.size}"
    )
    ax.set_title((title + "\n" if title else "") + stats + note, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def metric_bars(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    label_key: str = "model",
    metrics: Sequence[str] = ("srcc", "plcc_logistic"),
    metric_names: Mapping[str, str] | None = None,
    title: str = "",
) -> Path:
    """Grouped horizontal bars: per row, ``<metric>_median`` with ``<metric>_std`` error bars."""
    plt = _pyplot()
    names = {
        "srcc": "SRCC",
        "plcc": "PLCC",
        "plcc_logistic": "PLCC (logistic)",
        "krcc": "KRCC",
        "plcc_poly3": "PLCC (poly3)",
        **(metric_names or {}),
    }
    labels = [str(r[label_key]) for r in rows]
    n = len(rows)
    height = 0.8 / max(len(metrics), 1)
    # room for the labels on the left, so long cell names do not squeeze the bars
    width = 6.5 + 0.075 * max((len(s) for s in labels), default=0)
    fig, ax = plt.subplots(figsize=(width, 1.4 + 0.3 * n * len(metrics)), dpi=120)
    y = np.arange(n)
    for j, metric in enumerate(metrics):
        med = np.array([_num(r.get(f"{metric}_median")) for r in rows])
        std = np.array([_num(r.get(f"{metric}_std")) for r in rows])
        ax.barh(
            y + (j - (len(metrics) - 1) / 2) * height,
            np.nan_to_num(med),
            height,
            xerr=np.nan_to_num(std),
            capsize=3,
            label=names.get(metric, metric),
        )
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("median over trials (bars: std)")
    lo = min(
        0.0,
        float(np.nanmin([_num(r.get(f"{m}_median")) for r in rows for m in metrics] + [0.0])) - 0.1,
    )
    ax.set_xlim(lo, 1.0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def pooled_predictions(result, label: str, color_by: np.ndarray | None = None):
    """(MOS, prediction, colour groups or None) of every tested row over a result's trials."""
    mos, pred = result.predictions(label)
    colors = None
    if color_by is not None:
        colors = np.concatenate([np.asarray(color_by, dtype=object)[t.test] for t in result.trials])
    return mos, pred, colors


def evaluation_plots(
    results: Sequence[Any],
    folder: str | Path,
    *,
    color_by: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> list[Path]:
    """PNG plots of ``EvaluationResult`` objects: one predicted-vs-MOS scatter (pooled test
    predictions, fitted logistic) per result and dimension, and one SRCC / PLCC bar chart.

    ``color_by`` colours the scatter by a per-row group of the evaluated data (e.g. generator).
    """
    folder = Path(folder)
    paths = []
    rows = []
    for result in results:
        for label in labels or result.label_names:
            mos, pred, colors = pooled_predictions(result, label, color_by)
            name = f"scatter-{_slug(result.head)}-{_slug(label)}.png"
            paths.append(
                scatter_with_fit(
                    mos,
                    pred,
                    folder / name,
                    groups=colors,
                    title=(
                        f"{result.head} · {label} · {result.split} "
                        f"({len(result.trials)} trials, test rows pooled)"
                    ),
                )
            )
        for row in result.rows():
            if labels is None or row["dimension"] in labels:
                rows.append({**row, "model": f"{row['head']} · {row['dimension']}"})
    if rows:
        paths.append(
            metric_bars(
                rows,
                folder / "srcc-plcc.png",
                title=title or f"median over trials, split {results[0].split}",
            )
        )
    return paths
