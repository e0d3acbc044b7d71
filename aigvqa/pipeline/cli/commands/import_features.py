"""`aigvqa import-features`: foreign per-video features (.mat / .npy / .csv) into a cache group."""

from __future__ import annotations

HELP = "import foreign per-video feature matrices (.mat/.npy/.csv) into a cache group"
DESCRIPTION = """Bring features computed elsewhere (e.g. VIDEVAL's KONVID_1K_VIDEVAL_feats.mat)
into a cache group, with labels into the cache's videos table, so every head, `evaluate` and
`ablate` can use them. Rows of .mat/.npy files are matched to videos by --ids-from, a CSV
listing the videos in the same order.

example:
  aigvqa import-features KONVID_1K_VIDEVAL_feats.mat --cache konvid.h5 --group videval \\
      --ids-from KONVID_1K_metadata.csv --id-column flickr_id --label-columns mos"""


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_arguments(parser):
    parser.add_argument("file", help="feature file: .mat (MATLAB v5/v7), .npy or .csv")
    parser.add_argument("--cache", required=True, help="cache file to import into (created if absent)")
    parser.add_argument("--group", required=True, help="name of the cache group to create, e.g. videval")
    parser.add_argument("--variable", help=".mat: the variable holding the [N, D] matrix (default: the only one)")
    parser.add_argument("--ids-from", help="CSV whose rows list the videos in the feature file's row order")
    parser.add_argument("--id-column", help="id column of --ids-from, or of a .csv feature file (default: first column)")
    parser.add_argument("--label-columns", help="comma-separated MOS columns to store as labels, e.g. mos")
    parser.add_argument("--group-columns", help="comma-separated grouping columns (prompt, generator)")
    parser.add_argument("--feature-columns", help=".csv feature file: the feature columns (default: all others)")
    parser.add_argument("--nan", choices=("zero", "error"), default="zero",
                        help="NaN/Inf values: replace by 0 and say how many (default, as VIDEVAL), or refuse")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="storage dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace rows (or a group of another origin)")


def run(args) -> int:
    from aigvqa.pipeline.import_features import import_features

    report = import_features(
        args.file, args.cache, args.group, variable=args.variable, ids_from=args.ids_from,
        id_column=args.id_column, feature_columns=_names(args.feature_columns) or None,
        label_columns=_names(args.label_columns), group_columns=_names(args.group_columns),
        nan=args.nan, dtype=args.dtype, overwrite=args.overwrite,
    )
    print(report.summary())
    return 0
