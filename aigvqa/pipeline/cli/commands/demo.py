"""`aigvqa demo`: the whole tool on a synthetic dataset it makes itself; nothing downloaded."""

from __future__ import annotations

HELP = "end-to-end demo on generated videos: extract, evaluate 3 heads, write reports"
DESCRIPTION = """Render a few dozen short synthetic videos with prompts, fake generators and
controlled distortions (MOS derived from them by a documented formula), extract handcrafted
and RANDOM-INIT backbone features, evaluate two classical heads and one deep head with
prompt-disjoint splits, train the best, score the videos and write OUT/report/report.md with
tables and PNG plots, and OUT/report.html, one page with the lowest and highest scored videos
(`aigvqa report`). Backbone weights are random: the numbers are for plumbing only.

example:
  aigvqa demo --out aigvqa-demo/"""


def add_arguments(parser):
    parser.add_argument(
        "--out", default="aigvqa-demo", help="output folder (default: aigvqa-demo/)"
    )
    parser.add_argument(
        "--videos", type=int, default=36, help="number of videos (default 36, at least 6)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller videos, fewer trials and epochs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset and the splits")
    parser.add_argument(
        "--workers", type=int, help="Dask worker processes (default: sized to this machine)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from aigvqa.errors import AigvqaError
    from aigvqa.pipeline.demo import run_demo

    if args.videos < 6:
        raise AigvqaError(
            f"--videos {args.videos}: the demo needs at least 6 videos (2 prompts x 3 generators)"
        )
    run_demo(
        args.out,
        args.videos,
        quick=args.quick,
        seed=args.seed,
        n_workers=args.workers,
        progress=not args.no_progress,
    )
    return 0
