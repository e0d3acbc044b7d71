"""Stage one on Dask: decode every video once, run every requested extractor, cache features.

The work unit is a *chunk* of K records. A chunk task, on a worker process:

  1. takes the extractors from a per-process cache (``_LOADED``): models are built the
     first time a process sees an extractor config and reused by every later task, so a
     worker loads each backbone once, not once per task;
  2. for each video, ``views.stream_views`` decodes it once and a
     ``runner.VideoFeatureBuilder`` feeds every extractor the view it asked for (one pass,
     memory bounded by the views, not the length); a decoder thread runs ahead of the
     forward passes;
  3. writes ONE shard file ``<cache>.shards/shard-<hash>.h5`` atomically
     (``cache.store.write_shard``: temp name + rename). The name is a hash of the chunk's
     ids and the extractors' provenance, so a task Dask re-runs after a worker died
     finds its shard and returns without recomputing;
  4. returns ids and failures (a small summary, never the features).

Prompts are encoded by separate, small tasks (chunks of distinct prompt ids): the text
tower runs on a worker like every other model, the client never builds one, and 10
videos of one prompt cost one encoding. Text features are keyed by prompt id.

The client submits every task up front, consumes them with ``as_completed`` (progress
bar), and merges landed shards into the cache in batches (``merge_shards`` rewrites what
it touches, so merging per shard would be quadratic in the run length). A run that is
killed leaves complete shard files; the next run merges them first, then skips every id
the cache already holds for a group: finished work is never recomputed.

Failures: an exception while extracting one video becomes a failure row
(id, extractor, error text) and the chunk goes on. If several extractors ran on the
video, each is retried alone so one failing extractor does not cost the others their
features. A worker process that dies (segfault, OOM kill, ``os._exit``) is replaced by its
nanny and Dask re-runs its task elsewhere (``distributed.scheduler.allowed-failures``
times); a chunk that still cannot finish is split into single-video tasks so only the
culprit video fails. Failed videos are retried by the next run (the error may have been
transient); their failure rows are replaced by the new outcome.

An extractor that produces zero items for a video (for instance a frame-difference
extractor on a 1-frame video) is a failure for that extractor, with a message saying so:
an empty sequence cannot be pooled downstream. A 1-frame video is a success for every
extractor whose view can be built from one frame (key frames, resized frames: the view
repeats the frame).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aigvqa.errors import AigvqaError, ProvenanceMismatchError
from aigvqa.extractors.base import Extractor
from aigvqa.pipeline.records import VideoRecord

ALL_EXTRACTORS = "*"
"""Failure-row extractor of a video that failed as a whole (it could not be decoded);
the cache schema's convention (``cache.schema.ALL_EXTRACTORS``)."""

DEFAULT_CHUNK_SIZE = 16
"""Videos per task and per shard: big enough that the per-shard cost (an HDF5 file, a
merge) is noise, small enough that a worker that dies loses little and the last tasks
balance across workers."""

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

SHARD_GLOB = "shard-*.h5"


class ExtractError(AigvqaError, RuntimeError):
    """Stage one cannot start: bad arguments, a duplicate id, an unusable cache path."""


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


@dataclass
class ExtractReport:
    """What a run did, per video (a video counts once, whatever the number of extractors).

    ``succeeded``: videos computed by this run with no failure; ``failed``: videos with at
    least one failure row from this run; ``skipped``: videos the cache already held for
    every requested group; ``resumed``: videos recovered from shards an interrupted run
    left behind (merged, not recomputed).
    """

    cache: Path
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    prompts_encoded: int = 0
    prompts_skipped: int = 0
    shards_written: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    cluster: str = ""

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.skipped + self.resumed

    def summary(self) -> str:
        lines = [
            f"{self.total} videos: {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.skipped} skipped (already cached)"
            + (f", {self.resumed} resumed from an interrupted run" if self.resumed else ""),
        ]
        if self.prompts_encoded or self.prompts_skipped:
            lines.append(
                f"prompts: {self.prompts_encoded} encoded, {self.prompts_skipped} already cached"
            )
        lines.append(f"cache: {self.cache} ({self.seconds:.1f} s on {self.cluster})")
        shown = self.failures[:10]
        for video_id, extractor, error in shown:
            lines.append(f"  failed {video_id} [{extractor}]: {_first_line(error)}")
        if len(self.failures) > len(shown):
            lines.append(
                f"  ... {len(self.failures) - len(shown)} more failure rows: "
                f"`aigvqa info {self.cache}` lists them"
            )
        return "\n".join(lines)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------


