"""VIDEVAL's SVR protocol on KoNViD-1k: shared RBF kernels vs one RBF SVR per candidate.

The protocol fits 100 candidates (C x gamma) on an inner 80/20 split of every outer training
split, then refits the winner. ``SVRHead`` shares one kernel per gamma across C
(``SVR(kernel="precomputed")``, threads over gammas); ``PerCandidateSVR`` below is the
previous path (``shared_kernels = False``: every candidate an RBF SVR of its own). For the
same splits this prints

- CPU seconds of both paths in this process (``--jobs 1`` inside: robust to a loaded machine)
  and their ratio;
- wall seconds of both paths through ``evaluate`` with ``--jobs`` parallel splits, and the
  ratio of the previous path at ``--jobs-before`` (today's default: 1) to the shared path;
- whether every split chose the same (C, gamma) and the largest difference between the two
  paths' test predictions and search losses (float rounding only).

    python bench/videval_protocol.py [--splits 8] [--jobs 2] [--jobs-before 1]
        [--scoring rmse|logistic-rmse] [--data ../shared/data/videval_ugc]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from aigvqa.heads.classical import SVRHead
from aigvqa.pipeline.evaluation.evaluate import evaluate
from aigvqa.pipeline.evaluation.splits import videval_splits

# one loader of VIDEVAL's KoNViD-1k features for both VIDEVAL benches
sys.path.insert(0, str(Path(__file__).resolve().parent))
from videval_heads import DEFAULT_DATA, load_konvid  # noqa: E402


class PerCandidateSVR(SVRHead):
    """The previous search: every candidate fit as its own RBF SVR (kernels recomputed)."""

    shared_kernels = False


def cpu_fits(cls, X, y, splits, scoring):
    """CPU seconds of fitting every split's head in this process, and what each chose."""
    start = time.process_time()
    fitted = []
    for s in splits:
        head = cls(search="standard", search_scoring=scoring, random_state=s.seed).fit(
            X[s.train], y[s.train]
        )
        fitted.append(
            (head.best_params_, [r[scoring] for r in head.search_results_], head.predict(X[s.test]))
        )
    return time.process_time() - start, fitted


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, default=8, help="VIDEVAL splits 1..N (default 8)")
    ap.add_argument(
        "--jobs", type=int, default=2, help="parallel splits for the shared-kernel path (default 2)"
    )
    ap.add_argument(
        "--jobs-before",
        type=int,
        default=1,
        help="parallel splits for the previous path (default 1: `aigvqa evaluate`'s default)",
    )
    ap.add_argument("--scoring", default="rmse", choices=("rmse", "logistic-rmse"))
    args = ap.parse_args()

    X, y = load_konvid(args.data)
    splits = videval_splits(len(y), args.splits)
    print(
        f"KoNViD-1k, VIDEVAL splits 1..{args.splits}, SVR standard grid (100 candidates), "
        f"scoring {args.scoring}"
    )

    cpu_old, old = cpu_fits(PerCandidateSVR, X, y, splits, args.scoring)
    cpu_new, new = cpu_fits(SVRHead, X, y, splits, args.scoring)
    same = sum(a[0] == b[0] for a, b in zip(old, new))
    pred_diff = max(float(np.max(np.abs(a[2] - b[2]))) for a, b in zip(old, new))
    loss_diff = max(float(np.max(np.abs(np.subtract(a[1], b[1])))) for a, b in zip(old, new))
    print(
        f"CPU s in-process: per-candidate {cpu_old:.1f}, shared kernels {cpu_new:.1f}, "
        f"ratio {cpu_old / cpu_new:.2f}x"
    )
    print(
        f"same (C, gamma) in {same}/{len(splits)} splits; "
        f"max |test prediction diff| {pred_diff:.2e}; "
        f"max |search loss diff| {loss_diff:.2e}"
    )

    walls = {}
    for label, cls, jobs in (
        ("per-candidate", PerCandidateSVR, args.jobs_before),
        ("shared", SVRHead, args.jobs),
    ):
        start = time.perf_counter()
        result = evaluate(
            cls(search="standard", search_scoring=args.scoring),
            X,
            y,
            split=splits,
            n_jobs=jobs,
            progress=False,
        )
        walls[label] = time.perf_counter() - start
        print(
            f"evaluate {label:13s} --jobs {jobs}: wall {walls[label]:6.1f} s, median SRCC "
            f"{result.median('srcc'):.4f} PLCC {result.median('plcc_logistic'):.4f}",
            flush=True,
        )
    print(
        f"wall ratio (per-candidate --jobs {args.jobs_before}) / (shared --jobs {args.jobs}): "
        f"{walls['per-candidate'] / walls['shared']:.2f}x"
    )


if __name__ == "__main__":
    main()
