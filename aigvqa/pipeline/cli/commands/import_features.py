"""`aigvqa import-features`: foreign per-video features (.mat / .npy / .csv) into a cache group."""

from __future__ import annotations

HELP = "import foreign per-video feature matrices (.mat/.npy/.csv) into a cache group"
DESCRIPTION = """Bring features computed elsewhere (e.g. VIDEVAL's KONVID_1K_VIDEVAL_feats.mat)
into a cache group, with labels into the cache's videos table, so every head, `evaluate` and
`ablate` can use them. Rows of .mat/.npy files are matched to videos by --ids-from, a CSV
listing the videos in the same order.

Each video's row in the feature file is kept in the cache (its source order): VIDEVAL-style
splits (`evaluate --protocol videval`) index the rows in that order.

examples:
  aigvqa import-features KONVID_1K_VIDEVAL_feats.mat --cache konvid.h5 --group videval \\
      --ids-from KONVID_1K_metadata.csv --id-column flickr_id --labels mos
  # YouTube-UGC's 1,323 colour videos: drop the 57 grayscale rows (1-based), rename the MOS
  aigvqa import-features YOUTUBE_UGC_VIDEVAL_feats.mat --cache ugc.h5 --group videval \\
      --ids-from YOUTUBE_UGC_metadata.csv --labels MOSFull=mos --drop-rows 3,6,10,22,...,1380"""


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def parse_labels(text: str | None) -> dict[str, str]:
    """``"MOSFull=mos,tq"`` -> {"MOSFull": "mos", "tq": "tq"}: label columns, optionally renamed."""
    from aigvqa.errors import AigvqaError

    out: dict[str, str] = {}
    for item in _names(text):
        column, _, name = item.partition("=")
        column, name = column.strip(), (name.strip() or column.strip())
        if not column:
            raise AigvqaError(f"--labels entry {item!r}: write COLUMN or COLUMN=NAME")
        out[column] = name
    return out


def add_arguments(parser):
    parser.add_argument("file", help="feature file: .mat (MATLAB v5/v7), .npy or .csv")
    parser.add_argument(
        "--cache", required=True, help="cache file to import into (created if absent)"
    )
    parser.add_argument(
        "--group", required=True, help="name of the cache group to create, e.g. videval"
    )
    parser.add_argument(
        "--variable", help=".mat: the variable holding the [N, D] matrix (default: the only one)"
    )
    parser.add_argument(
        "--ids-from", help="CSV whose rows list the videos in the feature file's row order"
    )
    parser.add_argument(
        "--id-column",
        help="id column of --ids-from, or of a .csv feature file (default: first column)",
    )
    parser.add_argument(
        "--labels",
        "--label-columns",
        dest="labels",
        metavar="COL[=NAME],...",
        help="MOS columns to store as labels, optionally renamed: mos or MOSFull=mos,tq",
    )
    parser.add_argument(
        "--group-columns", help="comma-separated grouping columns (prompt, generator)"
    )
    parser.add_argument(
        "--feature-columns", help=".csv feature file: the feature columns (default: all others)"
    )
    parser.add_argument(
        "--nan",
        choices=("zero", "error"),
        default="zero",
        help="NaN/Inf values: replace by 0 and say how many (default, as VIDEVAL), or refuse",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="storage dtype"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace rows (or a group of another origin)"
    )
    subset = parser.add_argument_group("subsets (import only some rows)")
    subset.add_argument(
        "--keep-ids", metavar="FILE", help="import only the ids listed in FILE (one per line)"
    )
    subset.add_argument(
        "--drop-ids", metavar="FILE", help="leave out the ids listed in FILE (one per line)"
    )
    subset.add_argument(
        "--keep-rows",
        metavar="ROWS",
        help="import only these 1-based rows of the feature file (3,6,10 or a file of numbers)",
    )
    subset.add_argument(
        "--drop-rows",
        metavar="ROWS",
        help="leave out these 1-based rows of the feature file "
        "(3,6,10 or a file of numbers), e.g. YouTube-UGC's 57 grayscale videos",
    )


def run(args) -> int:
    from aigvqa.pipeline.import_features import import_features, parse_rows, read_id_list

    report = import_features(
        args.file,
        args.cache,
        args.group,
        variable=args.variable,
        ids_from=args.ids_from,
        id_column=args.id_column,
        feature_columns=_names(args.feature_columns) or None,
        label_columns=parse_labels(args.labels),
        group_columns=_names(args.group_columns),
        nan=args.nan,
        dtype=args.dtype,
        overwrite=args.overwrite,
        keep_ids=read_id_list(args.keep_ids) if args.keep_ids else None,
        drop_ids=read_id_list(args.drop_ids) if args.drop_ids else None,
        keep_rows=parse_rows(args.keep_rows, "--keep-rows"),
        drop_rows=parse_rows(args.drop_rows, "--drop-rows"),
    )
    print(report.summary())
    return 0
