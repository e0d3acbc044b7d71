"""Configuration files: every TOML file the API takes is read here (one parser, one place).

The API functions take the TOML path themselves (``train(..., config=)``,
``evaluate_cache(..., config=)``, ``run_ablation(path)``, and stage one through
``load_extractor_config``); CLI verbs only pass the path on.

A head config (``aigvqa train/evaluate --config head.toml``): top-level keys are passed to
the head's constructor; an optional ``head = "svr"`` names the head::

    head = "svr"
    C = 8.0
    pooling = ["mean", "std"]
    search = { gamma = [0.01, 0.1, 1.0] }

An extractor config (``aigvqa extract --config extractors.toml``): one table of options per
extractor; a relative ``weights`` path is relative to the TOML file, wherever the command runs::

    [clip-frames]
    arch = "ViT-B-16"
    weights = "ckpt.pt"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aigvqa.errors import AigvqaError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+, tomli is its backport
    import tomli as tomllib  # type: ignore[no-redef]

TOMLDecodeError = tomllib.TOMLDecodeError


class ConfigError(AigvqaError, ValueError):
    """A configuration file is missing, not valid TOML, or shaped wrongly; the message names it."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; raises FileNotFoundError or TOMLDecodeError for the caller to word."""
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse ``path``; a missing file or bad syntax is a ConfigError naming ``what`` it is for."""
    try:
        return load_toml(path)
    except FileNotFoundError as err:
        raise ConfigError(f"{what} {path} does not exist") from err
    except TOMLDecodeError as err:
        raise ConfigError(f"{what} {path} is not valid TOML ({err})") from err


def load_head_config(path: str | Path | None) -> tuple[str | None, dict[str, Any]]:
    """(head name or None, constructor parameters) from a head TOML file (module docstring)."""
    if path is None:
        return None, {}
    path = Path(path)
    params = read_toml(path, "head config")
    name = params.pop("head", None)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path}: `head` must be a head name string, got {name!r}")
    return name, params


def load_extractor_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """{extractor name: options} from an extractor TOML file (module docstring).

    A relative ``weights = "ckpt.pt"`` means next to the file: it comes back as a path joined
    to the file's folder (``~`` expanded), so the config works from any working directory.
    """
    path = Path(path)
    config = read_toml(path, "extractor config")
    bad = [k for k, v in config.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(
            f"extractor config {path}: top-level key(s) {', '.join(bad)} are not tables; "
            "write options under a [extractor-name] header"
        )
    for options in config.values():
        if isinstance(options.get("weights"), str):
            options["weights"] = str(path.parent / Path(options["weights"]).expanduser())
    return config
