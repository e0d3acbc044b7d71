"""The tasks a Dask worker runs: describe extractors, a chunk of videos, a chunk of prompts.

A chunk task, on a model worker process:

  1. takes the extractors from a per-process cache (``_LOADED``): models are built the
     first time a process sees an extractor config and reused by every later task, so a
     worker loads each backbone once, not once per task;
  2. computes the features of its videos (``chunk.compute_chunk``): each video is decoded
     once -- by the worker's decode processes (``decode_pool``), by a decoder thread, or in
     turn with the forward passes -- and every extractor batches items across videos;
  3. writes ONE shard file ``<cache>.shards/shard-<hash>.h5`` atomically
     (``cache.store.write_shard``: temp name + rename). The name is a hash of the chunk's
     ids and the extractors' provenance, so a task Dask re-runs after a worker died
     finds its shard and returns without recomputing;
  4. returns ids and failures (a small summary, never the features).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aigvqa.extractors.base import Extractor, clear_shared_models
from aigvqa.pipeline.extract.failures import error_text
from aigvqa.pipeline.extract.options import DecodeSettings
from aigvqa.pipeline.extract.provenance import extractor_key
from aigvqa.pipeline.records import VideoRecord, identified_row

_LOADED: dict[str, Extractor] = {}
"""Per-process model cache: extractor_key -> loaded extractor. Lives in each worker
process for its whole life, so models load once per worker, not once per task."""
_LOADING = threading.Lock()  # two task threads asking for one model load it once


def loaded(extractor: Extractor) -> Extractor:
    """The loaded twin of ``extractor`` in this process (loaded on first use).

    The device is the extractor's own ``device`` option, so the provenance the cache
    stores says where features were computed (``gpus=True`` sets it to "cuda"; under
    dask-cuda each worker sees its one GPU as cuda:0)."""
    from aigvqa.extractors.weights import random_init_said_elsewhere

    key = extractor_key(extractor)
    with _LOADING:
        model = _LOADED.get(key)
        if model is None:
            model = extractor
            # the run said RANDOM-INIT once per extractor on the client (api.extract)
            with random_init_said_elsewhere():
                model.load(str(extractor.config().get("device", "cpu") or "cpu"))
            _LOADED[key] = model
    return model


def release_models() -> int:
    """Worker function (``client.run``): drop the models this process loaded for stage-one
    runs and stop its decode processes, so a run on a shared cluster leaves no memory (GPU
    memory included) behind. Returns how many models were dropped."""
    import gc
    import sys

    with _LOADING:
        dropped = len(_LOADED)
        _LOADED.clear()
    clear_shared_models()  # every family's per-process model cache
    decode_pool = sys.modules.get("aigvqa.pipeline.extract.decode_pool")
    if decode_pool is not None:
        decode_pool.close_idle_pools()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return dropped


def task_threads() -> int:
    """Task threads of the Dask worker running the caller (1 outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


@dataclass
class WorkerProblem:
    """A problem the user must fix, found while a worker loaded the models (weights
    missing where the worker looks, a checkpoint that does not fit, a backbone's package
    not installed there), sent back as a value: the client raises it as one clean error.
    (A task that raises is logged by Dask as "Compute Failed" with its traceback, on the
    worker and, for a LocalCluster, in the user's terminal.)"""

    who: str
    error: Exception


def who_am_i() -> str:
    """This process as a message names it: "Dask worker <address> on host <name>"."""
    import socket

    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address} on host {socket.gethostname()}"
    except (ImportError, ValueError):
        return f"process {os.getpid()} on host {socket.gethostname()}"


def describe_extractors(extractors: list[Extractor]) -> list[dict[str, Any]] | WorkerProblem:
    """Worker task: load every extractor (kept for later tasks) and return its provenance.

    Provenance needs the weights' identity, known only once weights are resolved, which
    is why this runs on a worker and not on the client. Weights are looked for in the
    worker's own environment and file system, and an error says so."""
    from aigvqa.errors import AigvqaError
    from aigvqa.extractors.weights import searching_on
    from aigvqa.pipeline.extract.options import ExtractError

    who = who_am_i()
    try:
        with searching_on(who):
            return [loaded(e).provenance() for e in extractors]
    except AigvqaError as err:
        return WorkerProblem(who, err)
    except ImportError as err:
        return WorkerProblem(
            who,
            ExtractError(
                f"{who} cannot load the extractors: {err}. Install aigvqa with the extras its "
                "extractors need in the environment the workers start from"
            ),
        )


