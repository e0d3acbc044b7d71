"""`aigvqa ablate`: a grid of heads x feature subsets x hyper-parameters x seeds on Dask."""

from __future__ import annotations

from aigvqa.pipeline.cli.commands import add_cluster_arguments

HELP = "run an ablation grid (heads x features x hyper-parameters x seeds) on Dask, resumable"
DESCRIPTION = """Evaluate every cell of the grid in GRID.toml (see examples/ablate-demo.toml for the
format) in parallel on Dask and write OUT/results.csv, OUT/results.md and PNG plots (SRCC/PLCC
bars with std error bars per cell, predicted-vs-MOS scatter of the best cell). Finished cells
are stored in OUT/cells/ and not recomputed: re-running resumes, and growing the grid only runs
the new cells.

example:
  aigvqa demo && aigvqa ablate examples/ablate-demo.toml"""


def add_arguments(parser):
    parser.add_argument("grid", help="grid TOML file")
    add_cluster_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from aigvqa.pipeline.evaluation.ablate import load_grid, run_ablation

    grid = load_grid(args.grid)
    overrides = {"workers": args.workers, "scheduler": args.scheduler, "gpus": args.gpus or None}
    if args.torch_threads != 1:
        overrides["torch_threads"] = args.torch_threads
    results = run_ablation(grid, cluster={k: v for k, v in overrides.items() if v is not None},
                           progress=not args.no_progress)
    print(results.summary())
    return 0
