"""`aigvqa train`: fit a head on every labelled video of a cache and save a model bundle."""

from __future__ import annotations

HELP = "fit a head on a feature cache and save it as a model bundle"
DESCRIPTION = """Fit a head (see the list below) on every labelled video of CACHE and write a model
bundle folder (bundle.json + safetensors / skops / LightGBM text files: nothing that runs code
on load) that `aigvqa score` uses on new videos.

example:
  aigvqa train feats.h5 --head svr --features handcrafted --labels mos --out model/"""


def add_head_arguments(parser) -> None:
    """Options shared by train and evaluate: which head, features and labels."""
    parser.add_argument(
        "cache", help="feature cache (HDF5) made by `aigvqa extract` or `import-features`"
    )
    parser.add_argument(
        "--head",
        help="head name: svr, elasticnet, lightgbm, mlp, ugvq, msavqa, ... "
        "(`head = ...` in --config also works)",
    )
    parser.add_argument("--config", help="TOML file of head hyper-parameters (top-level keys)")
    parser.add_argument("--features", help="comma-separated cache groups to use (default: all)")
    parser.add_argument(
        "--labels", help="comma-separated MOS columns to predict (default: all in the cache)"
    )


def add_arguments(parser):
    add_head_arguments(parser)
    parser.add_argument("--out", required=True, help="bundle folder to write, e.g. model/")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar over a deep head's epochs"
    )


def run(args) -> int:
    from aigvqa.pipeline.model.train import train

    path, data = train(
        args.cache,
        args.head,
        args.out,
        config=args.config,
        features=args.features,
        labels=args.labels,
        progress=not args.quiet,
    )
    print(f"trained {args.head or 'head'} on {data.describe()}")
    print(
        f"model bundle: {path}  (use it with `aigvqa score MANIFEST --model {path} --out "
        "scores.csv`)"
    )
    return 0
