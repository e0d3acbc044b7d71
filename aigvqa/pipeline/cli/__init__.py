"""The ``aigvqa`` command line (``main``; one module per verb in ``commands/``).

``aigvqa.pipeline.cli:main`` is the console script's entry point, so ``main`` is exported
here; ``python -m aigvqa.pipeline.cli`` runs it too (``__main__.py``).
"""

from aigvqa.pipeline.cli.main import VERBS, build_parser, main

__all__ = ["VERBS", "build_parser", "main"]
