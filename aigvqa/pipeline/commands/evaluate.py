"""`aigvqa evaluate` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "evaluate: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa evaluate' is not built yet")
