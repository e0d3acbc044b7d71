"""`aigvqa extract`: stage one — cache backbone features of every video of a manifest."""

from __future__ import annotations

import sys
from pathlib import Path

from aigvqa.pipeline.cli.commands import add_cluster_arguments
from aigvqa.pipeline.extract import DEFAULT_CHUNK_SIZE, ExtractError

HELP = "stage one: decode each video once, run the extractors on Dask, cache features (HDF5)"
DESCRIPTION = (
    "Decode every video of MANIFEST once, run every requested extractor on it on Dask "
    "workers and write the features into --cache (HDF5). Re-running the same command "
    "resumes: ids already cached are skipped. Failures become rows of the cache's "
    "failures table and never stop the run."
)


def add_arguments(parser) -> None:
    parser.add_argument("manifest", type=Path, help="csv / jsonl / T2VQA-DB info.txt / FETV / LGVQ manifest")
    parser.add_argument(
        "--extractors",
        help="comma-separated registry names, e.g. clip-frames,clip-text,slowfast "
        "(default: every section of --config)",
    )
    parser.add_argument("--cache", type=Path, required=True, help="feature cache file to create or extend (.h5)")
    parser.add_argument(
        "--config", type=Path,
        help="TOML file with one [extractor-name] table of options each, e.g. "
        "[clip-frames] arch = \"ViT-B-16\" / weights = \"ckpt.pt\"",
    )
    parser.add_argument("--format", dest="manifest_format", default="auto",
                        help="manifest format (default: auto from the file)")
    parser.add_argument("--labels", metavar="COL[=NAME],...",
                        help="manifest columns to store as labels (MOS), optionally renamed: "
                        "Overall=mos,tq (default: the format's own, e.g. mos and mos_<name>)")
    cluster = add_cluster_arguments(parser)
    cluster.add_argument("--decode-threads", type=int, default=None,
                         help="FFmpeg decoder threads per video (default: --torch-threads on CPU "
                         "workers, FFmpeg's one per core with --gpus; 0 = FFmpeg's default)")
    cluster.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                         help=f"videos per task and per shard file (default {DEFAULT_CHUNK_SIZE})")
    parser.add_argument("--overwrite", action="store_true", help="recompute ids already in the cache")
    parser.add_argument(
        "--random-init", action="store_true",
        help="random backbone weights (tests/benchmarks only; stamped RANDOM-INIT in the cache)",
    )
    parser.add_argument("--weights", help="checkpoint path, when exactly one requested extractor takes weights")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def extractor_spec(names: str | None, config_path: Path | None) -> dict[str, dict]:
    """--extractors + --config -> {name: options}, refusing config sections nobody asked for."""
    config: dict[str, dict] = {}
    if config_path is not None:
        from aigvqa.pipeline.config import TOMLDecodeError, load_toml

        try:
            config = load_toml(config_path)
        except FileNotFoundError:
            raise ExtractError(f"--config {config_path}: no such file") from None
        except TOMLDecodeError as err:
            raise ExtractError(f"--config {config_path} is not valid TOML: {err}") from None
        bad = [k for k, v in config.items() if not isinstance(v, dict)]
        if bad:
            raise ExtractError(
                f"--config {config_path}: top-level key(s) {', '.join(bad)} are not tables; "
                "write options under a [extractor-name] header"
            )
        # weights = "ckpt.pt" in the file means next to the file, wherever the command runs
        for options in config.values():
            if isinstance(options.get("weights"), str):
                options["weights"] = str(Path(config_path).parent / Path(options["weights"]).expanduser())
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        extra = sorted(set(config) - set(wanted))
        if extra:
            raise ExtractError(
                f"--config {config_path} configures {', '.join(extra)}, which --extractors "
                f"does not request; add them to --extractors or remove their tables"
            )
        return {n: dict(config.get(n, {})) for n in wanted}
    if not config:
        raise ExtractError("name the extractors: --extractors clip-frames,clip-text (or give --config)")
    return config


def run(args) -> int:
    from aigvqa.pipeline.extract import extract
    from aigvqa.pipeline.manifest import read_manifest

    spec = extractor_spec(args.extractors, args.config)
    from aigvqa.pipeline.cli.commands.import_features import parse_labels

    labels = parse_labels(args.labels)
    records = read_manifest(args.manifest, fmt=args.manifest_format,
                            label_cols={name: col for col, name in labels.items()} if labels else None)
    report = extract(
        records,
        spec,
        args.cache,
        scheduler=args.scheduler,
        gpus=args.gpus,
        n_workers=args.workers,
        torch_threads=args.torch_threads,
        decode_threads=args.decode_threads,
        chunk_size=args.chunk_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        random_init=args.random_init,
        weights=args.weights,
    )
    print(report.summary())
    if report.failed:
        print(f"{report.failed} video(s) failed; re-running the command retries them", file=sys.stderr)
    return 0
