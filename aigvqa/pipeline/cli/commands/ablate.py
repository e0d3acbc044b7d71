"""`aigvqa ablate`: a grid of heads x feature subsets x hyper-parameters x seeds on Dask."""

from __future__ import annotations

from aigvqa.pipeline.cli.commands import add_cluster_arguments, cluster_spec

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
    parser.add_argument(
        "--no-batch-trials",
        dest="batch_trials",
        action="store_false",
        help="deep heads: fit each cell's trials one by one instead of together as one "
        "vectorised model (same results up to float rounding)",
    )


def run(args) -> int:
    from aigvqa.pipeline.evaluation.ablate import grid_cluster_spec, load_grid, run_ablation

    grid = load_grid(args.grid)
    # the grid's [cluster] table, with the options given here on top
    base = grid_cluster_spec(grid.cluster, where=f"{grid.source}: [cluster]")
    results = run_ablation(
        grid,
        cluster=cluster_spec(args, base=base),
        progress=not args.no_progress,
        batch_trials=args.batch_trials,
    )
    print(results.summary())
    return 0
