"""`aigvqa dump` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "dump: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa dump' is not built yet")
