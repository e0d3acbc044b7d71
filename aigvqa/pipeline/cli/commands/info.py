"""`aigvqa info CACHE`: what a feature cache holds (groups, shapes, provenance, failures);
`aigvqa info --verify CACHE`: read every byte and check every checksum."""

from __future__ import annotations

import json
from dataclasses import asdict

from aigvqa.cache import FeatureCache

HELP = "show what a feature cache holds: groups, shapes, weights, labels, failures"
DESCRIPTION = (
    "Print a summary of an aigvqa HDF5 feature cache (or shard): one line per extractor "
    "group (rows, T_max, D, dtype, sequence lengths, weights identity; RANDOM-INIT weights "
    "are flagged), each group's config, the videos and label ranges, and the failures. "
    "With --verify: read every dataset in full and check its checksums and structure; "
    "exit status 1 and a list of the damaged parts when anything is damaged, 0 when the "
    "file is sound (a cache written before checksums existed is reported as unverified)."
)


def add_arguments(parser) -> None:
    parser.add_argument("cache", metavar="CACHE", help="the .h5 cache file (or a shard)")
    parser.add_argument(
        "--json", action="store_true", help="print the summary as JSON (full provenance)"
    )
    parser.add_argument(
        "--failures",
        type=int,
        default=5,
        metavar="N",
        help="how many failures to list (default: 5)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="read the whole file and check every checksum; exit 1 naming what is damaged",
    )


def run(args) -> int:
    cache = FeatureCache(args.cache)
    if args.verify:
        report = cache.verify()
        if args.json:
            print(json.dumps({**asdict(report), "ok": report.ok}, indent=2, default=str))
        else:
            print(report.summary())
        return 0 if report.ok else 1
    if args.json:
        print(json.dumps(cache.describe(max_failures=args.failures), indent=2, default=str))
    else:
        print(cache.summary(max_failures=args.failures))
    return 0
