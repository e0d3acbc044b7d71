"""`aigvqa score` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "score: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa score' is not built yet")
