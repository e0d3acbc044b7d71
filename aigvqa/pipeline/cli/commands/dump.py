"""`aigvqa dump`: export cached features as .npy, .csv, .jsonl or .parquet files for outside
tools."""

from __future__ import annotations

from pathlib import Path

from aigvqa.pipeline.dump import CSV_POOLS, DTYPES, FORMATS, VIDEO_PROMPT_MAP

HELP = "export cached features as .npy (values, lengths, ids) or .csv / .jsonl / .parquet tables"
DESCRIPTION = (
    "Write the features of CACHE into --out, rows sorted by id. npy: per group "
    "G.values.npy [N, T, D] in the cache's dtype, G.lengths.npy, G.ids.npy (+ extras, "
    "G.columns.txt when the cache names its columns); csv: G.csv with the id and the "
    "feature columns, named after the cache's column names (handcrafted's statistics, "
    "blip-itm's match.* and image.* ranges) where it has them, else numbered. A CSV of a "
    "sequence group (frames, clip-text's tokens) holds per row the mean over its valid "
    "steps (--pool flatten: every step), then its per-row extras (clip-text: pooled.0 .. "
    "the pooled text embedding). jsonl and parquet (parquet needs pyarrow: pip install "
    "pyarrow) write the same tables as G.jsonl (one JSON object per row) or G.parquet "
    "(typed columns). A "
    "prompt-keyed group (clip-text) has one row per prompt id, and "
    f"{VIDEO_PROMPT_MAP} maps video ids to prompt ids (--expand-prompts: one row per "
    "video). Every dump also writes videos.csv (labels, prompts, groups) and failures.csv "
    "(only its header when nothing failed); a jsonl or parquet dump writes these as .jsonl "
    "or .parquet files too."
)


def add_arguments(parser) -> None:
    parser.add_argument("cache", type=Path, help="feature cache (.h5) made by `aigvqa extract`")
    parser.add_argument(
        "--format", choices=FORMATS, default="npy", help="output format (default npy)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--groups", help="comma-separated groups to export (default: all)")
    parser.add_argument(
        "--pool",
        choices=CSV_POOLS,
        default="mean",
        help="csv / jsonl / parquet: mean over time steps (default) or flatten every step",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="cache",
        help="npy value dtype: the cache's own (default; float16 stays float16) or wider",
    )
    parser.add_argument(
        "--expand-prompts",
        action="store_true",
        help="prompt-keyed groups as one row per video (default: one row per prompt)",
    )


def run(args) -> int:
    from aigvqa.pipeline.dump import dump

    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    report = dump(
        args.cache,
        args.out,
        format=args.format,
        groups=groups,
        pool=args.pool,
        dtype=args.dtype,
        expand_prompts=args.expand_prompts,
    )
    print(report.summary())
    return 0
