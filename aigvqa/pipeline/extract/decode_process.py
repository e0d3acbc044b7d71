"""A decode process of the pool (``python -m aigvqa.pipeline.extract.decode_process``).

Started by ``decode_pool`` beside a model worker, with three inherited file descriptors:
a control pipe it reads (jobs, ring space released, cancellations), an event pipe it
writes, and a shared-memory ring (a memfd, or an unlinked file) it writes view items
into. Messages are length-prefixed pickles (``write_message`` / ``read_message``); view
items never go through them unless one is larger than the whole ring.

The ring is a FIFO of contiguous allocations: an item of n bytes takes the next n bytes
(wrapping to offset 0 when the tail is too short) once the parent has released enough of
what came before; the process then says ``wait`` and blocks, so what it decodes ahead is
bounded by the ring's size. The process ends when the control pipe closes (its model
worker exited or closed the pool), whatever it was doing.
"""

from __future__ import annotations

import mmap
import os
import pickle
import queue
import struct
import sys
import threading

_HEADER = struct.Struct("<Q")


def frame(obj) -> bytes:
    """A message as written on a pipe: its length, then its pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def write_message(fd: int, obj) -> None:
    view = memoryview(frame(obj))
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int):
    """The next message, or None when the other end closed the pipe."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


class _Cancelled(Exception):
    """The parent no longer wants the video being decoded."""


class _Ring:
    """The writing side of the ring (this process), with the parent's releases."""

    def __init__(self, buffer: mmap.mmap, size: int, events_fd: int) -> None:
        self.buffer, self.size, self.events_fd = buffer, size, events_fd
        self.head = 0  # bytes ever allocated (with the skipped tails)
        self.released = 0  # bytes the parent has released (cumulative, in ring order)
        self.cancelled: set[int] = set()
        self.cond = threading.Condition()

    def release(self, upto: int) -> None:
        with self.cond:
            self.released = max(self.released, upto)
            self.cond.notify_all()

    def cancel(self, job: int) -> None:
        with self.cond:
            self.cancelled.add(job)
            self.cond.notify_all()

    def _reserve(self, job: int, need: int) -> None:
        with self.cond:
            if self.head + need - self.released > self.size:
                write_message(self.events_fd, ("wait", job, None))
                self.cond.wait_for(
                    lambda: self.head + need - self.released <= self.size or job in self.cancelled
                )
            if job in self.cancelled:
                raise _Cancelled

    def send_item(self, job: int, key: str, index: int, item) -> None:
        import numpy as np

        item = np.ascontiguousarray(item)
        n = item.nbytes
        begin = self.head
        if n > self.size:  # larger than the ring: through the pipe, alone in flight
            self._reserve(job, self.size)
            self.head += self.size
            write_message(self.events_fd, ("item", job, (key, index, begin, self.head, item)))
            return
        position = self.head % self.size
        skip = self.size - position if position + n > self.size else 0
        self._reserve(job, skip + n)
        offset = (self.head + skip) % self.size
        np.copyto(np.ndarray(item.shape, item.dtype, buffer=self.buffer, offset=offset), item)
        self.head += skip + n
        where = (offset, item.shape, item.dtype.str)
        write_message(self.events_fd, ("item", job, (key, index, begin, self.head, where)))


def _read_control(control_fd: int, jobs: queue.Queue, ring: _Ring) -> None:
    while True:
        message = read_message(control_fd)
        if message is None or message[0] == "stop":
            os._exit(0)  # the model worker is gone or closed the pool: never outlive it
        kind = message[0]
        if kind == "job":
            jobs.put(message[1:])
        elif kind == "release":
            ring.release(message[1])
        elif kind == "cancel":
            ring.cancel(message[1])


def _run_job(
    job: int, path: str, views, threads: int, decoder, ring: _Ring, events_fd: int
) -> None:
    from aigvqa.errors import DecodeError
    from aigvqa.pipeline.extract.sources import decode_events

    if job in ring.cancelled:  # given up on while it waited in this process's queue
        write_message(events_fd, ("skipped", job, None))
        return
    try:
        for kind, payload in decode_events(
            decoder, path, views, threads, lambda: job in ring.cancelled
        ):
            if kind == "item":
                ring.send_item(job, *payload)
            elif kind == "end":
                caught = [(str(w), w.path, w.decoded, w.expected) for w in payload]
                write_message(events_fd, ("end", job, caught))
            else:
                write_message(events_fd, (kind, job, payload))
    except _Cancelled:
        write_message(events_fd, ("skipped", job, None))
    except Exception as err:  # noqa: BLE001 - reported; the parent decides what it costs
        write_message(
            events_fd, ("error", job, (type(err).__name__, str(err), isinstance(err, DecodeError)))
        )


def main(argv: list[str]) -> None:
    control_fd, events_fd, ring_fd, size = (int(a) for a in argv)
    buffer = mmap.mmap(ring_fd, size)
    os.close(ring_fd)
    try:  # N decode processes fill the cores: OpenCV's own thread pool would oversubscribe
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - a dependency; views import it anyway
        pass
    import cloudpickle

    import aigvqa.extractors.views  # noqa: F401 - the decoding stack, loaded before "ready"
    from aigvqa.pipeline.extract.sources import DECODERS

    ring = _Ring(buffer, size, events_fd)
    jobs: queue.Queue = queue.Queue()
    threading.Thread(target=_read_control, args=(control_fd, jobs, ring), daemon=True).start()
    write_message(events_fd, ("ready", None, os.getpid()))
    views_of: dict[bytes, object] = {}
    while True:
        job, path, blob, threads, decoder_name = jobs.get()
        if blob not in views_of:
            views_of.clear()
            views_of[blob] = cloudpickle.loads(blob)
        _run_job(job, path, views_of[blob], threads, DECODERS[decoder_name](), ring, events_fd)


if __name__ == "__main__":
    main(sys.argv[1:])
