"""How FETV's published automatic alignment scores rank videos (prints measured numbers; not a
test).

    python bench/fetv_alignment_ranking.py [--data ../shared/data/fetv]

FETV-EVAL ships, for all 2,476 generated videos (619 prompts x 4 generators), the human
alignment MOS (mean of 3 raters) and the scores of CLIPScore, CLIPScore-ft, BLIPScore and
UMTScore. No weights are needed to ask how those scores *rank*: pooled SRCC (what the
FETV paper compares), and the AIGC benchmarks' ranking view that ``aigvqa evaluate``
reports (``aigvqa.pipeline.evaluation.metrics``): within-prompt pairwise accuracy and mean
per-prompt SRCC (which of one prompt's four videos matches it best?) and the generator
leaderboard's pairwise agreement (mean score vs mean MOS of the 4 generators).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from aigvqa.pipeline.evaluation.metrics import (
    generator_rank_agreement,
    pairwise_accuracy,
    per_group_srcc,
    srcc,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fetv"
SCORES = ("CLIPScore", "CLIPScore-ft", "BLIPScore", "UMTScore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--label", default="alignment", help="static_quality | temporal_quality | alignment"
    )
    args = parser.parse_args(argv)
    ratings = args.data / "fetv_ratings.csv"
    if not ratings.is_file():
        print(f"{ratings} not found (FETV data is in ../shared/data/fetv); nothing to measure")
        return 1
    with open(ratings, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["is_generated"] == "1"]
    print(f"FETV generated videos: {len(rows)}; MOS = {args.label}_mean (3 raters)")
    print(
        f"{'score':<14} {'n':>5} {'pooled SRCC':>12} {'pair acc (in prompt)':>21} "
        f"{'SRCC (in prompt)':>17} {'generator pair acc':>19}"
    )
    for name in SCORES:
        kept = [r for r in rows if r.get(name, "") != ""]
        mos = np.array([float(r[f"{args.label}_mean"]) for r in kept])
        score = np.array([float(r[name]) for r in kept])
        prompts = [r["prompt_idx"] for r in kept]
        generators = [r["source_model"] for r in kept]
        print(
            f"{name:<14} {len(kept):>5} {srcc(mos, score):>12.4f} "
            f"{pairwise_accuracy(mos, score, prompts):>21.4f} "
            f"{per_group_srcc(mos, score, prompts):>17.4f} "
            f"{generator_rank_agreement(score, mos, generators)['pair_acc']:>19.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
