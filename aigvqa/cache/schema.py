"""On-disk layout of the aigvqa feature cache (format version 1) — the contract users rely on.

A cache file and a shard file share one layout: a shard is a small self-contained cache
written by one stage-one task, and ``merge_shards`` folds shards into the cache. Any
HDF5 tool can read it (``h5ls -r cache.h5``, ``h5py.File(path)["clip-frames/values"]``).

::

    /                         attrs: format_version (int), kind ("cache" | "shard"),
                              aigvqa_version
    /<extractor name>/        one group per extractor, named as registered ("clip-frames")
        values   [N, T_max, D]  float16 (default) or float32. Row i holds the sequence of
                                video (or prompt) ids[i]: time steps 0..lengths[i]-1 are
                                data, the rest is zero padding. T_max >= 1.
        lengths  [N] int32      valid time steps of each row
        ids      [N] utf-8      video ids (keyed_by "video") or prompt ids ("prompt")
        <extra>  [N, ...]       optional per-row extras with one fixed shape, e.g. clip-text
                                ``pooled`` [N, D] and ``mask`` [N, L]; floating extras are
                                stored in the group's dtype, bool / int ones as written
        attrs:   format_version, keyed_by ("video" | "prompt"),
                 provenance  JSON {"extractor", "config", "view", "weights", ...} exactly as
                             ``Extractor.provenance()`` returned it; ``weights`` is the
                             checkpoint's sha256 or "RANDOM-INIT"
                 weights     the weights identity again as a plain string (for h5dump)
                 versions    JSON list of the distinct package-version sets
                             ({"python", "numpy", "h5py", "torch", ...}) that wrote rows
    /videos/                  one row per video id merged so far (the manifest, so stage two
                              needs only the cache); all [M] utf-8:
        video_id, path, prompt, prompt_id, labels (JSON object name -> MOS),
        groups (JSON object, e.g. {"prompt": .., "generator": ..}); a missing prompt or
        prompt id is stored as ""
        source_order  optional [M] int64: the video's 0-based row in the file it was
                      imported from (import-features), -1 where unknown; VIDEVAL-style
                      splits index rows in that order
    /failures/                id, extractor, error: [K] utf-8; at most one row per
                              (id, extractor); extractor "*" means the whole video failed
                              (e.g. it could not be decoded)

Prompt-keyed groups (text features) hold one row per prompt id; readers expand them to
video rows through ``/videos`` (video_id -> prompt_id), so the 10 videos of one prompt
share one stored encoding.

Only ``provenance`` (except the speed-only keys in ``RUNTIME_KEYS``, e.g. batch size),
``keyed_by``, the dtype, D and the extras' shapes decide whether rows may join a group;
``versions`` is recorded, not compared (a numpy upgrade must not block a resume). The
group keeps the provenance of its first rows.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 1
RANDOM_INIT = "RANDOM-INIT"
"""Equal to ``aigvqa.extractors.base.RANDOM_INIT``; repeated because cache must not import
extractors (which pulls in torch)."""
ALL_EXTRACTORS = "*"
"""Failure ``extractor`` value for a video that failed as a whole (decode error)."""

VIDEOS = "videos"
FAILURES = "failures"
RESERVED_GROUPS = frozenset({VIDEOS, FAILURES})
CORE_DATASETS = ("values", "lengths", "ids")
VIDEO_COLUMNS = ("video_id", "path", "prompt", "prompt_id", "labels", "groups")
SOURCE_ORDER = "source_order"
"""Optional int64 column of ``/videos`` (-1: unknown); a row dict has the key only when known."""
FAILURE_COLUMNS = ("id", "extractor", "error")
KEYED_BY = ("video", "prompt")
RUNTIME_KEYS = ("config.batch_size", "config.channels_last")
"""Provenance keys that change how fast features are computed, not their values: a resume
with another batch size may join the group. ``config.device`` is compared: CUDA runs
use autocast, so their numbers differ from CPU ones beyond noise."""
DTYPES = ("float16", "float32")

STR = h5py.string_dtype("utf-8")
CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: big enough for fast sequential reads, small for appends
CHUNK_CACHE_BYTES = 64 << 20  # keeps partially written chunks in memory while appending


@dataclass
class GroupData:
    """Features of one extractor for some videos (or prompts), as handed to ``write_shard``.

    ``values[i]`` is a [T_i, D] array (ragged across rows; a [D] vector counts as T_i = 1);
    ``extras[name][i]`` a fixed-shape array per row; ``provenance`` is
    ``Extractor.provenance()``.
    """

    name: str
    keyed_by: str = "video"
    ids: list[str] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """One video (or prompt) an extractor could not process; ``extractor`` "*" = all."""

    id: str
    extractor: str
    error: str


def as_failure(item: Failure | Mapping | tuple) -> Failure:
    if isinstance(item, Failure):
        return item
    if isinstance(item, Mapping):
        return Failure(str(item["id"]), str(item["extractor"]), str(item["error"]))
    id_, extractor, error = item
    return Failure(str(id_), str(extractor), str(error))


def video_row(video: Any) -> dict[str, Any]:
    """A videos-table row from a dict or a ``VideoRecord``-like object (duck-typed)."""
    get = video.get if isinstance(video, Mapping) else (lambda k, d=None: getattr(video, k, d))
    video_id = get("video_id")
    if not video_id:
        raise ValueError(f"video row without a video_id: {video!r}")
    labels = {str(k): float(v) for k, v in dict(get("labels") or {}).items()}
    groups = {str(k): str(v) for k, v in dict(get("groups") or {}).items()}
    prompt_id = get("prompt_id") or groups.get("prompt") or ""
    row = {
        "video_id": str(video_id),
        "path": str(get("path") or ""),
        "prompt": str(get("prompt") or ""),
        "prompt_id": str(prompt_id),
        "labels": labels,
        "groups": groups,
    }
    order = get(SOURCE_ORDER)
    if order is not None and int(order) >= 0:
        row[SOURCE_ORDER] = int(order)
    return row


# -- provenance -------------------------------------------------------------------------
def normalize(obj: Any) -> Any:
    """JSON round trip: tuples become lists, Paths strings, keys sorted — comparable."""
    return json.loads(dumps(obj))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"config": {"arch": "x"}} -> {"config.arch": "x"}; lists stay whole values."""
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "(root)": obj}


