"""``aigvqa`` command line: a thin layer over the Python API.

Each verb lives in ``aigvqa/pipeline/cli/commands/<verb>.py`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; adding a verb is adding a file and
listing it in ``VERBS``. Errors the user can fix (``AigvqaError``) print one clear
message and exit 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aigvqa import __version__
from aigvqa.errors import AigvqaError

VERBS = [
    "extract",
    "info",
    "dump",
    "import-features",
    "train",
    "evaluate",
    "ablate",
    "score",
    "demo",
]


def _module(verb: str):
    return importlib.import_module(f"aigvqa.pipeline.cli.commands.{verb.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aigvqa",
        description="Offline quality assessment of AI-generated videos: "
        "stage one caches backbone features, stage two fits and evaluates heads.",
    )
    parser.add_argument("--version", action="version", version=f"aigvqa {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        mod = _module(verb)
        p = sub.add_parser(verb, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # keep the examples' lines
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except AigvqaError as err:
        print(f"aigvqa {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"aigvqa {args.verb}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
