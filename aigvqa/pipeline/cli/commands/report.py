"""`aigvqa report`: one self-contained HTML page of a scored dataset (look, don't read)."""

from __future__ import annotations

HELP = "write one self-contained HTML page: scores vs MOS, and the lowest / highest videos"
DESCRIPTION = """Read a score CSV written by `aigvqa score` and / or the feature cache of its
videos (which gives prompts, generators and MOS; the kind of each file is read from the file),
and write one HTML page that opens from disk with no server: the agreement of the scores
with MOS (table and scatter, where the cache has MOS), and a gallery of the N lowest and N
highest scored videos, each with a strip of frames, its prompt, generator and score.
A cache alone ranks the gallery by MOS; a score CSV alone has no table or scatter (no MOS).
Missing or undecodable video files get a placeholder that says why.

examples:
  aigvqa report scores.csv features.h5 --out report.html
  aigvqa report scores.csv --n 4 --label alignment
  aigvqa report features.h5 --out dataset.html"""


def add_arguments(parser):
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a score CSV (aigvqa score --out) and / or a feature cache (.h5), in any order",
    )
    parser.add_argument(
        "--out", default="report.html", help="the HTML file to write (default: report.html)"
    )
    parser.add_argument(
        "--n", type=int, default=8, help="videos in each half of the gallery (default 8)"
    )
    parser.add_argument(
        "--label",
        help="the dimension to rank and plot (default: overall, mos, or the first scored one)",
    )
    parser.add_argument("--title", help="the page's title")
    parser.add_argument(
        "--frames", type=int, default=6, help="frames per thumbnail strip (default 6)"
    )
    parser.add_argument(
        "--thumb-height", type=int, default=96, help="thumbnail height in pixels (default 96)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from aigvqa.pipeline.html_report import write_report

    result = write_report(
        args.inputs,
        args.out,
        n=args.n,
        label=args.label,
        title=args.title,
        frames=args.frames,
        thumb_height=args.thumb_height,
        progress=not args.no_progress,
    )
    print(result.summary())
    return 0
