"""Atomic files and the writers' lock: how a cache or shard reaches its final name.

HDF5 files are not crash-safe when modified in place, so the writers never modify a
finished file: they write ``.<name>.<pid>-<rand>.partial`` beside the target (``_temp_path``),
fsync it and ``os.replace`` it onto the final name (``publish``). A stale ``.partial``
left by a killed writer is found by ``_stale_temps`` and deleted by the next merge.

Concurrency. Merges into one cache are serialised by an advisory ``flock`` on
``<cache>.lock`` (``_writer_lock``; released by the OS if the process dies; the empty
lock file stays). Readers take no lock and are never blocked: the file they opened
stays valid after a rename.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from aigvqa.errors import CacheError


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _stale_temps(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.*.partial"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows has no directory fds."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make the finished ``tmp`` durable and rename it onto ``final`` (atomic), then make the
    rename durable: readers and crashes see the old file or the new one, never half of one."""
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def _writer_lock(cache_path: Path, timeout: float):
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one merging process per cache is the caller's duty
        yield
        return
    lock_path = cache_path.with_name(cache_path.name + ".lock")
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheError(
                        f"another process has been merging into {cache_path} for over "
                        f"{timeout:.0f} s (lock {lock_path}); wait for it to finish or write to "
                        "another cache file"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
