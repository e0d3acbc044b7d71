"""`aigvqa evaluate`: a head under the field's protocols, median and std over trials."""

from __future__ import annotations

from pathlib import Path

from aigvqa.pipeline.cli.commands.train import add_head_arguments

HELP = "evaluate a head on a cache: repeated splits, per-dimension median/std tables"
DESCRIPTION = """Fit and test fresh copies of a head on repeated splits of CACHE and print, per MOS
dimension, the median and std over trials of SRCC, KRCC, PLCC (raw / logistic / poly3), RMSE,
the NTIRE score and the model-level (per generator) correlation.

splits: random-8:2 and random-7:1:2 (repeated, seeded), prompt-disjoint (no test prompt in
training), leave-one-generator-out (one fold per generator), videval (VIDEVAL's 100 splits);
--test-cache trains on all of CACHE and tests on all of another cache (cross-dataset).

protocols (--protocol NAME: one name for a published protocol's splits, trial count, row
order and hyper-parameter selection; --split, --trials and --config still win):
  videval  VIDEVAL's 100 80/20 splits over the metadata file's row order (the order
           import-features recorded, or --order-from); head svr with MinMax by default;
           every classical head searches its standard grid on an inner 80/20 split and keeps
           the candidate with the lowest RMSE after the 4-parameter logistic fit
Without a protocol a classical head searches only if its config sets `search`, and ranks
candidates by the RMSE of its raw predictions (search_scoring = "rmse").

examples:
  aigvqa evaluate feats.h5 --head svr --split prompt-disjoint --trials 10 --out results.csv
  aigvqa evaluate konvid.h5 --protocol videval --features videval --labels mos --jobs 2
  aigvqa evaluate konvid.h5 --protocol videval --config examples/videval-stack.toml --jobs 2"""


def trials_csv_path(out: str) -> Path:
    """results.csv -> results.trials.csv (the per-trial rows beside the summary)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.trials{out.suffix or '.csv'}")


def add_arguments(parser):
    add_head_arguments(parser)
    parser.add_argument(
        "--protocol",
        choices=("videval",),
        help="a published protocol under one name (see above): its splits, trials, row order "
        "and hyper-parameter selection",
    )
    parser.add_argument(
        "--split",
        default=None,
        help="prompt-disjoint | random-8:2 | random-7:1:2 | leave-one-generator-out | "
        "videval (default: the protocol's, else random-8:2)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="number of random splits (default: the protocol's, else 10)",
    )
    parser.add_argument(
        "--order-from",
        metavar="CSV",
        help="put the rows in this CSV's row order before splitting (e.g. VIDEVAL's metadata "
        "file); default under videval splits: the order import-features recorded",
    )
    parser.add_argument(
        "--order-column",
        metavar="COL",
        help="id column of --order-from (default: the column that lists every video)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="trials run in parallel processes (default 1)"
    )
    parser.add_argument(
        "--test-cache", help="cross-dataset: train on all of CACHE, test on this cache"
    )
    parser.add_argument("--out", help="write the summary rows (one per dimension) to this CSV")
    parser.add_argument(
        "--per-trial",
        action="store_true",
        help="also show one row per trial (metrics, chosen hyper-parameters, a stack's meta "
        "weights); with --out they go to OUT's name + .trials.csv beside the summary",
    )
    parser.add_argument(
        "--plots", help="folder for PNG plots (predicted-vs-MOS scatter, SRCC/PLCC bars)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--no-batch-trials",
        dest="batch_trials",
        action="store_false",
        help="deep heads: fit the trials one by one instead of together as one vectorised "
        "model (same results up to float rounding; together is faster)",
    )


def run(args) -> int:
    from aigvqa.pipeline.evaluation.evaluate import evaluate_cache

    result = evaluate_cache(
        args.cache,
        args.head,
        config=args.config,
        features=args.features,
        labels=args.labels,
        split=args.split,
        trials=args.trials,
        seed=args.seed,
        n_jobs=args.jobs,
        test_cache=args.test_cache,
        progress=not args.quiet,
        protocol=args.protocol,
        order_from=args.order_from,
        order_column=args.order_column,
        batch_trials=args.batch_trials,
    )
    print(result.table())
    if args.per_trial and not args.out:
        print("\n" + result.trial_table())
    if args.out:
        result.to_csv(args.out)
        print(f"\nwrote {args.out}")
        if args.per_trial:
            trials_path = trials_csv_path(args.out)
            result.to_csv(trials_path, per_trial=True)
            print(f"wrote {trials_path}")
    if args.plots:
        from aigvqa.pipeline.evaluation.report import evaluation_plots

        for path in evaluation_plots([result], args.plots):
            print(f"wrote {path}")
    return 0
