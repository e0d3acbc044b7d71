"""`aigvqa evaluate`: a head under the field's protocols, median and std over trials."""

from __future__ import annotations

from aigvqa.pipeline.cli.commands.train import add_head_arguments

HELP = "evaluate a head on a cache: repeated splits, per-dimension median/std tables"
DESCRIPTION = """Fit and test fresh copies of a head on repeated splits of CACHE and print, per MOS
dimension, the median and std over trials of SRCC, KRCC, PLCC (raw / logistic / poly3), RMSE,
the NTIRE score and the model-level (per generator) correlation.

splits: random-8:2 and random-7:1:2 (repeated, seeded), prompt-disjoint (no test prompt in
training), leave-one-generator-out (one fold per generator), videval (VIDEVAL's 100 splits);
--test-cache trains on all of CACHE and tests on all of another cache (cross-dataset).

example:
  aigvqa evaluate feats.h5 --head svr --split prompt-disjoint --trials 10 --out results.csv"""


def add_arguments(parser):
    add_head_arguments(parser)
    parser.add_argument("--split", default="random-8:2",
                        help="prompt-disjoint | random-8:2 | random-7:1:2 | leave-one-generator-out | "
                        "videval (default: random-8:2)")
    parser.add_argument("--trials", type=int, default=10, help="number of random splits (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="trials run in parallel processes (default 1)")
    parser.add_argument("--test-cache", help="cross-dataset: train on all of CACHE, test on this cache")
    parser.add_argument("--out", help="write the summary rows (one per dimension) to this CSV")
    parser.add_argument("--per-trial", action="store_true", help="--out gets one row per trial and dimension")
    parser.add_argument("--plots", help="folder for PNG plots (predicted-vs-MOS scatter, SRCC/PLCC bars)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from aigvqa.pipeline.evaluation.evaluate import evaluate_cache

    result = evaluate_cache(
        args.cache, args.head, config=args.config, features=args.features, labels=args.labels,
        split=args.split, trials=args.trials, seed=args.seed, n_jobs=args.jobs, test_cache=args.test_cache,
        progress=not args.quiet,
    )
    print(result.table())
    if args.out:
        result.to_csv(args.out, per_trial=args.per_trial)
        print(f"\nwrote {args.out}")
    if args.plots:
        from aigvqa.pipeline.evaluation.report import evaluation_plots

        for path in evaluation_plots([result], args.plots):
            print(f"wrote {path}")
    return 0
