"""Errors a user can act on. The CLI prints their message (no traceback) and exits 2.

Messages name the file involved and say how to fix the problem.
"""


class AigvqaError(Exception):
    """Base class of user-facing errors."""


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
