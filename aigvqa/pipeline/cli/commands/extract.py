"""`aigvqa extract`: stage one — cache backbone features of every video of a manifest."""

from __future__ import annotations

import sys
from pathlib import Path

from aigvqa.pipeline.cli.commands import add_cluster_arguments, cluster_spec
from aigvqa.pipeline.extract import DEFAULT_CHUNK_SIZE, DEFAULT_DECODE_TIMEOUT

HELP = "stage one: decode each video once, run the extractors on Dask, cache features (HDF5)"
DESCRIPTION = (
    "Decode every video of MANIFEST once, run every requested extractor on it on Dask "
    "workers and write the features into --cache (HDF5). Re-running the same command "
    "resumes: ids already cached are skipped. Failures become rows of the cache's "
    "failures table and never stop the run. Exit status: 0 every video succeeded (or was "
    "already cached); 1 some video failed (listed by `aigvqa info`); 2 an error stopped "
    "the run (bad usage, a cache of other features, missing weights)."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "manifest", type=Path, help="csv / jsonl / T2VQA-DB info.txt / FETV / LGVQ manifest"
    )
    parser.add_argument(
        "--extractors",
        help="comma-separated registry names, e.g. clip-frames,clip-text,slowfast or "
        "blip-itm,blip-text,imagereward (default: every section of --config)",
    )
    parser.add_argument(
        "--cache", type=Path, required=True, help="feature cache file to create or extend (.h5)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file with one [extractor-name] table of options each, e.g. "
        '[clip-frames] arch = "ViT-B-16" / weights = "ckpt.pt" (see examples/extractors.toml); '
        "with --extractors only their tables are used",
    )
    parser.add_argument(
        "--format",
        dest="manifest_format",
        default="auto",
        help="manifest format (default: auto from the file)",
    )
    parser.add_argument(
        "--encoding",
        dest="manifest_encoding",
        default="utf-8",
        help="the manifest's text encoding (default utf-8; e.g. latin-1, cp1252)",
    )
    parser.add_argument(
        "--labels",
        metavar="COL[=NAME],...",
        help="manifest columns to store as labels (MOS), optionally renamed: "
        "Overall=mos,tq (default: the format's own, e.g. mos and mos_<name>)",
    )
    cluster = add_cluster_arguments(parser)
    cluster.add_argument(
        "--decode-workers",
        type=int,
        default=None,
        metavar="N",
        help="decode processes beside each model worker: they decode videos and build the "
        "views while the models run, handing items over in shared memory (default: the cores a "
        "model worker can spare, (cores - workers x torch threads) // workers; 0 = decode inside "
        "the model worker)",
    )
    cluster.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        metavar="N",
        help="chunk tasks a model worker runs at once (default 1); with decode processes, "
        "2 on a GPU worker lets one chunk's last forward passes overlap the next chunk's "
        "decoding (each task gets half of the decode processes)",
    )
    cluster.add_argument(
        "--decode-timeout",
        type=float,
        default=DEFAULT_DECODE_TIMEOUT,
        metavar="SECONDS",
        help="a decode process silent this long on one video (a file that hangs FFmpeg) is "
        f"killed and the video fails (default {DEFAULT_DECODE_TIMEOUT:g})",
    )
    cluster.add_argument(
        "--decode-threads",
        type=int,
        default=None,
        help="FFmpeg decoder threads per video (default: 1 with decode processes, "
        "else --torch-threads on CPU workers, FFmpeg's one per core with --gpus; 0 = FFmpeg's "
        "default)",
    )
    cluster.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=f"videos per task and per shard file (default {DEFAULT_CHUNK_SIZE}, "
        "or 4 per decode process when that is more)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="recompute ids already in the cache"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="random backbone weights (tests/benchmarks only; stamped RANDOM-INIT in the cache)",
    )
    parser.add_argument(
        "--weights", help="checkpoint path, when exactly one requested extractor takes weights"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from aigvqa.pipeline.cli.commands.import_features import parse_labels
    from aigvqa.pipeline.extract import extract, extractor_options
    from aigvqa.pipeline.manifest import read_manifest

    spec = extractor_options(args.config, args.extractors)
    labels = parse_labels(args.labels)
    records = read_manifest(
        args.manifest,
        fmt=args.manifest_format,
        encoding=args.manifest_encoding,
        label_cols={name: col for col, name in labels.items()} if labels else None,
    )
    report = extract(
        records,
        spec,
        args.cache,
        cluster=cluster_spec(args, threads_per_worker=args.threads_per_worker),
        decode_threads=args.decode_threads,
        decode_workers=args.decode_workers,
        decode_timeout=args.decode_timeout,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        random_init=args.random_init,
        weights=args.weights,
    )
    print(report.summary())
    if report.failed:
        # exit 1: the cache is usable, but not every video made it (0: all did; 2: an error
        # stopped the run). A script must not read "every video failed" as success.
        print(
            f"{report.failed} video(s) failed; re-running the command retries them", file=sys.stderr
        )
        return 1
    return 0
