"""Errors a user can act on. The CLI prints their message (no traceback) and exits 2.

Messages name the file involved and say how to fix the problem, in the words of the
interface in use: they are written in the Python API's (``weights=<path>``), and the CLI
runs its verbs inside ``interface("cli")``, where the same message names the flags a CLI
user types (``--weights PATH``). A message is put into words when it is shown
(``str(err)``), not when it is raised, so an error raised on a Dask worker, or quoted in
another error's text on the client, still reads right.
"""

from __future__ import annotations

import contextlib
import contextvars

_INTERFACE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "aigvqa_interface", default="python"
)

CLI_WORDS: dict[str, str] = {
    "weights=<path>": "--weights PATH",
    "random_init=True": "--random-init",
    "features={role: name}": (
        'a [features] table in the --config TOML (role = "cache group", as in examples/ugvq.toml)'
    ),
    "label_cols=...": "--labels COL[=NAME]",
    'config="examples/videval-stack.toml"': "--config examples/videval-stack.toml",
    "encoding='latin-1'": "--encoding latin-1",  # extract and score both take it
}
"""Python-API phrase -> the CLI's, for the phrases user-facing messages use."""


@contextlib.contextmanager
def interface(name: str):
    """Speak in the words of ``name`` ("python" or "cli") inside the block."""
    if name not in ("python", "cli"):
        raise ValueError(f"interface must be 'python' or 'cli', got {name!r}")
    token = _INTERFACE.set(name)
    try:
        yield
    finally:
        _INTERFACE.reset(token)


def in_words(text: str) -> str:
    """``text`` (written in the Python API's words) in the words of the interface in use."""
    if _INTERFACE.get() == "cli":
        for python, cli in CLI_WORDS.items():
            text = text.replace(python, cli)
    return text


class AigvqaError(Exception):
    """Base class of user-facing errors."""

    def __str__(self) -> str:
        return in_words(super().__str__())


class ManifestError(AigvqaError, ValueError):
    """A manifest has bad rows; the message lists every one with its line number."""


class DecodeError(AigvqaError, RuntimeError):
    """A video file cannot be opened or decoded."""


class WeightsNotFoundError(AigvqaError, FileNotFoundError):
    """No checkpoint was found; the message names every place searched."""


class CheckpointMismatchError(AigvqaError, RuntimeError):
    """A checkpoint's keys or shapes do not match the architecture."""


class ProvenanceMismatchError(AigvqaError, ValueError):
    """Features made under a different config or weights would be mixed in one cache group."""


class CacheError(AigvqaError, OSError):
    """A cache file is missing, unreadable or lacks a requested group or id."""


class HeadParameterError(AigvqaError, ValueError):
    """A head hyper-parameter (e.g. from a head config file) is invalid; the message names the
    head, the parameter, the bad value and what is allowed (``aigvqa.heads.params``)."""


class TargetValueError(AigvqaError, ValueError):
    """Targets (MOS) hold NaN or infinite values, or values too large to standardise."""
