"""``aigvqa`` command line: a thin layer over the Python API.

Each verb lives in ``aigvqa/pipeline/cli/commands/<verb>.py`` and defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; adding a verb is adding a file and
listing it in ``VERBS``. Errors the user can fix (``AigvqaError``) print one clear
message and exit 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from aigvqa import __version__
from aigvqa.errors import AigvqaError, interface

VERBS = [
    "extract",
    "info",
    "dump",
    "import-features",
    "train",
    "evaluate",
    "ablate",
    "score",
    "report",
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
        p = sub.add_parser(
            verb,
            help=mod.HELP,
            description=getattr(mod, "DESCRIPTION", mod.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # keep the examples' lines
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _close_progress_bars() -> None:
    """Close the progress bars still open, so that an error printed next starts on its own
    line instead of after a bar's last state."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        # messages name the flags (--weights PATH), not the Python keywords (weights=<path>)
        with interface("cli"):
            try:
                return int(args._run(args) or 0)
            except AigvqaError as err:
                _close_progress_bars()
                print(f"aigvqa {args.verb}: error: {err}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                _close_progress_bars()
                print(
                    f"aigvqa {args.verb}: interrupted; finished work is kept, re-run to resume",
                    file=sys.stderr,
                )
                return 130
    except BrokenPipeError:
        # The reader of our stdout stopped reading (`aigvqa info feats.h5 | head`): its
        # choice, not a failure. Point stdout at /dev/null so that the interpreter's final
        # flush does not raise (and print) the same error again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


if __name__ == "__main__":
    sys.exit(main())
