"""One stage-one run per cache at a time: ``<cache>.run.lock``.

A run owns more than the cache file: its landed shards wait in ``<cache>.shards/`` until
it merges them, and at start a run merges (and deletes) every shard it finds there as
the leftovers of a killed run. Two live runs on one cache therefore took each other's
shards: the second merged and removed the first one's, which then aborted on a shard
that no longer existed (and removed the folder the other was writing into). Merges alone
are serialised by ``<cache>.lock`` (``cache.store``); the run lock covers the whole run,
so a second run waits, says for whom, and then finds the first one's work cached.

The lock is an advisory ``flock`` (released by the OS when the holder dies, so a killed
run never leaves a stale lock); the holder writes its pid, host and start time into the
file for the message of whoever waits. flock works across hosts on NFS (Linux maps it to
NFS byte-range locks); on Windows there is no flock and runs are not serialised.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_SECONDS = 0.2


def run_lock_path(cache: str | os.PathLike) -> Path:
    cache = Path(cache)
    return cache.with_name(cache.name + ".run.lock")


def _holder(fd: int) -> str:
    text = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
    return text or "another process (it has not said which yet)"


@contextlib.contextmanager
def run_lock(cache: str | os.PathLike, echo: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the run lock of ``cache`` for the ``with`` block, waiting as long as another run
    holds it (``echo`` gets one line saying who holds it, once; default: stderr)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield run_lock_path(cache)
        return
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    path = run_lock_path(cache)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    echo(
                        f"another extract run ({_holder(fd)}) is writing {cache}; waiting for "
                        f"it to finish (lock {path}; Ctrl-C stops waiting)"
                    )
                    said = True
                time.sleep(POLL_SECONDS)
        if said:
            echo(f"the other run on {cache} finished; going on")
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
