"""How a video's problems become failure rows: error text, truncated files.

A decoder thread or process reports a ``TruncatedVideoWarning`` when a file ends before
the frames its header promised; a video decoding fewer than ``MIN_DECODED_FRACTION`` of
them fails as a whole (extractor ``*``), one a few frames short keeps its features.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from aigvqa.cache.schema import ALL_EXTRACTORS

__all__ = [
    "ALL_EXTRACTORS",
    "MIN_DECODED_FRACTION",
    "error_text",
    "truncation",
    "truncation_warnings",
]

MIN_DECODED_FRACTION = 0.9
"""A video that decodes fewer than this share of the frames its header promises is a
failure (a truncated download: the decoder would pad the missing part with copies of the
last frame, features of a frozen video that is not there). A few frames short (rounded
metadata, a damaged tail) keeps its features; the decoder's warning stays in the log."""


def error_text(err: BaseException) -> str:
    """A failure row's error: ``Type: message`` (an error a decode process reported keeps
    the type it had there)."""
    return getattr(err, "row_text", None) or f"{type(err).__name__}: {err}"


def truncation(caught, num_frames: int) -> str | None:
    """A failure message when the decoder reported a file much shorter than promised."""
    for warning in caught:
        decoded = warning.decoded
        expected = max(num_frames, warning.expected)
        if decoded < MIN_DECODED_FRACTION * expected:
            return (
                f"only {decoded} of {expected} frames decode (the file is truncated); "
                "re-download or re-export it"
            )
    return None


# -- truncation warnings, per thread ----------------------------------------------------
# warnings.catch_warnings swaps process-global state and is unsafe with several threads
# decoding, so a process installs one hook that hands TruncatedVideoWarning to the thread
# that raised it (the decoder thread; it still shows every warning in the worker's log).
_COLLECTING = threading.local()
_HOOK_LOCK = threading.Lock()


def _install_truncation_hook() -> None:
    # Checked on every use, not once per process: code that saves and restores the warnings
    # state (warnings.catch_warnings in a notebook, pytest around each test) drops the hook.
    with _HOOK_LOCK:
        if getattr(warnings.showwarning, "aigvqa_truncation_hook", False):
            return
        from aigvqa.extractors.decode import TruncatedVideoWarning

        # "always": the default filter shows a warning once per code location, so the
        # second truncated video of a process would go unnoticed.
        warnings.filterwarnings("always", category=TruncatedVideoWarning)
        shown = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            bucket = getattr(_COLLECTING, "bucket", None)
            if bucket is not None and issubclass(category, TruncatedVideoWarning):
                bucket.append(message)
            shown(message, category, filename, lineno, file, line)

        showwarning.aigvqa_truncation_hook = True
        warnings.showwarning = showwarning


@contextlib.contextmanager
def truncation_warnings():
    """Collect the TruncatedVideoWarnings this thread raises inside the block."""
    _install_truncation_hook()
    outer = getattr(_COLLECTING, "bucket", None)  # a decoding generator suspended around us
    _COLLECTING.bucket = bucket = []
    try:
        yield bucket
    finally:
        _COLLECTING.bucket = outer