def extract(
    manifest_or_records: str | os.PathLike | Iterable[VideoRecord],
    extractors: Sequence[str | Extractor] | Mapping[str, Mapping[str, Any] | None],
    cache: str | os.PathLike,
    *,
    scheduler: str | None = None,
    gpus: bool = False,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    torch_threads: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    overwrite: bool = False,
    progress: bool = True,
    random_init: bool = False,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    client=None,
    dashboard_address: str | None = ":8787",
    merge_every: int | None = None,
    videos_in_flight: int = 2,
    decode_threads: int | None = None,
) -> ExtractReport:
    """Run stage one: features of every record for every extractor into ``cache`` (HDF5).

    ``extractors``: registry names (``["clip-frames", "clip-text"]``), a mapping name ->
    config (``{"clip-frames": {"arch": "ViT-B-16"}}``, what ``--config extractors.toml``
    gives), or configured, *unloaded* ``Extractor`` instances. ``random_init=True`` builds
    every torch backbone with random weights (tests, benchmarks; stamped RANDOM-INIT in
    the cache); ``weights`` is a checkpoint path (one torch extractor) or a mapping name ->
    path.

    Cluster: ``scheduler`` (address or scheduler file) connects to a running cluster;
    ``gpus=True`` starts a LocalCUDACluster; otherwise a LocalCluster of ``n_workers``
    processes (default: sized to the machine) with ``threads_per_worker`` task threads and
    ``torch_threads`` torch threads each. An existing ``distributed.Client`` can be passed
    as ``client`` instead (it is used as is and not closed).

    ``videos_in_flight`` (per task): 2 or more runs a decoder thread in each task of more
    than one video (small runs are cut into one-video tasks) that decodes up to
    ``videos_in_flight - 1`` videos ahead of the forward passes; 1 decodes and computes in
    turn. With workers filling the cores the decoder thread gained 5-15 % on 2 cores
    (bench/extract_throughput.py, rows (c) and (c1)); with a core to spare, ~35 %.
    ``decode_threads``: FFmpeg decoder threads per video. Default: ``torch_threads`` when
    every model runs on the CPU -- FFmpeg's own default is one thread per core in every
    worker, which oversubscribes the cores the forward passes already fill -- and
    FFmpeg's default (0) when a model runs on a GPU, where decoding is the bottleneck.

    Re-running skips ids already cached; ``overwrite=True`` recomputes them. A config or
    weights change against a group already in the cache raises ProvenanceMismatchError
    before any video is processed. Scripts calling this must guard their entry point with
    ``if __name__ == "__main__":`` (worker processes are spawned).
    """
    # distributed is imported here, not at module level: the CLI imports this module to
    # build its parser, and `aigvqa info` should not pay for importing Dask.
    from aigvqa.pipeline.cluster import ClusterSpec, open_cluster

    started = time.perf_counter()
    if chunk_size < 1 or videos_in_flight < 1:
        raise ExtractError(
            f"chunk_size and videos_in_flight must be at least 1, got {chunk_size}, {videos_in_flight}"
        )
    if decode_threads is not None and decode_threads < 0:
        raise ExtractError(f"decode_threads must be >= 0 (0 = FFmpeg's default), got {decode_threads}")
    records = _as_records(manifest_or_records)
    wanted = resolve_extractors(extractors, random_init=random_init, weights=weights,
                                device="cuda" if gpus else None)
    if decode_threads is None:
        decode_threads = default_decode_threads(wanted, torch_threads)
    cache_path = Path(cache).resolve()
    _check_cache_path(cache_path)
    spec = ClusterSpec(
        scheduler=scheduler,
        gpus=gpus,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        torch_threads=torch_threads,
        dashboard_address=dashboard_address,
    )
    if client is not None:
        report = _Run(client, records, wanted, cache_path, spec, chunk_size, overwrite,
                      progress, merge_every, videos_in_flight, decode_threads).go()
    else:
        with open_cluster(spec) as own_client:
            report = _Run(own_client, records, wanted, cache_path, spec, chunk_size,
                          overwrite, progress, merge_every, videos_in_flight, decode_threads).go()
    report.seconds = time.perf_counter() - started
    return report


def default_decode_threads(extractors: Sequence[Extractor], torch_threads: int) -> int:
    """FFmpeg threads per video when not told: with every model on the CPU a worker decodes
    with as many threads as it computes with (FFmpeg's default, one per core in every
    worker, oversubscribes the cores the forward passes already fill); when a model runs on
    a GPU (``--gpus``, or ``device = "cuda"`` in its config) FFmpeg picks (0): decoding,
    not the forward pass, is then what the CPU cores are for."""
    on_gpu = any(str(e.config().get("device") or "cpu").startswith("cuda") for e in extractors)
    return 0 if on_gpu else max(1, int(torch_threads))


