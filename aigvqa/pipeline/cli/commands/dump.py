"""`aigvqa dump`: export cached features as .npy or .csv files for outside tools."""

from __future__ import annotations

from pathlib import Path

from aigvqa.pipeline.dump import CSV_POOLS, FORMATS

HELP = "export cached features as .npy (values, lengths, ids) or .csv files"
DESCRIPTION = (
    "Write the features of CACHE into --out, keyed by video id. npy: per group "
    "G.values.npy [N, T, D], G.lengths.npy, G.ids.npy (+ extras); csv: G.csv with "
    "video_id and mean-pooled (or flattened) feature columns. Both add videos.csv "
    "(labels, prompts, groups) and failures.csv."
)


def add_arguments(parser) -> None:
    parser.add_argument("cache", type=Path, help="feature cache (.h5) made by `aigvqa extract`")
    parser.add_argument("--format", choices=FORMATS, default="npy", help="output format (default npy)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--groups", help="comma-separated groups to export (default: all)")
    parser.add_argument("--pool", choices=CSV_POOLS, default="mean",
                        help="csv only: mean over time steps (default) or flatten every step")


def run(args) -> int:
    from aigvqa.pipeline.dump import dump

    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    report = dump(args.cache, args.out, format=args.format, groups=groups, pool=args.pool)
    print(report.summary())
    return 0
