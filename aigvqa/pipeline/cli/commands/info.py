"""`aigvqa info CACHE`: what a feature cache holds (groups, shapes, provenance, failures)."""

from __future__ import annotations

import json

from aigvqa.cache import FeatureCache

HELP = "show what a feature cache holds: groups, shapes, weights, labels, failures"
DESCRIPTION = (
    "Print a summary of an aigvqa HDF5 feature cache (or shard): one line per extractor "
    "group (rows, T_max, D, dtype, sequence lengths, weights identity; RANDOM-INIT weights "
    "are flagged), each group's config, the videos and label ranges, and the failures."
)


def add_arguments(parser) -> None:
    parser.add_argument("cache", metavar="CACHE", help="the .h5 cache file (or a shard)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (full provenance)")
    parser.add_argument("--failures", type=int, default=5, metavar="N",
                        help="how many failures to list (default: 5)")


def run(args) -> int:
    cache = FeatureCache(args.cache)
    if args.json:
        print(json.dumps(cache.describe(max_failures=args.failures), indent=2, default=str))
    else:
        print(cache.summary(max_failures=args.failures))
    return 0
