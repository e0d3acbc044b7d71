"""`aigvqa demo` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "demo: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa demo' is not built yet")
