"""`aigvqa score`: predict quality scores for the videos of a manifest with a model bundle."""

from __future__ import annotations

import sys

from aigvqa.pipeline.cli.commands import add_cluster_arguments

HELP = "score the videos of a manifest with a trained model bundle (resumable)"
DESCRIPTION = """Extract whatever features the model needs (with the extractor configs recorded in
the bundle, or from --cache when it holds them), predict, and append one row per video to the
output CSV: video_id, path, status (ok / failed), one column per predicted label, error.
Re-running the command skips videos already in the CSV.

example:
  aigvqa score new_videos.csv --model model/ --out scores.csv"""


def add_arguments(parser):
    parser.add_argument("manifest", help="csv / jsonl / T2VQA-DB info.txt / FETV / LGVQ manifest of the videos")
    parser.add_argument("--model", required=True, help="model bundle folder written by `aigvqa train`")
    parser.add_argument("--out", required=True, help="output CSV (appended to; existing rows are kept)")
    parser.add_argument("--cache", help="feature cache that may already hold the model's features")
    parser.add_argument("--work-cache", help="where extracted features go (default: OUT.features.h5)")
    parser.add_argument("--batch-size", type=int, default=256, help="videos per extract+predict batch (default 256)")
    parser.add_argument("--retry-failed", action="store_true", help="rescore videos whose row says failed")
    add_cluster_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from aigvqa.pipeline.model.score import score

    report = score(
        args.manifest, args.model, args.out, cache=args.cache, work_cache=args.work_cache,
        batch_size=args.batch_size, retry_failed=args.retry_failed,
        scheduler=args.scheduler, gpus=args.gpus, n_workers=args.workers, torch_threads=args.torch_threads,
        progress=not args.no_progress,
    )
    print(report.summary())
    if report.failed:
        print(f"{report.failed} video(s) failed; `--retry-failed` tries them again", file=sys.stderr)
    return 0