def host_cores() -> tuple[str, int]:
    """Worker task: (host name, usable cores) of the process that runs it."""
    import socket

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return socket.gethostname(), int(cores or 1)


@dataclass
class ChunkResult:
    """What a task returns to the client: a summary, never the features."""

    shard: str | None
    kind: str  # "video" or "prompt"
    done: dict[str, list[str]]  # extractor name -> ids with features in the shard
    failures: list[tuple[str, str, str]]  # (id, extractor, error text)
    reused: bool = False  # the shard already existed (a re-run task): nothing recomputed


def run_video_chunk(
    records: list[VideoRecord],
    extractors: list[Extractor],
    shard_path: str,
    settings: DecodeSettings | None = None,
    **changes: Any,
) -> ChunkResult:
    """Worker task: features of ``records`` for ``extractors`` into one shard file.

    ``settings`` (``DecodeSettings``; keyword ``changes`` replace its fields) say who
    decodes: ``decode_workers`` processes beside this worker (their pool lives as long as
    the worker process; a worker with several task threads gives each thread's task
    ``decode_workers / threads`` of them, at least one, so that one chunk's last forward
    passes overlap the next chunk's decoding), else a decoder thread
    ``videos_in_flight - 1`` videos ahead of the forward passes, else decoding and
    computing in turn.
    """
    settings = replace(settings or DecodeSettings(), **changes).check()
    if os.path.exists(shard_path):
        return _result_from_shard(shard_path, "video")
    from aigvqa.cache.store import Failure, GroupData, write_shard
    from aigvqa.pipeline.extract.chunk import compute_chunk

    models = [loaded(e) for e in extractors]
    rows = [identified_row(r) for r in records]  # the files' identity before decoding them
    if settings.decode_workers:
        from aigvqa.pipeline.extract.decode_pool import checkout

        share = max(1, settings.decode_workers // task_threads())
        with checkout(replace(settings, decode_workers=share)) as pool:
            results = compute_chunk(records, models, settings, pool)
    else:
        results = compute_chunk(records, models, settings)

    kept: dict[str, tuple[list[str], list[Any]]] = {m.name: ([], []) for m in models}
    failures: list[tuple[str, str, str]] = []
    for record, (outputs, errors) in zip(records, results):
        for name, array in outputs.items():
            kept[name][0].append(record.video_id)
            kept[name][1].append(array)
        failures.extend((record.video_id, name, text) for name, text in errors.items())
    groups = [
        GroupData(
            m.name,
            keyed_by="video",
            ids=kept[m.name][0],
            values=kept[m.name][1],
            provenance=m.provenance(),
            columns=m.feature_names(),
        )
        for m in models
    ]
    write_shard(
        Path(shard_path),
        groups,
        [Failure(*f) for f in failures],
        rows,
        dtype={m.name: m.cache_dtype for m in models},
    )
    return ChunkResult(shard_path, "video", {m.name: kept[m.name][0] for m in models}, failures)


def run_prompt_chunk(prompts: dict[str, str], extractor: Extractor, shard_path: str) -> ChunkResult:
    """Worker task: encode distinct prompts (prompt id -> text) into one prompt-keyed shard."""
    if os.path.exists(shard_path):
        return _result_from_shard(shard_path, "prompt")
    from aigvqa.cache.store import Failure, write_shard
    from aigvqa.extractors.runner import encode_prompts

    model = loaded(extractor)
    ids = list(prompts)
    failures: list[tuple[str, str, str]] = []
    try:
        encoded = encode_prompts(model, [prompts[i] for i in ids])
    except Exception as err:  # noqa: BLE001 - a prompt batch failing is one row per prompt
        failures = [(pid, model.name, error_text(err)) for pid in ids]
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
    return GroupData(
        model.name,
        keyed_by="prompt",
        ids=ids,
        values=values,
        extras=extras,
        provenance=model.provenance(),
    )


def _result_from_shard(shard_path: str, kind: str) -> ChunkResult:
    from aigvqa.cache.store import FeatureCache

    shard = FeatureCache(shard_path)
    done = {g: list(shard.ids(g)) for g in shard.groups()}
    failures = [(f.id, f.extractor, f.error) for f in shard.failures()]
    return ChunkResult(shard_path, kind, done, failures, reused=True)
