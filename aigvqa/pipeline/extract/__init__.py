"""Stage one on Dask: decode every video once, run every requested extractor, cache features.

The package, by side of the wire:

- the API and its values: ``api`` (``extract``, ``resolve_extractors``,
  ``extractor_options``), ``options`` (``ExtractOptions``, ``DecodeSettings``),
  ``cluster`` (``ClusterSpec``, ``open_cluster``: which Dask cluster);
- the client: ``run`` (plan, submit, merge shards as they land), ``report``
  (``ExtractReport``), ``provenance`` (extractor / shard identity, the checks before any
  work);
- a model worker: ``worker`` (the Dask tasks, the per-process model cache), ``chunk``
  (items of several videos batched per extractor, failures per video), ``sources``
  (decoders; decoding in the task thread or a decoder thread), ``decode_pool`` +
  ``decode_process`` (decode processes beside the worker, items in shared memory),
  ``failures`` (error rows, truncated files).

See ``api.extract`` for the behaviour and ``docs/ARCHITECTURE.md`` for the contracts.
"""

from aigvqa.cache.schema import ALL_EXTRACTORS
from aigvqa.pipeline.extract.api import (
    default_decode_threads,
    default_decode_workers,
    extract,
    extractor_options,
    resolve_extractors,
)
from aigvqa.pipeline.extract.options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DECODE_TIMEOUT,
    PREFETCH_BYTES,
    DecodeSettings,
    ExtractError,
    ExtractOptions,
)
from aigvqa.pipeline.extract.provenance import (
    check_provenance,
    extractor_key,
    shard_dir_for,
    shard_name,
)
from aigvqa.pipeline.extract.report import ExtractReport

__all__ = [
    "ALL_EXTRACTORS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DECODE_TIMEOUT",
    "PREFETCH_BYTES",
    "DecodeSettings",
    "ExtractError",
    "ExtractOptions",
    "ExtractReport",
    "check_provenance",
    "default_decode_threads",
    "default_decode_workers",
    "extract",
    "extractor_key",
    "extractor_options",
    "resolve_extractors",
    "run_prompt_chunk",
    "run_video_chunk",
    "shard_dir_for",
    "shard_name",
]


def __getattr__(name: str):
    # The worker-side entry points, imported on first use (they pull in h5py writers).
    if name in ("run_video_chunk", "run_prompt_chunk", "ChunkResult", "describe_extractors"):
        from aigvqa.pipeline.extract import worker

        return getattr(worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
