"""`aigvqa info` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "info: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa info' is not built yet")