def shard_dir_for(cache: str | os.PathLike) -> Path:
    """Where the shards of ``cache`` live while a run is in flight: ``<cache>.shards/``."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".shards")


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------


def _as_records(source) -> list[VideoRecord]:
    if isinstance(source, (str, os.PathLike)):
        from aigvqa.pipeline.manifest import read_manifest

        records = read_manifest(source)
    else:
        records = list(source)
    if not records:
        raise ExtractError("the manifest has no records; nothing to extract")
    bad = [r for r in records if not isinstance(r, VideoRecord)]
    if bad:
        raise ExtractError(f"expected VideoRecord items, got {type(bad[0]).__name__}")
    seen: dict[str, int] = {}
    dupes = []
    for i, rec in enumerate(records):
        if rec.video_id in seen:
            dupes.append(f"{rec.video_id!r} (records {seen[rec.video_id] + 1} and {i + 1})")
        seen[rec.video_id] = i
    if dupes:
        raise ExtractError(
            "video ids must be unique in a manifest (they key the cache); duplicated: "
            + ", ".join(dupes[:10])
            + (f" and {len(dupes) - 10} more" if len(dupes) > 10 else "")
        )
    # Workers may run in another directory (or on another host with shared storage).
    return [replace(r, path=Path(os.path.abspath(r.path))) for r in records]


def resolve_extractors(
    extractors,
    *,
    random_init: bool = False,
    weights=None,
    device: str | None = None,
) -> list[Extractor]:
    """Names / name->config mapping / instances -> configured, unloaded extractors.

    ``random_init``, ``weights`` and ``device`` fill the options of the extractors that
    accept them (never overriding a value given per extractor); instances are used as
    configured."""
    from aigvqa.extractors.registry import create_extractor

    if isinstance(extractors, str):
        extractors = [e for e in extractors.split(",") if e.strip()]
    if isinstance(extractors, Mapping):
        items = [(name, dict(cfg or {})) for name, cfg in extractors.items()]
    else:
        items = []
        for e in extractors:
            items.append((e.strip(), {}) if isinstance(e, str) else (None, e))
    if not items:
        raise ExtractError("no extractors requested; pass e.g. --extractors clip-frames,clip-text")

    torch_names = []
    built: list[Extractor] = []
    for name, cfg in items:
        if name is None:  # an instance, used as configured
            if cfg.weights_identity is not None:
                raise ExtractError(
                    f"extractor {cfg.name!r} is already loaded: it would be shipped with its "
                    "weights to every task. Pass it unloaded (create_extractor(...) without "
                    "load()); each worker loads it once."
                )
            built.append(cfg)
            continue
        accepts = _accepted_options(name)
        if random_init and "random_init" in accepts:
            cfg.setdefault("random_init", True)
        if device and _runs_on_device(name):
            cfg.setdefault("device", device)
        if "weights" in accepts:
            torch_names.append(name)
        built.append((name, cfg))  # type: ignore[arg-type]

    weight_map = _weights_map(weights, torch_names)
    out: list[Extractor] = []
    for item in built:
        if isinstance(item, Extractor):
            out.append(item)
            continue
        name, cfg = item
        if name in weight_map:
            cfg.setdefault("weights", str(weight_map[name]))
        if cfg.get("weights"):
            # workers (maybe on other hosts, with another working directory) get the path
            # as the client meant it
            cfg["weights"] = os.fspath(Path(cfg["weights"]).expanduser().absolute())
        out.append(create_extractor(name, **cfg))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExtractError(f"extractor(s) {', '.join(dup)} requested twice; each names one cache group")
    return out


def _accepted_options(name: str) -> set[str]:
    from aigvqa.extractors.registry import get_extractor_class

    cls = get_extractor_class(name)
    defaults = getattr(cls, "all_defaults", None)
    return set(defaults()) if callable(defaults) else set()


def _runs_on_device(name: str) -> bool:
    # Torch backbones move to the GPU; others (handcrafted) accept ``device`` for a
    # uniform config but compute on the CPU, and their provenance should say so.
    from aigvqa.extractors.registry import TorchExtractor, get_extractor_class

    return issubclass(get_extractor_class(name), TorchExtractor)


def _weights_map(weights, torch_names: list[str]) -> dict[str, str]:
    if weights is None:
        return {}
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(torch_names))
        if unknown:
            raise ExtractError(
                f"weights given for {', '.join(unknown)}, which is not a requested extractor "
                f"taking weights (requested: {', '.join(torch_names) or 'none'})"
            )
        return {k: os.fspath(v) for k, v in weights.items()}
    if len(torch_names) != 1:
        raise ExtractError(
            "one weights path was given but "
            f"{len(torch_names)} requested extractors take weights ({', '.join(torch_names)}); "
            "set weights per extractor in --config extractors.toml ([name] weights = \"path\")"
        )
    return {torch_names[0]: os.fspath(weights)}


def _check_cache_path(cache: Path) -> None:
    if cache.is_dir():
        raise ExtractError(f"--cache {cache} is a folder; give a file name such as feats.h5")
    if not cache.parent.is_dir():
        raise ExtractError(f"--cache {cache}: folder {cache.parent} does not exist; create it first")


# ---------------------------------------------------------------------------------------
# Identity of extractors and shards
# ---------------------------------------------------------------------------------------


def extractor_key(extractor: Extractor) -> str:
    """Identity of a configured extractor: class + full config (what a worker caches by)."""
    cls = type(extractor)
    blob = json.dumps(extractor.config(), sort_keys=True, default=str)
    return f"{cls.__module__}.{cls.__qualname__}:{extractor.name}:{blob}"


def _digest(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def shard_name(kind: str, ids: Sequence[str], provenances: Sequence[Mapping[str, Any]]) -> str:
    """Deterministic shard file name from its ids and its extractors' provenance."""
    config = json.dumps(list(provenances), sort_keys=True, default=str)
    return f"shard-{kind}-{_digest(config, *ids)}.h5"


# ---------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------

_LOADED: dict[str, Extractor] = {}
"""Per-process model cache: extractor_key -> loaded extractor. Lives in each worker
process for its whole life, so models load once per worker, not once per task."""


def _loaded(extractor: Extractor) -> Extractor:
    """The loaded twin of ``extractor`` in this process (loaded on first use).

    The device is the extractor's own ``device`` option, so the provenance the cache
    stores says where features were computed (``gpus=True`` sets it to "cuda"; under
    dask-cuda each worker sees its one GPU as cuda:0)."""
    key = extractor_key(extractor)
    model = _LOADED.get(key)
    if model is None:
        model = extractor
        model.load(str(extractor.config().get("device", "cpu") or "cpu"))
        _LOADED[key] = model
    return model


def describe_extractors(extractors: list[Extractor]) -> list[dict[str, Any]]:
    """Worker task: load every extractor (kept for later tasks) and return its provenance.

    Provenance needs the weights' identity, known only once weights are resolved, which
    is why this runs on a worker and not on the client."""
    return [_loaded(e).provenance() for e in extractors]


@dataclass
class ChunkResult:
    """What a task returns to the client: a summary, never the features."""

    shard: str | None
    kind: str  # "video" or "prompt"
    done: dict[str, list[str]]  # extractor name -> ids with features in the shard
    failures: list[tuple[str, str, str]]  # (id, extractor, error text)
    reused: bool = False  # the shard already existed (a re-run task): nothing recomputed


PREFETCH_BYTES = 256 * 2**20
"""At most this many bytes of decoded view items wait for the forward passes (the decoder
thread runs ahead; a long video's SlowFast clips must not pile up in memory)."""


