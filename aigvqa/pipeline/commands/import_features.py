"""`aigvqa import-features` (placeholder until its issue lands)."""

from aigvqa.errors import AigvqaError

HELP = "import-features: not built yet"


def add_arguments(parser):
    pass


def run(args):
    raise AigvqaError("'aigvqa import-features' is not built yet")
