"""`aigvqa train` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "train: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa train' is not built yet")