def run_video_chunk(
    records: list[VideoRecord],
    extractors: list[Extractor],
    shard_path: str,
    videos_in_flight: int = 2,
    decode_threads: int = 0,
) -> ChunkResult:
    """Worker task: features of ``records`` for ``extractors`` into one shard file.

    With ``videos_in_flight`` > 1 (and more than one record) a decoder thread runs ahead of
    the forward passes, by up to ``videos_in_flight - 1`` videos and ``PREFETCH_BYTES`` of
    view items (per task: a worker with several task threads holds that much per thread),
    so the models never wait for FFmpeg (which releases the GIL) unless decoding is the
    slower side; 1 decodes and computes strictly in turn. ``decode_threads``: FFmpeg
    decoder threads per video (0 = FFmpeg's default).
    """
    if os.path.exists(shard_path):
        return _result_from_shard(shard_path, "video")
    from aigvqa.cache.store import Failure, GroupData, write_shard

    models = [_loaded(e) for e in extractors]
    if videos_in_flight > 1 and len(records) > 1:
        results = _extract_decoding_ahead(records, models, videos_in_flight, decode_threads)
    else:
        results = [_extract_one(r, models, decode_threads) for r in records]

    kept: dict[str, tuple[list[str], list[Any]]] = {m.name: ([], []) for m in models}
    failures: list[tuple[str, str, str]] = []
    for record, (outputs, errors) in zip(records, results):
        for name, array in outputs.items():
            kept[name][0].append(record.video_id)
            kept[name][1].append(array)
        failures.extend((record.video_id, name, text) for name, text in errors.items())
    groups = [
        GroupData(m.name, keyed_by="video", ids=kept[m.name][0], values=kept[m.name][1],
                  provenance=m.provenance(), columns=m.feature_names())
        for m in models
    ]
    write_shard(
        Path(shard_path),
        groups,
        [Failure(*f) for f in failures],
        [video_row(r) for r in records],
        dtype={m.name: m.cache_dtype for m in models},
    )
    return ChunkResult(shard_path, "video", {m.name: kept[m.name][0] for m in models}, failures)


def _extract_one(record: VideoRecord, models: list[Extractor], decode_threads: int = 0):
    """(outputs, errors) of one video: every model in one decode; isolate failures."""
    from aigvqa.extractors.decode import probe
    from aigvqa.extractors.runner import extract_video

    try:
        info = probe(record.path)
        with _truncation_warnings() as caught:
            outputs = extract_video(record.path, models, info=info, decode_threads=decode_threads,
                                    prompt=record.prompt)
    except Exception as err:  # noqa: BLE001 - one bad video must never stop the run
        return _failed(record, models, err, decode_threads)
    return _checked(record, models, info, outputs, caught)


def _failed(record: VideoRecord, models: list[Extractor], err: Exception, decode_threads: int):
    """(outputs, errors) of a video whose extraction raised ``err``."""
    from aigvqa.errors import DecodeError

    if isinstance(err, DecodeError):  # the file itself is bad: one row for the whole video
        return {}, {ALL_EXTRACTORS: _error_text(err)}
    if len(models) == 1:
        return {}, {models[0].name: _error_text(err)}
    # Which extractor failed? Run each alone (re-decodes, but only for this video).
    outputs, errors = {}, {}
    for model in models:
        got, failed = _extract_one(record, [model], decode_threads)
        outputs.update(got)
        errors.update(failed)
    return outputs, errors


def _checked(record: VideoRecord, models: list[Extractor], info, outputs, truncation_warnings):
    """(outputs, errors) of a video that decoded: a much truncated file fails as a whole,
    an extractor with no items (a video too short for its view) fails alone."""
    truncated = _truncation(truncation_warnings, info.num_frames)
    if truncated:
        return {}, {ALL_EXTRACTORS: f"TruncatedVideo: {record.path}: {truncated}"}
    errors = {}
    for model in models:
        array = outputs.get(model.name)
        if array is None:
            errors[model.name] = f"extract_video returned no output for {model.name}"
        elif len(array) == 0:
            view = model.view()
            errors[model.name] = (
                f"{model.name} produced no items for this video (view "
                f"{view.key if view is not None else '?'}, {info.num_frames} frame(s)): the "
                "video is too short for this extractor"
            )
    return {k: v for k, v in outputs.items() if k not in errors}, errors


class _DecoderStopped(Exception):
    """The forward side closed the hand-off: the decoder thread ends."""


class _SkipVideo(Exception):
    """The forward side gave up on the video being decoded: stop decoding it."""


