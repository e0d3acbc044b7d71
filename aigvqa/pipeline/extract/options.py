"""The settings of a stage-one run as frozen values, checked once at the API's edge.

``extract()`` takes flat keywords (what a notebook user types); it turns them at once
into an ``ExtractOptions`` (client side: chunking, merging, progress) holding a
``DecodeSettings`` (what every chunk task needs to decode and batch) and a
``cluster.ClusterSpec`` (how to get workers). Those values, not keyword lists, travel
inward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aigvqa.errors import AigvqaError

DEFAULT_CHUNK_SIZE = 16
"""Videos per task and per shard: big enough that the per-shard cost (an HDF5 file, a
merge) is noise, small enough that a worker that dies loses little and the last tasks
balance across workers."""

VIDEOS_PER_DECODE_WORKER = 4
"""With decode processes, a chunk holds at least this many videos per process (when not
told otherwise): the processes idle from the end of one chunk's decoding to the start of
the next task, so a chunk must be several rounds of decoding long."""

TASKS_PER_WORKER = 4
"""Below chunk_size x workers x this many videos, chunks shrink to balance the workers."""

PROMPT_CHUNK_SIZE = 256
"""Distinct prompts per text task (a text tower encodes hundreds of prompts per second)."""

ISOLATED_ATTEMPTS = 2
"""Tries of a task Dask gave up on before its videos become failure rows: the chunk, then
each video alone (twice: a dying worker also blames the tasks queued next to the culprit)."""

TASK_RETRIES = 2
"""Dask retries of a task that *raised* (an I/O hiccup writing the shard). Per-video errors
never raise out of a task; a dead worker is covered by the scheduler's allowed-failures."""

PREFETCH_BYTES = 256 * 2**20
"""At most this many bytes of decoded view items wait for the forward passes of one task
(the decoder thread, or all the decode processes of a model worker together): a long
video's SlowFast clips must not pile up in memory."""

DEFAULT_DECODE_TIMEOUT = 300.0
"""Seconds a decode process may go without handing over a view item (while it is not
waiting for room) before its video counts as hanging the decoder: the process is killed
and the video becomes a failure row. Key frames of a 2-hour 4K video are minutes of
decoding apart, so this is generous; ``--decode-timeout`` changes it."""


class ExtractError(AigvqaError, RuntimeError):
    """Stage one cannot start: bad arguments, a duplicate id, an unusable cache path."""


@dataclass(frozen=True)
class DecodeSettings:
    """How a chunk task decodes videos and batches their items (sent with every task).

    ``decode_workers``: decode processes beside the model worker (0: decode in the model
    worker, in a thread when ``videos_in_flight`` > 1); ``None`` only before the run
    resolves it from the cores. ``decode_threads``: FFmpeg threads per video (0 =
    FFmpeg's default). ``videos_in_flight``: videos the in-worker decoder thread may be
    ahead (1: decode and compute in turn). ``decode_ahead_bytes``: the bound on decoded
    items waiting for the models. ``decode_timeout``: see ``DEFAULT_DECODE_TIMEOUT``.
    ``batch_across_videos``: an extractor's batch takes items of several videos (False:
    each video's items are batched alone, the reference the tests compare with).
    """

    decode_workers: int | None = 0
    decode_threads: int | None = 0
    videos_in_flight: int = 2
    decode_ahead_bytes: int = PREFETCH_BYTES
    decode_timeout: float = DEFAULT_DECODE_TIMEOUT
    batch_across_videos: bool = True

    def check(self) -> DecodeSettings:
        if self.videos_in_flight < 1:
            raise ExtractError(f"videos_in_flight must be at least 1, got {self.videos_in_flight}")
        if self.decode_threads is not None and self.decode_threads < 0:
            raise ExtractError(
                f"decode_threads must be >= 0 (0 = FFmpeg's default), got {self.decode_threads}"
            )
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ExtractError(
                f"decode_workers must be >= 0 (0 = decode in the model worker), got "
                f"{self.decode_workers}"
            )
        if not self.decode_timeout > 0:
            raise ExtractError(f"decode_timeout must be > 0 seconds, got {self.decode_timeout}")
        if self.decode_ahead_bytes < 1:
            raise ExtractError(f"decode_ahead_bytes must be >= 1, got {self.decode_ahead_bytes}")
        return self


@dataclass(frozen=True)
class ExtractOptions:
    """The client side of a run: chunking, resume, merging, progress, and the decoding."""

    chunk_size: int | None = None  # None: default_chunk_size(decode processes)
    overwrite: bool = False
    progress: bool = True
    merge_every: int | None = None
    decode: DecodeSettings = field(default_factory=DecodeSettings)

    def check(self) -> ExtractOptions:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ExtractError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.merge_every is not None and self.merge_every < 1:
            raise ExtractError(f"merge_every must be at least 1, got {self.merge_every}")
        self.decode.check()
        return self


def default_chunk_size(decode_workers: int) -> int:
    """Videos per task when not told: ``DEFAULT_CHUNK_SIZE``, or ``VIDEOS_PER_DECODE_WORKER``
    rounds of the decode processes when that is more."""
    return max(DEFAULT_CHUNK_SIZE, VIDEOS_PER_DECODE_WORKER * int(decode_workers or 0))
