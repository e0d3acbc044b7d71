"""The results files of ``aigvqa ablate`` (``pipeline.evaluation.ablate``): results.csv,
results.md (ranked cells, the metrics' legend) and plots/*.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aigvqa.pipeline.evaluation.ablate import AblationResults


MD_METRICS = (
    ("srcc", "SRCC"),
    ("plcc_logistic", "PLCC (logistic)"),
    ("krcc", "KRCC"),
    ("rmse", "RMSE"),
)
# shown when the cache has prompt / generator groups (the AIGC benchmarks' ranking view)
MD_RANKING = (
    ("pair_acc", "pair acc (in prompt)"),
    ("prompt_srcc", "SRCC (in prompt)"),
    ("model_pair_acc", "model pair acc"),
)


def _within_one_std(ranked: list[dict]) -> int:
    """How many rows after the first (sorted by median SRCC) have a median SRCC within one std
    (the larger of the two) of the first's."""
    import numpy as np

    def num(row, key):
        return float(np.nan_to_num(row.get(key, np.nan), nan=0.0))

    if not ranked:
        return 0
    top = ranked[0]
    count = 0
    for row in ranked[1:]:
        gap = num(top, "srcc_median") - num(row, "srcc_median")
        if gap > max(num(top, "srcc_std"), num(row, "srcc_std")):
            break
        count += 1
    return count


def write_ablation_report(results: AblationResults) -> list[Path]:
    """results.csv, results.md and plots/*.png under the grid's ``out`` folder."""
    import numpy as np

    from aigvqa.pipeline.evaluation.metrics import metric_legend
    from aigvqa.pipeline.evaluation.report import metric_bars, scatter_with_fit, write_csv

    out = results.grid.out
    rows = results.rows()
    files = [write_csv(rows, out / "results.csv")]
    labels = list(dict.fromkeys(r["dimension"] for r in rows))
    shown = MD_METRICS + tuple(m for m in MD_RANKING if any(f"{m[0]}_median" in r for r in rows))
    protocol = (
        "cross-dataset"
        if results.grid.test_cache
        else f"{results.grid.split}, {results.grid.trials} trials"
    )
    md = [
        f"# Ablation: {results.grid.source.name if results.grid.source else ''}",
        "",
        f"cache `{results.grid.cache.name}`, {protocol}, seeds {results.grid.seeds}; "
        "median ± std over trials; sorted by median SRCC.",
        "",
    ]
    for label in labels:
        mine = sorted(
            (r for r in rows if r["dimension"] == label),
            key=lambda r: -np.nan_to_num(r.get("srcc_median", np.nan), nan=-9.0),
        )
        md += [
            f"## {label}",
            "",
            "| rank | head | params | features | seed | " + " | ".join(h for _, h in shown) + " |",
            "|---|---|---|---|---|" + "---|" * len(shown),
        ]
        for rank, r in enumerate(mine, 1):
            cells = [
                f"{r.get(f'{m}_median', np.nan):.4f} ± {r.get(f'{m}_std', np.nan):.4f}"
                for m, _ in shown
            ]
            md.append(
                f"| {rank} | {r['head']} | `{r['params']}` | {r['features']} | {r['seed']} | "
                + " | ".join(cells)
                + " |"
            )
        close = _within_one_std(mine)
        if close:
            md += [
                "",
                f"Ranks 2-{close + 1} are within one std of rank 1's median SRCC: these trials do "
                "not tell those cells apart."
                if close > 1
                else (
                    "Rank 2 is within one std of rank 1's median SRCC: these trials do not tell "
                    "the two apart."
                ),
            ]
        stacks = [r for r in mine if r.get("meta_weights_median")]
        if (
            stacks
        ):  # what each stack did: its meta weights (median over trials; per trial in cells/*.json)
            md += ["", "Meta weights of the stacks (median over trials):", ""]
            md += [
                f"- rank {mine.index(r) + 1} ({r['model']}, seed {r['seed']}): "
                + ", ".join(f"{n} {w:.3f}" for n, w in json.loads(r["meta_weights_median"]).items())
                for r in stacks
            ]
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        bars = metric_bars(
            [{**r, "model": f"{r['model']} s{r['seed']}"} for r in mine],
            out / "plots" / f"srcc-plcc-{slug}.png",
            title=f"{label}: median over trials (bars: std)",
        )
        best = mine[0]
        stored = next(c for c in results.cells if c["key"] == best["key"])
        pred = stored["predictions"][label]
        scatter = scatter_with_fit(
            np.asarray(pred["mos"]),
            np.asarray(pred["pred"]),
            out / "plots" / f"best-{slug}.png",
            title=f"best for {label}: {best['model']} seed {best['seed']}",
        )
        files += [bars, scatter]
        md += [
            "",
            f"![{bars.stem}](plots/{bars.name})",
            f"![{scatter.stem}](plots/{scatter.name})",
            "",
        ]
    md += ["What the columns mean:", "", metric_legend(m for m, _ in shown), ""]
    path = out / "results.md"
    path.write_text("\n".join(md) + "\n")
    files.append(path)
    return files
