"""`aigvqa extract` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "extract: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa extract' is not built yet")
