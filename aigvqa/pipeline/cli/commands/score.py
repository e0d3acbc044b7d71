"""`aigvqa score`: predict quality scores with a model bundle, for the videos of a manifest
or for bare video files and folders."""

from __future__ import annotations

import csv
import sys

from aigvqa.pipeline.cli.commands import add_cluster_arguments, cluster_spec

HELP = "score videos (a manifest, video files or folders) with a trained model bundle (resumable)"
DESCRIPTION = """Extract whatever features the model needs (with the extractor configs recorded in
the bundle, or from --cache when it holds them for the same files), predict, and write one row
per video: video_id, path, status (ok / failed), one column per predicted label, error.

INPUT is one manifest (.csv / .tsv / .jsonl / .json / T2VQA-DB info.txt), or video files and
folders of videos (ids are the file names without suffix; --prompt gives their prompt).
With --out the rows are appended to that file and a re-run skips videos already in it;
its suffix picks the format: .csv, .jsonl (one JSON object per line) or .parquet (needs
pyarrow; the rows wait in OUT.partial.jsonl until the run ends, then the Parquet file is
written in one go, so an interrupted run resumes from the journal). Without --out the rows
are printed as CSV on stdout (the summary goes to stderr).

A bad video never stops the run: it becomes a failed row with its reason.
Exit status: 0 every video scored; 1 some video has a failed row in the output (this run's,
or an earlier run's that --retry-failed would retry); 2 nothing was scored because of an
error (a damaged bundle, a cache of other features, another run writing --out, bad usage).

examples:
  aigvqa score new_videos.csv --model model/ --out scores.csv
  aigvqa score new_videos.csv --model model/ --out scores.parquet
  aigvqa score clip.mp4 --model model/
  aigvqa score generated/ --model model/ --prompt "a corgi surfing a wave" --out scores.csv"""


def add_arguments(parser):
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="a manifest, or video files / folders of videos"
    )
    parser.add_argument(
        "--model", required=True, help="model bundle folder written by `aigvqa train`"
    )
    parser.add_argument(
        "--out",
        help="output file: .csv, .jsonl or .parquet (resumable; existing rows are kept). "
        "Default: print the rows as CSV",
    )
    parser.add_argument("--prompt", help="the prompt of the videos given as files or folders")
    parser.add_argument(
        "--encoding",
        default="utf-8",
        help="the manifest's text encoding (default utf-8; e.g. latin-1, cp1252)",
    )
    parser.add_argument("--cache", help="feature cache that may already hold the model's features")
    parser.add_argument(
        "--work-cache", help="where extracted features go (default: OUT.features.h5)"
    )
    parser.add_argument(
        "--weights",
        help="checkpoint of the model's extractor, when features must be extracted "
        "and it is not found under $AIGVQA_WEIGHTS (its sha256 must be the one the model recorded)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="videos per extract+predict batch (default 256)"
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="rescore videos whose row says failed"
    )
    add_cluster_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _source(args, bundle):
    """The records to score: the manifest's, or those of the video files and folders."""
    from aigvqa.pipeline.model.score import ScoreError, check_prompts, is_manifest, video_records

    manifests = [i for i in args.inputs if is_manifest(i)]
    if manifests and len(args.inputs) > 1:
        raise ScoreError(
            f"give one manifest, or video files and folders, not both ({', '.join(args.inputs)})"
        )
    if manifests:
        if args.prompt is not None:
            raise ScoreError(
                "--prompt is for video files and folders; a manifest gives each video's prompt"
            )
        return manifests[0]
    records = video_records(args.inputs, args.prompt)
    check_prompts(bundle, records, '--prompt "the text"')
    return records


def run(args) -> int:
    from aigvqa.pipeline.model.bundle import load_bundle
    from aigvqa.pipeline.model.score import output_columns, score_to_rows

    bundle = load_bundle(args.model)
    report, rows = score_to_rows(
        _source(args, bundle),
        bundle,
        out=args.out,
        cache=args.cache,
        work_cache=args.work_cache,
        batch_size=args.batch_size,
        retry_failed=args.retry_failed,
        weights=args.weights,
        encoding=args.encoding,
        cluster=cluster_spec(args),
        progress=not args.no_progress,
    )
    if args.out is None:
        writer = csv.DictWriter(
            sys.stdout, fieldnames=output_columns(bundle.label_names), lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
        print(report.summary(), file=sys.stderr)
    else:
        print(report.summary())
    if report.any_failed:
        print(
            f"{report.failed + report.failed_before} video(s) failed; `--retry-failed` tries them "
            "again",
            file=sys.stderr,
        )
        return 1
    return 0
