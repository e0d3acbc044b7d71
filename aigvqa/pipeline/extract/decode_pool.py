"""Decode processes beside a model worker, handing view items over in shared memory.

Why processes, and why not ``multiprocessing``: decoding and view building are CPU work
that a model worker's one task thread cannot overlap with its forward passes beyond one
decoder thread (the GIL, and one core). Dask worker processes are daemonic, and a
daemonic process may not start ``multiprocessing`` children (nor a
``ProcessPoolExecutor``), so each decode process is a plain ``subprocess`` running
``decode_process``, with inherited pipes for small messages and a shared-memory ring per
process (``os.memfd_create``; an unlinked temporary file elsewhere) for the items. Items
never pass through Dask, pickles of Dask messages or TCP; they are copied once out of the
ring into the batch that needs them.

A ``DecodePool`` lives as long as its model worker process (``checkout`` keeps idle
pools per setting). For a chunk, ``PoolSource`` hands each process two videos at a time
(the one it decodes and the next, so it never waits for the model worker to look) and
delivers their events in record order (so batches, hence features, do not
depend on the number of processes); later videos wait in their process's ring, which
bounds what is decoded ahead in bytes (``decode_ahead_bytes`` over all processes).

Faults end as rows, never as hangs:

- a decode process that dies (segfault, OOM kill) is replaced; its video is decoded again
  once by a fresh process, and fails (extractor ``*``) if that one dies too;
- a decode process that sends nothing for ``decode_timeout`` seconds while it is not
  waiting for room is killed and replaced; its video fails (a video that hangs FFmpeg
  would hang any retry too);
- the processes end with their model worker: they exit when their control pipe closes.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import mmap
import os
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from aigvqa.errors import DecodeError
from aigvqa.pipeline.extract.decode_process import frame, read_message
from aigvqa.pipeline.extract.options import DecodeSettings
from aigvqa.pipeline.extract.sources import TERMINAL

MIN_RING_BYTES = 1 << 20
"""A ring holds at least this much (an item larger than its ring goes through the pipe,
alone in flight)."""

STARTUP_SECONDS = 120.0
"""Added to the timeout of a process that has not said "ready" yet (Python and the decoding
stack take a few seconds to import on a loaded machine; that is not the video's fault)."""

SEND_SECONDS = 30.0
"""A process that has not read its control pipe for this long (the pipe stays full) is
taken for hung: killed, its video fails like a stalled one. Writes never block the
model worker longer than that."""

JOBS_AHEAD = 2
"""Videos sent to a process at once: the one it decodes and the next, so it goes on while
the model worker is busy with forward passes (it learns of the next video at once)."""

POLL_SECONDS = 0.25
"""How often the pool looks for stalled processes while it waits for events."""


class DecodeProcessError(DecodeError):
    """A video killed or hung its decode process (a failure row for the whole video)."""


class RemoteDecodeError(RuntimeError):
    """An exception a decode process raised, by its original type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.row_text = f"{type_name}: {message}"


_job_ids = itertools.count(1)


def _ring_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("aigvqa-decode-ring")
    else:  # pragma: no cover - not Linux: an unlinked file in the temporary folder
        fd, path = tempfile.mkstemp(prefix="aigvqa-decode-ring-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


class _Process:
    """One decode process: its pipes, its ring, and what the pool knows of its state."""

    def __init__(self, slot: int, ring_size: int, events: queue.Queue) -> None:
        self.slot, self.size = slot, ring_size
        control_r, self.control_w = os.pipe()
        events_r, events_w = os.pipe()
        ring_fd = _ring_fd(ring_size)
        env = dict(os.environ)
        # the child imports aigvqa as this process did (a worker may run from another folder)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aigvqa.pipeline.extract.decode_process",
                    str(control_r),
                    str(events_w),
                    str(ring_fd),
                    str(ring_size),
                ],
                pass_fds=(control_r, events_w, ring_fd),
                stdin=subprocess.DEVNULL,
                env=env,
            )
            self.ring = mmap.mmap(ring_fd, ring_size)
        finally:
            for fd in (control_r, events_w, ring_fd):
                os.close(fd)
        os.set_blocking(self.control_w, False)
        self.jobs: deque[int] = deque()  # jobs sent, oldest (the one it decodes) first
        self.last_seen = time.monotonic()  # its last message (set by the reader thread)
        self.waiting = False  # blocked for ring space since its last message
        self.ready = False  # it has started (imports done)
        self.kill_reason: str | None = None
        self.released = 0
        self._freed: dict[int, int] = {}  # begin -> end of spans consumed out of order
        self._lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read, args=(events_r, events), name=f"aigvqa-decode-{slot}", daemon=True
        )
        self._reader.start()

    def _read(self, fd: int, events: queue.Queue) -> None:
        try:
            while True:
                message = read_message(fd)
                self.last_seen = time.monotonic()
                if message is None:
                    break
                self.waiting = message[0] == "wait"
                self.ready = True
                events.put((self, message))
        finally:
            os.close(fd)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)  # reap it (no zombie), before saying it ended
            events.put((self, None))  # the process ended (or closed its pipe)

    def send(self, message) -> bool:
        view = memoryview(frame(message))
        deadline = time.monotonic() + SEND_SECONDS
        with self._lock:
            while view:
                try:
                    view = view[os.write(self.control_w, view) :]
                except BlockingIOError:  # the pipe is full: wait for it to read, not forever
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.kill("timeout")
                        return False
                    select.select([], [self.control_w], [], min(left, 1.0))
                except OSError:  # it died; the reader thread reports it
                    return False
            return True

    def free(self, begin: int, end: int) -> None:
        """The parent copied out the item at [begin, end): release the ring up to the
        first span still in use (items of one process may be consumed out of order)."""
        self._freed[begin] = end
        moved = False
        while self.released in self._freed:
            self.released = self._freed.pop(self.released)
            moved = True
        if moved and self.proc.poll() is None:
            if self.waiting:
                self.last_seen = time.monotonic()  # its clock restarts when it gets room
            self.send(("release", self.released))

    def kill(self, reason: str | None = None) -> None:
        self.kill_reason = self.kill_reason or reason
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            os.close(self.control_w)  # it exits at EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()


class DecodePool:
    """``n`` decode processes with a ring of ``ring_bytes`` each."""

    def __init__(self, n: int, ring_bytes: int, timeout: float) -> None:
        if n < 1:
            raise ValueError(f"a decode pool needs at least one process, got {n}")
        self.n, self.ring_bytes, self.timeout = n, max(MIN_RING_BYTES, ring_bytes), timeout
        self.events: queue.Queue = queue.Queue()
        self.slots = [_Process(i, self.ring_bytes, self.events) for i in range(n)]
        self.closed = False

    def replace(self, proc: _Process) -> _Process:
        """A fresh process in ``proc``'s slot (``proc`` is killed if still running)."""
        if self.slots[proc.slot] is proc:
            proc.kill()
            self.slots[proc.slot] = _Process(proc.slot, self.ring_bytes, self.events)
        return self.slots[proc.slot]

    def source(
        self, paths: Sequence[str], views, threads: int, decoder: str = "pyav"
    ) -> PoolSource:
        return PoolSource(self, paths, views, threads, decoder)

    def close(self) -> None:
        self.closed = True
        for proc in self.slots:
            proc.close()


class PoolSource:
    """One chunk's videos through a pool (see ``sources`` for the events)."""

    def __init__(
        self, pool: DecodePool, paths: Sequence[str], views, threads: int, decoder: str
    ) -> None:
        import cloudpickle

        self.pool, self.paths, self.threads, self.decoder = pool, list(paths), threads, decoder
        self.blob = cloudpickle.dumps(list(views))
        n = len(self.paths)
        self.todo = deque(range(n))
        self.deferred: list[deque] = [deque() for _ in range(n)]
        self.video_of: dict[int, int] = {}  # job id -> video
        self.job_of: dict[int, tuple[int, _Process]] = {}  # video -> (job id, process)
        self.ended = [False] * n  # its terminal event arrived
        self.deaths = [0] * n
        self.cancelled: set[int] = set()
        self.current = 0

    # -- scheduling -------------------------------------------------------------------
    def _assign(self) -> None:
        for ahead in range(1, JOBS_AHEAD + 1):  # first one video per process, then the next
            for proc in self.pool.slots:
                if not self.todo:
                    return
                if len(proc.jobs) < ahead and proc.kill_reason is None and proc.proc.poll() is None:
                    video = self.todo.popleft()
                    job = next(_job_ids)
                    if not proc.jobs:
                        proc.last_seen = time.monotonic()  # its clock starts with its work
                    proc.jobs.append(job)
                    self.video_of[job] = video
                    self.job_of[video] = (job, proc)
                    proc.send(
                        ("job", job, self.paths[video], self.blob, self.threads, self.decoder)
                    )

    def _drain(self) -> None:
        """Handle every event already there (cheap: items are not copied yet), so finished
        processes get their next video without waiting for the forward passes."""
        while True:
            try:
                proc, message = self.pool.events.get_nowait()
            except queue.Empty:
                return
            self._handle(proc, message)

    def _check_stalls(self) -> None:
        now = time.monotonic()
        for proc in self.pool.slots:
            limit = self.pool.timeout + (0.0 if proc.ready else STARTUP_SECONDS)
            if (
                proc.jobs
                and not proc.waiting
                and proc.kill_reason is None
                and now - proc.last_seen > limit
            ):
                proc.kill("timeout")

    def _handle(self, proc: _Process, message) -> None:
        if message is None:
            self._died(proc)
            return
        kind, job, payload = message
        if self.pool.slots[proc.slot] is not proc or kind in ("wait", "ready"):
            return
        video = self.video_of.get(job)
        if kind in TERMINAL and job in proc.jobs:
            proc.jobs.remove(job)
        if video is None:  # a job of an earlier chunk that stopped early: drop it
            if kind == "item":
                proc.free(payload[2], payload[3])
            return
        if kind == "end":
            from aigvqa.extractors.decode import TruncatedVideoWarning

            payload = [TruncatedVideoWarning(*w) for w in payload]
        elif kind == "error":
            type_name, text, is_decode = payload
            payload = DecodeError(text) if is_decode else RemoteDecodeError(type_name, text)
        if kind in TERMINAL:
            self.ended[video] = True
        self.deferred[video].append((kind, payload, proc))

    def _died(self, proc: _Process) -> None:
        if self.pool.slots[proc.slot] is not proc:
            return  # replaced already
        try:
            code = proc.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it closed its pipe but lives on: end it
            proc.kill()
            code = proc.proc.wait()
        jobs = list(proc.jobs)
        proc.jobs.clear()
        self.pool.replace(proc)
        videos = [self.video_of[j] for j in jobs if j in self.video_of]
        videos = [v for v in videos if not self.ended[v]]
        if not videos:
            return
        # It decodes its jobs in turn: the first unfinished one is the culprit; the ones
        # queued behind it never started and go back to the front of the queue.
        video, waiting = videos[0], videos[1:]
        for later in reversed(waiting):
            self._requeue(later)
        if video in self.cancelled:
            self._requeue(video)
            return
        if proc.kill_reason == "timeout":
            error = DecodeProcessError(
                f"{self.paths[video]}: decoding stalled (no view item for "
                f"{self.pool.timeout:g} s); the decode process was killed. The file may hang "
                "FFmpeg; re-encode it, or raise --decode-timeout for very long videos"
            )
        else:
            self.deaths[video] += 1
            if self.deaths[video] < 2:  # once more, on a fresh process
                self.deferred[video] = deque([("restart", None, None)])
                self.todo.appendleft(video)
                return
            error = DecodeProcessError(
                f"{self.paths[video]}: the decode process died twice while decoding this "
                f"video (exit code {code}); the file may crash FFmpeg (see the worker's log)"
            )
        self.ended[video] = True
        self.deferred[video].append(("error", error, None))

    def _requeue(self, video: int) -> None:
        """Back to the front of the queue (or skipped, if the consumer gave up on it)."""
        if video in self.cancelled:
            self.ended[video] = True
            self.deferred[video].append(("skipped", None, None))
        else:
            self.todo.appendleft(video)

    def _unblock(self, proc: _Process) -> None:
        """The process of the current video waits for room held by later videos' items
        (after a retry, a process can hold items of videos behind the one it decodes):
        copy those out so the current video can go on."""
        for later in range(self.current + 1, len(self.paths)):
            events = self.deferred[later]
            for i, (kind, payload, owner) in enumerate(events):
                if kind == "item" and owner is proc:
                    events[i] = (kind, self._copy_out(payload, owner), None)

    @staticmethod
    def _copy_out(payload, proc: _Process):
        key, index, begin, end, where = payload
        if isinstance(where, np.ndarray):
            item = where
        else:
            offset, shape, dtype = where
            item = np.ndarray(shape, np.dtype(dtype), buffer=proc.ring, offset=offset).copy()
        proc.free(begin, end)
        return key, index, item

    # -- the events -------------------------------------------------------------------
    def events(self) -> Iterator[tuple[int, str, object]]:
        n = len(self.paths)
        while self.current < n:
            self._drain()
            self._assign()
            video = self.current
            if self.deferred[video]:
                kind, payload, proc = self.deferred[video].popleft()
                if kind == "item" and proc is not None:
                    payload = self._copy_out(payload, proc)
                if kind in TERMINAL:
                    self.current += 1
                yield video, kind, payload
                continue
            self._check_stalls()
            entry = self.job_of.get(video)
            if entry is not None and entry[1].waiting:
                self._unblock(entry[1])
            try:
                proc, message = self.pool.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            self._handle(proc, message)

    def cancel(self, video: int) -> None:
        if self.ended[video]:
            return
        self.cancelled.add(video)
        if video in self.todo:
            self.todo.remove(video)
            self.ended[video] = True
            self.deferred[video].append(("skipped", None, None))
            return
        entry = self.job_of.get(video)
        if entry is not None and entry[0] in entry[1].jobs:
            entry[1].send(("cancel", entry[0]))

    def close(self) -> None:
        """A chunk that stopped early (an exception) leaves processes busy with its jobs or
        holding its items in their rings: replace them, the next chunk starts clean."""
        if self.current >= len(self.paths):
            return
        busy = {proc for proc in self.pool.slots if proc.jobs}
        busy |= {p for events in self.deferred for _, _, p in events if p is not None}
        for proc in busy:
            self.pool.replace(proc)


# -- one pool per setting and task thread, for the life of the worker process ------------------
_IDLE: dict[tuple[int, int], list[DecodePool]] = {}
_LOCK = threading.Lock()


def close_idle_pools() -> None:
    """Stop the decode processes of every idle pool of this worker process (at exit, and
    when a run on a shared cluster hands the workers back: ``worker.release_models``)."""
    with _LOCK:
        pools = [p for group in _IDLE.values() for p in group]
        _IDLE.clear()
    for pool in pools:
        pool.close()


atexit.register(close_idle_pools)


@contextlib.contextmanager
def checkout(settings: DecodeSettings) -> Iterator[DecodePool]:
    """An idle pool of ``settings.decode_workers`` processes (started on first use and
    kept for the next task; a task thread of its own gets a pool of its own)."""
    n = int(settings.decode_workers)
    key = (n, max(MIN_RING_BYTES, settings.decode_ahead_bytes // n))
    stale: list[DecodePool] = []
    with _LOCK:
        for other in [k for k in _IDLE if k != key]:  # a run with other settings: free them
            stale.extend(_IDLE.pop(other))
        pool = _IDLE.get(key, []).pop() if _IDLE.get(key) else None
    for old in stale:
        old.close()
    if pool is None:
        pool = DecodePool(n, key[1], settings.decode_timeout)
    pool.timeout = settings.decode_timeout
    try:
        yield pool
    finally:
        with _LOCK:
            _IDLE.setdefault(key, []).append(pool)
