"""TOML reading shared by the verbs that take a config file (extract, train/evaluate, ablate).

Callers keep their own error messages (they know what the file is for); this module only
hides where the parser comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+, tomli is its backport
    import tomli as tomllib  # type: ignore[no-redef]

TOMLDecodeError = tomllib.TOMLDecodeError


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; raises FileNotFoundError or TOMLDecodeError for the caller to word."""
    with open(path, "rb") as fh:
        return tomllib.load(fh)
