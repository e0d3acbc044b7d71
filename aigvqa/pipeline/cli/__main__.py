"""``python -m aigvqa.pipeline.cli ...``: the ``aigvqa`` command without the console script."""

import sys

from aigvqa.pipeline.cli import main

sys.exit(main())
