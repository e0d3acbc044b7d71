"""Classical heads and the default stack on KoNViD-1k VIDEVAL features, under VIDEVAL's protocol.

Every head is built as `aigvqa evaluate --protocol videval` builds it (each classical head
searches its standard grid on an inner 80/20 split, ranked by the RMSE after the
4-parameter logistic; SVR with MinMax); the stack is the default one of svr + lightgbm +
elasticnet (bases tuned inside each training split, NNLS meta-learner whose candidates
include the best single base). Prints, per head, median ± std SRCC / PLCC (after the
logistic) over VIDEVAL's random 80/20 splits and the wall time; for the stack also its meta
weights (median over splits) and how it compares with the best tuned base.

    python bench/videval_heads.py --splits 100 --jobs 2 [--heads svr,elasticnet,lightgbm,stack]
                                  [--data ../shared/data/videval_ugc] [--out bench/out/videval]

Issue 16 asks the stack for >= best tuned base - 0.002 and >= 0.79 median SRCC (100 splits).
Measured (100 splits, --jobs 2, shared 2-core machine): stack 0.7933 ± 0.020 SRCC /
0.7871 PLCC; svr 0.7833, elasticnet 0.7712, lightgbm 0.7502; stack - best base +0.0100;
meta weights svr 0.463, lightgbm 0.355, elasticnet 0.210; the blend kept in 98 of 100 splits.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import scipy.io

from aigvqa.heads.featureset import FeatureSet
from aigvqa.pipeline.evaluation.evaluate import evaluate
from aigvqa.pipeline.evaluation.protocols import protocol_params
from aigvqa.pipeline.evaluation.splits import videval_splits
from aigvqa.pipeline.training_data import build_head

PUBLISHED = {"srcc": 0.7832, "plcc_logistic": 0.7803}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videval_ugc"
DEFAULT_STACK = {
    "estimators": [["svr", "svr"], ["lightgbm", "lightgbm"], ["elasticnet", "elasticnet"]]
}


def load_konvid(folder: Path) -> tuple[FeatureSet, np.ndarray]:
    """VIDEVAL's 60 features of the 1200 KoNViD-1k videos (NaN/inf -> 0, as the authors) + MOS,
    rows in the metadata file's order (the order VIDEVAL's splits index)."""
    feats = scipy.io.loadmat(folder / "features" / "KONVID_1K_VIDEVAL_feats.mat")[
        "feats_mat"
    ].astype(np.float64)
    feats[~np.isfinite(feats)] = 0.0
    with open(folder / "features" / "KONVID_1K_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mos = np.array([float(r["mos"]) for r in rows])
    ids = [r["flickr_id"] for r in rows]
    return FeatureSet({"videval": feats}, ids=ids), mos


def protocol_head(name: str):
    """The head `aigvqa evaluate --protocol videval --head NAME` builds (stack: the default one)."""
    return build_head(
        name,
        params=DEFAULT_STACK if name == "stack" else None,
        defaults=lambda head, given: protocol_params("videval", head, given),
    )[1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument(
        "--start", type=int, default=1, help="first VIDEVAL split i (to run 100 splits in parts)"
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--heads", default="svr,elasticnet,lightgbm,stack")
    ap.add_argument("--out", type=Path, default=None, help="folder for per-split CSVs")
    args = ap.parse_args()

    X, y = load_konvid(args.data)
    splits = videval_splits(len(y), args.start + args.splits - 1)[args.start - 1 :]
    print(
        f"KoNViD-1k VIDEVAL features {X.arrays['videval'].shape[::2]}, "
        f"VIDEVAL splits {args.start}.."
        f"{args.start + args.splits - 1}, {args.jobs} jobs"
    )
    print(f"published VIDEVAL SVR: SRCC {PUBLISHED['srcc']} / PLCC {PUBLISHED['plcc_logistic']}\n")
    print("| head | SRCC | PLCC (logistic) | KRCC | RMSE (logistic) | wall s | fit s / split |")
    print("|---|---|---|---|---|---|---|")
    medians, notes = {}, []
    for name in args.heads.split(","):
        start = time.perf_counter()
        result = evaluate(protocol_head(name), X, y, split=splits, n_jobs=args.jobs, progress=False)
        wall = time.perf_counter() - start
        fit = np.mean([t.fit_seconds for t in result.trials])
        cells = [
            f"{result.median(m):.4f} ± {result.std(m):.4f}"
            for m in ("srcc", "plcc_logistic", "krcc", "rmse_logistic")
        ]
        print(f"| {name} | " + " | ".join(cells) + f" | {wall:.0f} | {fit:.1f} |", flush=True)
        medians[name] = result.median("srcc")
        if result.meta_weights() is not None:
            kept = {k: v for k, v in result.meta_choices().items() if k != "blend"}
            notes.append(
                f"{name}: meta weights (median) "
                + ", ".join(f"{n} {w:.3f}" for n, w in result.meta_weights().items())
                + f"; best single base kept in {sum(kept.values())} of {len(result.trials)} "
                f"splits {kept or ''}"
            )
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            result.to_csv(
                args.out / f"{name}_splits{args.start}-{args.start + args.splits - 1}.csv",
                per_trial=True,
            )
    print("\n" + "\n".join(notes))
    bases = {k: v for k, v in medians.items() if k != "stack"}
    if "stack" in medians and bases:
        best = max(bases, key=bases.get)
        print(
            f"stack {medians['stack']:.4f} vs best tuned base {best} {bases[best]:.4f}: "
            f"difference {medians['stack'] - bases[best]:+.4f} "
            "(issue 16: >= -0.002, and stack >= 0.79)"
        )


if __name__ == "__main__":
    main()
