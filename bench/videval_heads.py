"""Classical heads and a blend on KoNViD-1k VIDEVAL features, under VIDEVAL's protocol.

Prints, per head, median ± std SRCC / PLCC (after the 4-parameter logistic) over VIDEVAL's
random 80/20 splits (``train_test_split(random_state=ceil(8.8*i))``) and the wall time, next
to the published VIDEVAL SVR numbers (median SRCC 0.7832 / PLCC 0.7803 over 100 splits).

    python bench/videval_heads.py --splits 100 --jobs 16 [--heads svr,elasticnet,lightgbm,stack]
                                  [--data ../shared/data/videval_ugc] [--out bench/out/videval]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import scipy.io

from aigvqa.heads.blend import StackingHead
from aigvqa.heads.classical import ElasticNetHead, LightGBMHead, SVRHead
from aigvqa.heads.featureset import FeatureSet
from aigvqa.pipeline.evaluation.evaluate import evaluate
from aigvqa.pipeline.evaluation.splits import videval_splits

PUBLISHED = {"srcc": 0.7832, "plcc_logistic": 0.7803}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videval_ugc"


def load_konvid(folder: Path) -> tuple[FeatureSet, np.ndarray]:
    """VIDEVAL's 60 features of the 1200 KoNViD-1k videos (NaN/inf -> 0, as the authors) + MOS."""
    feats = scipy.io.loadmat(folder / "features" / "KONVID_1K_VIDEVAL_feats.mat")["feats_mat"].astype(np.float64)
    feats[~np.isfinite(feats)] = 0.0
    with open(folder / "features" / "KONVID_1K_metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    mos = np.array([float(r["mos"]) for r in rows])
    ids = [r["flickr_id"] for r in rows]
    return FeatureSet({"videval": feats}, ids=ids), mos


def heads() -> dict:
    svr = SVRHead(search="standard")  # VIDEVAL: MinMax, RBF, C 2^1..2^10 x gamma 2^-8..2^1, RMSE
    return {
        "svr": svr,
        "elasticnet": ElasticNetHead(search="standard"),
        "lightgbm": LightGBMHead(),
        "lightgbm-search": LightGBMHead(search="standard"),
        "stack": StackingHead([("svr", svr), ("lightgbm", LightGBMHead()), ("elasticnet", ElasticNetHead(search="standard"))],
                              meta="nnls", cv=5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--start", type=int, default=1, help="first VIDEVAL split i (to run 100 splits in parts)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--heads", default="svr,elasticnet,lightgbm,stack")
    ap.add_argument("--out", type=Path, default=None, help="folder for per-split CSVs")
    args = ap.parse_args()

    X, y = load_konvid(args.data)
    available = heads()
    splits = videval_splits(len(y), args.start + args.splits - 1)[args.start - 1:]
    print(f"KoNViD-1k VIDEVAL features {X.arrays['videval'].shape[::2]}, VIDEVAL splits {args.start}.."
          f"{args.start + args.splits - 1}, {args.jobs} jobs")
    print(f"published VIDEVAL SVR: SRCC {PUBLISHED['srcc']} / PLCC {PUBLISHED['plcc_logistic']}\n")
    print("| head | SRCC | PLCC (logistic) | KRCC | RMSE (logistic) | wall s | fit s / split |")
    print("|---|---|---|---|---|---|---|")
    for name in args.heads.split(","):
        start = time.perf_counter()
        result = evaluate(available[name], X, y, split=splits, n_jobs=args.jobs, progress=False)
        wall = time.perf_counter() - start
        fit = np.mean([t.fit_seconds for t in result.trials])
        cells = [f"{result.median(m):.4f} ± {result.std(m):.4f}" for m in ("srcc", "plcc_logistic", "krcc", "rmse_logistic")]
        print(f"| {name} | " + " | ".join(cells) + f" | {wall:.0f} | {fit:.1f} |", flush=True)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            result.to_csv(args.out / f"{name}_splits{args.start}-{args.start + args.splits - 1}.csv", per_trial=True)


if __name__ == "__main__":
    main()
