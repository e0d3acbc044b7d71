"""The public entry points survive the package layout: the console script's target, `python -m`,
and every lazy top-level name of `aigvqa`."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import aigvqa

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_console_script_target_is_the_cli_main_function():
    target = re.search(r'^aigvqa = "([\w.]+):(\w+)"', PYPROJECT.read_text(), re.M)
    module, attr = target.groups()
    main = getattr(importlib.import_module(module), attr)
    assert callable(main) and main.__module__ == "aigvqa.pipeline.cli.main"


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "aigvqa.pipeline.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == f"aigvqa {aigvqa.__version__}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aigvqa.pipeline.cli",
            "train",
            str(PYPROJECT.parent / "missing.h5"),
            "--head",
            "svr",
            "--out",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "missing.h5" in done.stderr


def test_every_lazy_top_level_name_resolves():
    for name in aigvqa.__all__:
        assert getattr(aigvqa, name) is not None, name
    assert aigvqa.evaluate.__module__ == "aigvqa.pipeline.evaluation.evaluate"
    assert aigvqa.load_training_data.__module__ == "aigvqa.pipeline.training_data"
    assert aigvqa.score.__module__ == "aigvqa.pipeline.model.score"
