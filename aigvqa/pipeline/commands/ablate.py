"""`aigvqa ablate` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "ablate: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa ablate' is not built yet")