class _DecodeAhead:
    """Hand-off from the decoder thread to the forward passes: a queue of events, bounded
    in videos (the decoder starts video i + ``max_videos`` only once video i is done) and
    in bytes of queued items (at least one item always fits). The forward side can ask
    the decoder to abandon the video it is decoding (``skip``) and learns why the decoder
    thread stopped if it died (``get`` re-raises with the cause)."""

    def __init__(self, max_videos: int, max_bytes: int) -> None:
        from collections import deque

        self._cond = threading.Condition()
        self._events: deque = deque()
        self._bytes = 0
        self._max_videos, self._max_bytes = max_videos, max_bytes
        self._started = self._finished = 0
        self._skip = -1  # index of a video the forward side no longer wants
        self._closed = self._decoder_done = False
        self._decoder_error: BaseException | None = None

    def begin_video(self) -> int:
        """Wait for room, then return the index of the video the decoder starts."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._started - self._finished < self._max_videos)
            if self._closed:
                raise _DecoderStopped
            self._started += 1
            return self._started - 1

    def put(self, event: tuple, nbytes: int = 0, video: int | None = None) -> None:
        """Queue ``event``; raises _SkipVideo when ``video`` is the one to abandon."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or video == self._skip or not self._events
                or self._bytes + nbytes <= self._max_bytes
            )
            if self._closed:
                raise _DecoderStopped
            if video is not None and video == self._skip:
                raise _SkipVideo
            self._events.append((event, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()

    def decoder_done(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._decoder_done, self._decoder_error = True, error
            self._cond.notify_all()

    def get(self) -> tuple:
        with self._cond:
            self._cond.wait_for(lambda: self._events or self._decoder_done)
            if not self._events:
                raise RuntimeError(
                    "the decoder thread stopped before handing over every video"
                ) from self._decoder_error
            event, nbytes = self._events.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return event

    def skip(self, video: int) -> None:
        with self._cond:
            self._skip = video
            self._cond.notify_all()

    def finish_video(self) -> None:
        with self._cond:
            self._finished += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _extract_decoding_ahead(records: list[VideoRecord], models: list[Extractor],
                            videos_in_flight: int, decode_threads: int) -> list:
    """``_extract_one`` of every record, with decoding in a thread of its own.

    The decoder thread streams each video's view items into a ``_DecodeAhead``; this thread
    runs the forward passes. (A thread per video that decodes and then computes falls into
    step with its twin: both decode at once while the models sit idle.) Failure rows are
    the sequential path's: a decode error or a truncated file fails the whole video; an
    extractor that raises stops the decoding of that video, and ``_failed`` re-runs each
    extractor alone to find which one it was.
    """
    from aigvqa.extractors.decode import probe
    from aigvqa.extractors.runner import VideoFeatureBuilder
    from aigvqa.extractors.views import stream_views

    try:
        views = VideoFeatureBuilder(models).views
    except Exception:  # noqa: BLE001 - let the sequential path turn it into failure rows
        return [_extract_one(r, models, decode_threads) for r in records]
    hand_off = _DecodeAhead(videos_in_flight, PREFETCH_BYTES)

    def decode_all() -> None:
        stopped_by: BaseException | None = None
        try:
            for record in records:
                video = hand_off.begin_video()
                try:
                    info = probe(record.path)
                    hand_off.put(("start", info))
                    with _truncation_warnings() as caught:
                        for key, index, item in stream_views(record.path, views, info=info,
                                                             threads=decode_threads):
                            hand_off.put(("item", (key, index, item)), item.nbytes, video)
                    hand_off.put(("end", caught))
                except _SkipVideo:
                    hand_off.put(("skipped", None))
                except _DecoderStopped:
                    raise
                except Exception as err:  # noqa: BLE001 - handed over: one bad video fails alone
                    hand_off.put(("error", err))
        except _DecoderStopped:
            pass
        except BaseException as err:  # noqa: BLE001 - the forward side re-raises it as the cause
            stopped_by = err
        finally:
            hand_off.decoder_done(stopped_by)

    def compute(video: int, record: VideoRecord):
        kind, payload = hand_off.get()
        if kind == "error":
            return _failed(record, models, payload, decode_threads)
        info, builder, failure = payload, None, None
        while True:
            kind, payload = hand_off.get()
            if kind == "item":
                if failure is None:
                    try:
                        builder = builder or VideoFeatureBuilder(models, prompt=record.prompt)
                        builder.add(*payload)
                    except Exception as err:  # noqa: BLE001 - stop decoding it, then isolate
                        failure = err
                        hand_off.skip(video)
            elif kind == "error":  # the file broke after some items: the whole video fails
                return _failed(record, models, payload, decode_threads)
            elif kind == "skipped":
                return _failed(record, models, failure, decode_threads)
            else:  # "end"
                if failure is None:
                    try:
                        builder = builder or VideoFeatureBuilder(models, prompt=record.prompt)
                        return _checked(record, models, info, builder.outputs(), payload)
                    except Exception as err:  # noqa: BLE001 - the last batches' forward passes
                        failure = err
                return _failed(record, models, failure, decode_threads)

    decoder = threading.Thread(target=decode_all, name="aigvqa-decoder", daemon=True)
    decoder.start()
    results = []
    try:
        for video, record in enumerate(records):
            results.append(compute(video, record))
            hand_off.finish_video()
    finally:
        hand_off.close()
        decoder.join()
    return results


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
def _truncation_warnings():
    """Collect the TruncatedVideoWarnings this thread raises inside the block."""
    _install_truncation_hook()
    _COLLECTING.bucket = bucket = []
    try:
        yield bucket
    finally:
        _COLLECTING.bucket = None


MIN_DECODED_FRACTION = 0.9
"""A video that decodes fewer than this share of the frames its header promises is a
failure (a truncated download: the decoder would pad the missing part with copies of the
last frame, features of a frozen video that is not there). A few frames short (rounded
metadata, a damaged tail) keeps its features; the decoder's warning stays in the log."""

def _truncation(caught, num_frames: int) -> str | None:
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


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def run_prompt_chunk(
    prompts: dict[str, str],
    extractor: Extractor,
    shard_path: str,
) -> ChunkResult:
    """Worker task: encode distinct prompts (prompt id -> text) into one prompt-keyed shard."""
    if os.path.exists(shard_path):
        return _result_from_shard(shard_path, "prompt")
    from aigvqa.cache.store import Failure, write_shard
    from aigvqa.extractors.runner import encode_prompts

    model = _loaded(extractor)
    ids = list(prompts)
    failures: list[tuple[str, str, str]] = []
    try:
        encoded = encode_prompts(model, [prompts[i] for i in ids])
    except Exception as err:  # noqa: BLE001 - a prompt batch failing is one row per prompt
        failures = [(pid, model.name, _error_text(err)) for pid in ids]
        write_shard(Path(shard_path), [], [Failure(*f) for f in failures], [])
        return ChunkResult(shard_path, "prompt", {model.name: []}, failures)
    group = prompt_group(model, ids, encoded)
    write_shard(Path(shard_path), [group], [], [], dtype={model.name: model.cache_dtype})
    return ChunkResult(shard_path, "prompt", {model.name: ids}, failures)


def prompt_group(model: Extractor, ids: list[str], encoded: Mapping[str, Any]):
    """Prompt-keyed GroupData from ``encode_prompts`` output."""
    from aigvqa.cache.store import GroupData

    # values = the token sequence (valid tokens only: lengths come from the mask), the
    # pooled vector and the mask ride along as fixed-shape extras. An extractor without
    # token outputs stores its pooled vector as a length-1 sequence.
    tokens = encoded.get("tokens")
    mask = encoded.get("mask")
    rows = range(len(ids))
    if tokens is not None:
        lengths = mask.sum(axis=1).astype(int) if mask is not None else [tokens.shape[1]] * len(ids)
        values = [tokens[i, : max(1, lengths[i])] for i in rows]
        extras = {k: [v[i] for i in rows] for k, v in encoded.items() if k != "tokens"}
    else:
        values = [encoded["pooled"][i][None, :] for i in rows]
        extras = {k: [v[i] for i in rows] for k, v in encoded.items() if k != "pooled"}
    return GroupData(model.name, keyed_by="prompt", ids=ids, values=values, extras=extras,
                     provenance=model.provenance())


def video_row(record: VideoRecord) -> dict[str, Any]:
    """The cache's ``videos`` table row of a record (joins labels and prompt features)."""
    return {
        "video_id": record.video_id,
        "path": str(record.path),
        "prompt": record.prompt or "",
        "prompt_id": record.prompt_id or "",
        "labels": dict(record.labels),
        "groups": dict(record.groups),
    }


def _result_from_shard(shard_path: str, kind: str) -> ChunkResult:
    from aigvqa.cache.store import FeatureCache

    shard = FeatureCache(shard_path)
    done = {g: list(shard.ids(g)) for g in shard.groups()}
    failures = [(f.id, f.extractor, f.error) for f in shard.failures()]
    return ChunkResult(shard_path, kind, done, failures, reused=True)


# ---------------------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------------------


class _Run:
    """One extraction run on a connected client (plan -> submit -> merge as they land)."""

    def __init__(self, client, records, extractors, cache, spec, chunk_size, overwrite,
                 progress, merge_every, videos_in_flight=2, decode_threads=0):
        self.client = client
        self.records = records
        self.video_exts = [e for e in extractors if e.modality == "video"]
        self.text_exts = [e for e in extractors if e.modality == "text"]
        # extractors that need the video's prompt: text ones, and video ones scoring frames
        # against it (blip-itm, imagereward)
        self.prompt_exts = self.text_exts + [e for e in self.video_exts if e.needs_prompt]
        self.by_name = {e.name: e for e in extractors}
        self.cache = cache
        self.shard_dir = shard_dir_for(cache)
        self.spec = spec
        self.chunk_size = chunk_size
        self.overwrite = overwrite
        self.progress = progress
        self.merge_every = merge_every
        self.videos_in_flight = videos_in_flight
        self.decode_threads = decode_threads
        from aigvqa.pipeline.cluster import describe_client

        self.report = ExtractReport(cache=cache, cluster=describe_client(client))
        self.token = uuid.uuid4().hex[:8]
        self.provenance: dict[str, dict[str, Any]] = {}
        self._recovered: set[str] = set()  # video ids merged from leftover shards
        self._ok: set[str] = set()  # video ids computed without failure
        self._failed: set[str] = set()  # video ids with a failure row from this run
        self._prompts_done: set[str] = set()
        self._prompts_failed: set[str] = set()
        self._pending: list[Path] = []  # landed shards not merged yet
        self._client_shards = 0
        self._last_merge = time.monotonic()
        self._merge_seconds = 0.0

    # -- phases ---------------------------------------------------------------------
    def go(self) -> ExtractReport:
        from aigvqa.pipeline.cluster import dashboard_message, set_worker_torch_threads

        print(dashboard_message(self.client), file=sys.stderr)
        set_worker_torch_threads(self.client, self.spec.torch_threads)
        self._describe()
        self.shard_dir.mkdir(exist_ok=True)
        self._recover_leftovers()
        video_plan, prompt_plan, no_prompt = self._plan()
        self._execute(video_plan, prompt_plan, no_prompt)
        self._tally()
        try:
            self.shard_dir.rmdir()  # only when empty: never delete a shard not merged
        except OSError:
            pass
        return self.report

    def _describe(self) -> None:
        """Provenance of every extractor (weights identity included), checked against the
        cache before any video is touched."""
        everything = self.video_exts + self.text_exts
        future = self.client.submit(describe_extractors, everything, pure=False,
                                    key=f"describe-extractors-{self.token}")
        self.provenance = {e.name: p for e, p in zip(everything, future.result())}
        if not self.overwrite:  # --overwrite replaces a group whose settings changed
            check_provenance(self.cache, self.provenance)

    def _recover_leftovers(self) -> None:
        """Merge the complete shards an interrupted run left behind (never recomputed)."""
        from aigvqa.cache.schema import RUNTIME_KEYS, describe_differences
        from aigvqa.cache.store import FeatureCache

        # A shard write killed midway leaves only its hidden temp file: nothing to keep.
        for partial in self.shard_dir.glob(".shard-*.partial"):
            partial.unlink(missing_ok=True)
        leftovers = sorted(self.shard_dir.glob(SHARD_GLOB))
        if not leftovers:
            return
        if self.overwrite:
            # They may hold exactly what --overwrite was asked to recompute.
            for path in leftovers:
                path.unlink()
            return
        recovered: set[str] = set()
        for path in leftovers:
            shard = FeatureCache(path)
            for group in shard.groups():
                info = shard.group_info(group)
                if group in self.provenance:
                    diffs = describe_differences(info.provenance, self.provenance[group],
                                                 ignore=RUNTIME_KEYS)
                    if diffs:
                        raise ProvenanceMismatchError(
                            f"{path} (left by an interrupted run) holds {group!r} features made "
                            f"with other settings ({'; '.join(diffs)}); re-run with those "
                            f"settings to finish that run, or delete {self.shard_dir} to drop it"
                        )
                if info.keyed_by == "video":
                    recovered.update(shard.ids(group))
        self._merge(leftovers)
        self._recovered = recovered
        print(f"merged {len(leftovers)} shard(s) left by an interrupted run", file=sys.stderr)

    def _plan(self):
        from aigvqa.cache.store import FeatureCache

        have: dict[str, set[str]] = defaultdict(set)
        if self.cache.exists() and not self.overwrite:
            reader = FeatureCache(self.cache)
            present = set(reader.groups())
            for name in self.by_name:
                if name in present:
                    have[name] = set(reader.ids(name))

        no_prompt = [r for r in self.records if r.prompt_id is None or not (r.prompt or "").strip()]
        prompt_less = {r.video_id for r in no_prompt}
        by_missing: dict[tuple[str, ...], list[VideoRecord]] = defaultdict(list)
        for rec in self.records:
            missing = tuple(
                e.name for e in self.video_exts
                if rec.video_id not in have[e.name]
                # a video without a prompt is planned without the extractors that need one
                # (it gets their failure row instead, in _execute)
                and not (e.needs_prompt and rec.video_id in prompt_less)
            )
            if missing:
                by_missing[missing].append(rec)

        prompts: dict[str, dict[str, str]] = {}
        for e in self.text_exts:
            todo: dict[str, str] = {}
            cached: set[str] = set()
            for rec in self.records:
                pid = rec.prompt_id
                if pid is None or not (rec.prompt or "").strip():
                    continue
                if pid in have[e.name]:
                    cached.add(pid)
                    continue
                if pid in todo and todo[pid] != rec.prompt:
                    raise ExtractError(
                        f"prompt id {pid!r} is used for two different texts ({todo[pid]!r} "
                        f"and {rec.prompt!r}); fix the prompt group column of the manifest"
                    )
                todo[pid] = rec.prompt
            self.report.prompts_skipped += len(cached)
            prompts[e.name] = todo
        if not self.prompt_exts:
            no_prompt = []
        return by_missing, prompts, no_prompt

    def _chunks(self, records: list[VideoRecord]) -> list[list[VideoRecord]]:
        n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        # A small run gets smaller chunks, at least TASKS_PER_WORKER per worker, so that
        # the last tasks do not leave workers idle (40 videos on 2 workers as chunks of
        # 16, 16, 8 would keep one worker busy 50 % longer than the other).
        size = max(1, min(self.chunk_size, -(-len(records) // (TASKS_PER_WORKER * n_workers))))
        return [records[i : i + size] for i in range(0, len(records), size)]

    # -- submission -----------------------------------------------------------------
    def _submit_video(self, chunk: list[VideoRecord], names: Sequence[str], attempt: int = 0):
        exts = [self.by_name[n] for n in names]
        name = shard_name("video", [r.video_id for r in chunk], [self.provenance[n] for n in names])
        return self.client.submit(
            run_video_chunk, chunk, exts, str(self.shard_dir / name), self.videos_in_flight,
            self.decode_threads,
            key=f"video-chunk-{name[len('shard-video-'):-3]}-{self.token}-{attempt}",
            retries=TASK_RETRIES, pure=False,
        ), ("video", chunk, exts, attempt)

    def _submit_prompts(self, part: dict[str, str], ext_name: str):
        name = shard_name("prompt", list(part), [self.provenance[ext_name]])
        ext = self.by_name[ext_name]
        return self.client.submit(
            run_prompt_chunk, part, ext, str(self.shard_dir / name),
            key=f"prompt-chunk-{name[len('shard-prompt-'):-3]}-{self.token}",
            retries=TASK_RETRIES, pure=False, priority=10,  # small: run them first
        ), ("prompt", list(part), [ext], 0)

    def _execute(self, video_plan, prompt_plan, no_prompt) -> None:
        from distributed import as_completed

        meta: dict[str, tuple[str, list, list[Extractor], int]] = {}
        futures = []

        def add(submitted):
            fut, info = submitted
            meta[fut.key] = info
            futures.append(fut)
            return fut

        n_videos = 0
        for names, recs in video_plan.items():
            for chunk in self._chunks(recs):
                # a chunk of one video is already "alone": one isolated try used
                add(self._submit_video(chunk, names, attempt=int(len(chunk) == 1)))
                n_videos += len(chunk)
        for ext_name, todo in prompt_plan.items():
            ids = sorted(todo)
            for i in range(0, len(ids), PROMPT_CHUNK_SIZE):
                add(self._submit_prompts({p: todo[p] for p in ids[i : i + PROMPT_CHUNK_SIZE]}, ext_name))

        # The videos table of every record (labels, prompt ids: it refreshes rows of
        # skipped videos too) and one failure row per video without a prompt and extractor
        # needing one (text features, prompt-scored frames); both land with the first merge.
        no_prompt_rows = [
            (r.video_id, e.name, f"the manifest gives no prompt for this video; {e.name} "
             "needs one (add a prompt column)")
            for e in self.prompt_exts for r in no_prompt
        ]
        self._pending.append(self._client_shard(videos=self.records, failures=no_prompt_rows))
        self.report.failures.extend(no_prompt_rows)
        self._failed.update(r[0] for r in no_prompt_rows)

        bar = _progress_bar(n_videos, self.progress)
        merge_every = self.merge_every or max(4, min(64, len(futures) // 8))
        pool = as_completed(futures)
        try:
            for fut in pool:
                kind, items, exts, attempt = meta.pop(fut.key)
                if fut.status == "finished":
                    result: ChunkResult = fut.result()
                    self._pending.append(Path(result.shard))
                    self.report.shards_written += 0 if result.reused else 1
                    rows = result.failures
                elif kind == "video" and (len(items) > 1 or attempt < ISOLATED_ATTEMPTS):
                    # Dask gave up on the task (workers kept dying while it ran, or it kept
                    # raising): one task per video, so only the culprit fails. A worker's
                    # death also counts against the tasks queued beside the culprit, so a
                    # single video gets another chance before it is declared failed.
                    names = [e.name for e in exts]
                    for rec in items:
                        pool.add(add(self._submit_video([rec], names, attempt + 1)))
                    fut.release()
                    continue
                else:
                    rows = self._task_failed(kind, items, exts, fut.exception())
                fut.release()
                self.report.failures.extend(rows)
                failed_ids = {r[0] for r in rows}
                if kind == "video":
                    ids = [r.video_id for r in items]
                    self._failed.update(i for i in ids if i in failed_ids)
                    self._ok.update(i for i in ids if i not in failed_ids)
                    bar.update(len(ids))
                    bar.set_postfix(failed=len(self._failed), refresh=False)
                else:
                    self._prompts_failed.update(failed_ids)
                    self._prompts_done.update(p for p in items if p not in failed_ids)
                if self._merge_due(merge_every):
                    self._merge(self._pending)
            self._merge(self._pending)
        except KeyboardInterrupt:
            # Keep what landed (merging is atomic); the next run resumes the rest.
            self.client.cancel(futures)
            self._merge(self._pending)
            raise
        finally:
            bar.close()

    def _task_failed(self, kind, items, exts, err) -> list[tuple[str, str, str]]:
        """Failure rows for a task Dask gave up on, written to a client-side shard."""
        text = (
            f"the task failed on every try ({_error_text(err)}); the worker process may "
            "have crashed on this input (see the worker logs)"
        )
        if kind == "video":  # a single video here: it crashed whatever ran on it
            rows = [(r.video_id, ALL_EXTRACTORS, text) for r in items]
        else:
            rows = [(pid, exts[0].name, text) for pid in items]
        self._pending.append(self._client_shard(failures=rows))
        return rows

    def _tally(self) -> None:
        """Per-video counts: a video counts once, failed if any of its rows failed."""
        for rec in self.records:
            vid = rec.video_id
            if vid in self._failed or rec.prompt_id in self._prompts_failed:
                self.report.failed += 1
            elif vid in self._ok or rec.prompt_id in self._prompts_done:
                self.report.succeeded += 1
            elif vid in self._recovered:
                self.report.resumed += 1
            else:
                self.report.skipped += 1
        self.report.prompts_encoded = len(self._prompts_done)

    # -- cache writes ---------------------------------------------------------------
    def _client_shard(self, videos=(), failures=()) -> Path:
        """A shard written by the client: the videos table, failure rows of tasks that
        never finished."""
        from aigvqa.cache.store import Failure, write_shard

        self._client_shards += 1
        path = self.shard_dir / f"shard-client-{self.token}-{self._client_shards}.h5"
        write_shard(path, [], [Failure(*f) for f in failures], [video_row(r) for r in videos])
        return path

    def _merge_due(self, merge_every: int) -> bool:
        # merge_shards rewrites the cache: merge in batches, and keep merging under ~10 %
        # of the run time however large the cache grows.
        since = time.monotonic() - self._last_merge
        enough = len(self._pending) >= merge_every or since > 120
        return enough and since >= 10 * self._merge_seconds

    def _merge(self, shards: list[Path]) -> None:
        from aigvqa.cache.store import merge_shards

        shards = [s for s in shards if s.exists()]
        self._pending = []
        if not shards:
            return
        started = time.monotonic()
        report = merge_shards(self.cache, shards, overwrite=self.overwrite, remove_shards=True)
        if report.groups_replaced:
            print(f"--overwrite: replaced group(s) {', '.join(report.groups_replaced)} made "
                  "with other settings", file=sys.stderr)
        self._last_merge = time.monotonic()
        self._merge_seconds = self._last_merge - started


def check_provenance(cache: Path, provenance: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, before any work, to add features of another config/weights to a group.

    ``merge_shards`` refuses the same mismatch; checking first means a run with a changed
    config fails in seconds instead of after computing a whole dataset."""
    if not cache.exists():
        return
    from aigvqa.cache.schema import RUNTIME_KEYS, describe_differences
    from aigvqa.cache.store import FeatureCache

    reader = FeatureCache(cache)
    present = set(reader.groups())
    problems = []
    for name, prov in provenance.items():
        if name in present:
            diffs = describe_differences(reader.group_info(name).provenance, prov,
                                         ignore=RUNTIME_KEYS)
            if diffs:
                problems.append(f"  {name} (cache vs this run): " + "; ".join(diffs))
    if problems:
        raise ProvenanceMismatchError(
            f"{cache}: features of a different configuration or weights are already in this "
            "cache, and mixing them in one group is refused:\n" + "\n".join(problems)
            + "\nUse another --cache file for the new settings, or run with the settings "
            "the cache was made with."
        )


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="video", desc="extract", disable=not enabled, dynamic_ncols=True)