_ABSENT = object()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else repr(value)


def describe_differences(existing: Mapping, incoming: Mapping, ignore: tuple[str, ...] = ()) -> list[str]:
    """``["config.arch: 'ViT-B-32' vs 'ViT-L-14'", ...]`` for every flattened key that differs.

    ``ignore``: flattened keys (and everything under them) left out of the comparison."""
    a, b = flatten(normalize(existing)), flatten(normalize(incoming))
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in ignore):
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if not _same(va, vb):
            lines.append(f"{key}: {_show(va)} vs {_show(vb)}")
    return lines


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def weights_identity(provenance: Mapping) -> str | None:
    value = provenance.get("weights")
    return None if value is None else str(value)


def is_random_init(provenance: Mapping) -> bool:
    """True when any part of the provenance says RANDOM-INIT (nested models included)."""
    return any(
        isinstance(v, str) and v.strip().upper() == RANDOM_INIT
        for v in flatten(normalize(provenance)).values()
    )


FEATURE_PACKAGES = ("aigvqa", "numpy", "h5py", "torch", "torchvision", "open_clip_torch",
                    "transformers", "timm", "pytorchvideo", "av")
"""Packages that shape feature values: what a cache records."""
MODEL_PACKAGES = ("aigvqa", "numpy", "scikit-learn", "torch", "lightgbm", "skops", "safetensors")
"""Packages that shape a fitted head and its files: what a model bundle records."""


def package_versions(dists: tuple[str, ...] = FEATURE_PACKAGES) -> dict[str, str]:
    """Python's version and those of the installed ``dists``, read without importing them."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def chunk_rows(row_bytes: int, cap: int = 1024) -> int:
    return int(max(1, min(cap, CHUNK_BYTES // max(1, row_bytes))))


def read_str(ds: h5py.Dataset) -> list[str]:
    return [str(s) for s in ds.asstr()[()]] if ds.shape[0] else []
