"""On-disk layout of the aigvqa feature cache (format version 2) — the contract users rely on.

A cache file and a shard file share one layout: a shard is a small self-contained cache
written by one stage-one task, and ``merge_shards`` folds shards into the cache. Any
HDF5 tool can read it (``h5ls -r cache.h5``, ``h5py.File(path)["clip-frames/values"]``,
``xarray.open_dataset(path, group="clip-frames", engine="h5netcdf")``).

::

    /                         attrs: format_version (int), kind ("cache" | "shard"),
                              aigvqa_version, row_order, join, checksums (plain-text notes
                              for outside readers: see ROW_ORDER, JOIN, CHECKSUMS below)
    /<extractor name>/        one group per extractor, named as registered ("clip-frames")
        values   [N, T_max, D]  float16 (default) or float32. Row i holds the sequence of
                                video (or prompt) ids[i]: time steps 0..lengths[i]-1 are
                                data, the rest is zero padding. T_max >= 1.
        lengths  [N] int32      valid time steps of each row, 1 <= lengths[i] <= T_max
        ids      [N] utf-8      video ids (keyed_by "video") or prompt ids ("prompt"),
                                unique, sorted (Python's str order): rows are in this order
        step     [T_max] int32  0, 1, ...: dimension scale of values' axis 1
        feature  [D]            dimension scale of values' axis 2: the column names (utf-8)
                                when the extractor declares them, else 0..D-1 (int32)
        <extra>  [N, ...]       optional per-row extras with one fixed shape, e.g. clip-text
                                ``pooled`` [N, D] and ``mask`` [N, L]; floating extras are
                                stored in the group's dtype, bool / int ones as written.
                                Their axes after the first have scales ``<extra>_dim1``, ...
        attrs:   format_version, keyed_by ("video" | "prompt"),
                 provenance  JSON {"extractor", "config", "view", "weights", ...} exactly as
                             ``Extractor.provenance()`` returned it; ``weights`` is the
                             checkpoint's sha256 or "RANDOM-INIT"
                 weights     the weights identity again as a plain string (for h5dump)
                 versions    JSON list of the distinct package-version sets
                             ({"python", "numpy", "h5py", "torch", ...}) that wrote rows
                 columns     (when the extractor names its D features) the names, as in
                             ``feature``
    /videos/                  one row per video id merged so far (the manifest, so stage two
                              needs only the cache), sorted by video_id; all [M]:
        video_id, path, prompt, prompt_id   utf-8 ("" where a video has no prompt)
        label.<name>    float64 per label (MOS), NaN where the video lacks that label
        group.<name>    utf-8 per grouping key ("prompt", "generator", ...), "" where absent
        <field>         any other per-video field a writer added (e.g. ``source_order``, the
                        row of the video in the metadata file it was imported with): int64,
                        float64 or utf-8 (attr ``kind``: "int" | "float" | "bool" | "str";
                        an int column with missing rows is stored as float64 with NaN).
                        ``file_identity``: "<size>:<mtime_ns>" of the video file when
                        extract decoded it ("" in rows of older caches and imports)
    /failures/                id, extractor, error: [K] utf-8; at most one row per
                              (id, extractor), sorted by (id, extractor); extractor "*" means
                              the whole video failed (e.g. it could not be decoded)

Every axis has an HDF5 dimension scale (``ids``, ``step``, ``feature``; ``video_id`` in
/videos; ``failure`` = 0..K-1 in /failures), so netCDF readers (xarray) see named
dimensions and coordinates.

Integrity (format 2): every numeric dataset is chunked with HDF5's Fletcher-32 checksum
filter, which HDF5 verifies on every read; every utf-8 dataset (HDF5 cannot filter
variable-length data) carries a ``sha256`` attribute of its strings, verified by the
reader; files are written with HDF5 1.10+ structures (``libver`` "v110"), whose metadata
(object headers, chunk indexes, superblock) is checksummed too. A damaged byte therefore
reads as an error (``CacheError`` naming the file and group), never as another value.
Format 1 caches (aigvqa before the checksums: rows in landing order, labels and groups as
per-row JSON strings ``labels`` / ``groups``) still read, unverified; the next merge into
one rewrites it in format 2.

Prompt-keyed groups (text features) hold one row per prompt id; readers expand them to
video rows through ``/videos`` (video_id -> prompt_id), so the 10 videos of one prompt
share one stored encoding.

Only ``provenance`` (except the speed-only keys in ``RUNTIME_KEYS``, e.g. batch size, and
the information-only keys in ``INFORMATION_KEYS``, e.g. the weights' path), ``keyed_by``,
the dtype, D and the extras' shapes decide whether rows may join a group; ``versions``
and ``columns`` are recorded, not compared (a numpy upgrade must not block a resume). The
group keeps the provenance of its first rows.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import numbers
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

FORMAT_VERSION = 2
"""2: checksums (Fletcher-32 / sha256), rows sorted by id, typed /videos columns,
dimension scales. 1: the first layout (still read, unverified)."""
READABLE_VERSIONS = (1, 2)
LIBVER = ("v110", "latest")
"""HDF5 file-format bounds for writing: 1.10 structures have checksummed metadata."""
RANDOM_INIT = "RANDOM-INIT"
"""Equal to ``aigvqa.extractors.base.RANDOM_INIT``; repeated because cache must not import
extractors (which pulls in torch)."""
ALL_EXTRACTORS = "*"
"""Failure ``extractor`` value for a video that failed as a whole (decode error)."""

VIDEOS = "videos"
FAILURES = "failures"
RESERVED_GROUPS = frozenset({VIDEOS, FAILURES})
CORE_DATASETS = ("values", "lengths", "ids")
STEP, FEATURE = "step", "feature"  # dimension scales of values' axes 1 and 2
SCALE_DATASETS = (STEP, FEATURE)
RESERVED_DATASETS = frozenset(CORE_DATASETS + SCALE_DATASETS)
VIDEO_CORE = ("video_id", "path", "prompt", "prompt_id")
LABEL_PREFIX, GROUP_PREFIX = "label.", "group."
VIDEO_COLUMNS = (*VIDEO_CORE, "labels", "groups")  # format 1's /videos datasets
FAILURE_COLUMNS = ("id", "extractor", "error")
FAILURE_DIM = "failure"
KEYED_BY = ("video", "prompt")
RUNTIME_KEYS = ("config.batch_size", "config.channels_last")
"""Provenance keys that change how fast features are computed, not their values: a resume
with another batch size may join the group. ``config.device`` is compared: CUDA runs
use autocast, so their numbers differ from CPU ones beyond noise."""
INFORMATION_KEYS = ("config.weights",)
"""Provenance keys that say where something was read from, not what it is; kept in the
file, never compared. ``config.weights`` is the checkpoint's *path* (another mount,
``--weights`` instead of ``$AIGVQA_WEIGHTS``): the checkpoint's identity is the ``weights``
sha256, which is compared."""
SOURCE_KEYS = ("config.file", "sha256")
"""Keys of an imported group (``import-features``) naming the data file its rows came from.
One group never mixes rows of two files (a merge compares them), but two datasets'
features are comparable whatever file each came from (``same_source=False``)."""
IMPORTED = "imported"
"""``provenance["extractor"]`` of imported groups; their ``weights`` string only repeats the
file name and sha256 (``"imported from FILE sha256 HEX"``), so it is a source key too."""
DTYPES = ("float16", "float32")

ROW_ORDER = (
    "Rows of every feature group are sorted by its ids (Python str order, i.e. Unicode code "
    "points); /videos is sorted by video_id; /failures by (id, extractor)."
)
JOIN = (
    "Join a feature group to /videos on ids == video_id (keyed_by 'video') or ids == "
    "prompt_id (keyed_by 'prompt': one row per prompt, shared by its videos); never by row "
    "position across groups (groups hold different id sets)."
)
CHECKSUMS = (
    "Numeric datasets carry HDF5 Fletcher-32 checksums (verified by HDF5 on read); utf-8 "
    "datasets carry a 'sha256' attribute over their strings (each encoded as utf-8 and "
    "followed by one NUL byte)."
)

STR = h5py.string_dtype("utf-8")
CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: big enough for fast sequential reads
CHUNK_CACHE_BYTES = 64 << 20  # keeps partially written chunks in memory while filling


@dataclass
class GroupData:
    """Features of one extractor for some videos (or prompts), as handed to ``write_shard``.

    ``values[i]`` is a [T_i, D] array (ragged across rows, T_i >= 1; a [D] vector counts as
    T_i = 1); ``extras[name][i]`` a fixed-shape array per row; ``provenance`` is
    ``Extractor.provenance()``; ``columns`` the names of the D features when the
    extractor knows them (``Extractor.feature_names()``), stored as information.
    """

    name: str
    keyed_by: str = "video"
    ids: list[str] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    columns: list[str] | None = None


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


# -- /videos rows ------------------------------------------------------------------------
_ROW_KEYS = frozenset((*VIDEO_CORE, "labels", "groups"))


def _check_name(kind: str, name: str, video_id: str) -> str:
    name = str(name)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(
            f"video {video_id!r}: invalid {kind} name {name!r} (not empty, no '/', no leading '.')"
        )
    return name


def _field_value(name: str, value: Any, video_id: str) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    raise ValueError(
        f"video {video_id!r}: field {name!r} = {value!r} is not a number or a string; the videos "
        "table stores scalar fields only"
    )


def video_row(video: Any) -> dict[str, Any]:
    """A videos-table row from a dict or a ``VideoRecord``-like object (duck-typed).

    Keys: video_id, path, prompt, prompt_id (str), labels {name: float}, groups {name: str},
    and, from a dict, every other key whose value is a number or a string (e.g.
    ``source_order``): stored as a typed column and read back under the same key.
    """
    get = video.get if isinstance(video, Mapping) else (lambda k, d=None: getattr(video, k, d))
    video_id = get("video_id")
    if not video_id:
        raise ValueError(f"video row without a video_id: {video!r}")
    video_id = str(video_id)
    labels = {
        _check_name("label", k, video_id): float(v) for k, v in dict(get("labels") or {}).items()
    }
    groups = {
        _check_name("group", k, video_id): str(v) for k, v in dict(get("groups") or {}).items()
    }
    prompt_id = get("prompt_id") or groups.get("prompt") or ""
    row = {
        "video_id": video_id,
        "path": str(get("path") or ""),
        "prompt": str(get("prompt") or ""),
        "prompt_id": str(prompt_id),
        "labels": labels,
        "groups": groups,
    }
    if isinstance(video, Mapping):
        for key, value in video.items():
            if key in _ROW_KEYS or value is None:
                continue
            name = _check_name("field", key, video_id)
            if name.startswith((LABEL_PREFIX, GROUP_PREFIX)):
                raise ValueError(
                    f"video {video_id!r}: field name {name!r} is reserved (labels / groups columns)"
                )
            row[name] = _field_value(name, value, video_id)
    return row


def field_kind(name: str, values: Sequence[Any]) -> str:
    """ "bool" | "int" | "float" | "str" of a field's present values (mixing numbers and
    strings is refused; ints mixed with floats are floats)."""
    kinds = {
        (
            "str"
            if isinstance(v, str)
            else "bool"
            if isinstance(v, bool)
            else "int"
            if isinstance(v, int)
            else "float"
        )
        for v in values
    }
    if "str" in kinds and len(kinds) > 1:
        raise ValueError(f"videos field {name!r} mixes strings and numbers across rows")
    if len(kinds) == 1:
        return kinds.pop()
    return "float" if "float" in kinds else "int"


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


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in prefixes)


def describe_differences(
    existing: Mapping, incoming: Mapping, ignore: tuple[str, ...] = (), *, same_source: bool = True
) -> list[str]:
    """``["config.arch: 'ViT-B-32' vs 'ViT-L-14'", ...]`` for every flattened key that differs.

    ``ignore``: flattened keys (and everything under them) left out of the comparison.
    ``INFORMATION_KEYS`` (the weights' path) are never compared. ``same_source=False``
    compares features of two different datasets (cross-dataset evaluation, a model
    scoring other videos): the keys naming the data file rows were imported from
    (``SOURCE_KEYS`` and an imported group's ``weights`` string) are left out too."""
    a, b = flatten(normalize(existing)), flatten(normalize(incoming))
    skipped = tuple(ignore) + INFORMATION_KEYS
    if not same_source:
        skipped += SOURCE_KEYS
        if IMPORTED in (a.get("extractor"), b.get("extractor")):
            skipped += ("weights",)
    lines = []
    for key in sorted(set(a) | set(b)):
        if _under(key, skipped):
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


FEATURE_PACKAGES = (
    "aigvqa",
    "numpy",
    "h5py",
    "torch",
    "torchvision",
    "open_clip_torch",
    "transformers",
    "timm",
    "pytorchvideo",
    "av",
)
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


# -- datasets ---------------------------------------------------------------------------
def chunk_rows(row_bytes: int, cap: int = 1024) -> int:
    return int(max(1, min(cap, CHUNK_BYTES // max(1, row_bytes))))


def strings_digest(values: Sequence[str]) -> str:
    """sha256 of the strings, each utf-8 encoded and followed by a NUL (HDF5 strings hold none)."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(value.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


class DigestMismatch(ValueError):
    """Strings or attributes do not match their stored sha256 (a damaged file)."""


ATTRS_DIGEST = "attrs_sha256"
HDF5_ATTRS = frozenset({"CLASS", "NAME", "REFERENCE_LIST", "DIMENSION_LIST", "DIMENSION_LABELS"})
"""Attributes HDF5's dimension-scale API writes (and rewrites as scales are attached)."""


def _plain(value: Any) -> Any:
    """An attribute value as JSON-able Python (bytes decoded, numpy scalars / arrays unwrapped)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, np.generic):
        return value.item()
    return value


def attrs_digest(attrs: h5py.AttributeManager) -> str:
    """sha256 of an object's own attributes (names and values), HDF5's scale bookkeeping
    and the digest itself left out."""
    digest = hashlib.sha256()
    for name in sorted(attrs.keys()):
        if name == ATTRS_DIGEST or name in HDF5_ATTRS:
            continue
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(
            json.dumps(_plain(attrs[name]), sort_keys=True, default=str).encode("utf-8") + b"\0"
        )
    return digest.hexdigest()


def seal_attrs(obj: h5py.HLObject) -> None:
    """Store the digest of ``obj``'s attributes as a fixed-length string, which HDF5 keeps in
    the object header (checksummed), unlike variable-length strings (global heap, not)."""
    obj.attrs[ATTRS_DIGEST] = np.bytes_(attrs_digest(obj.attrs).encode("ascii"))


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """An object's attributes as plain Python, checked against their sealed digest (format 2)."""
    attrs = obj.attrs
    sealed = attrs.get(ATTRS_DIGEST)
    if sealed is not None and _plain(sealed) != attrs_digest(attrs):
        raise DigestMismatch(f"the attributes of {obj.name} do not match their sha256 checksum")
    return {k: _plain(attrs[k]) for k in attrs.keys() if k != ATTRS_DIGEST and k not in HDF5_ATTRS}


def read_str(ds: h5py.Dataset) -> list[str]:
    """All strings of a utf-8 dataset, checked against its ``sha256`` attribute (format 2)."""
    values = [str(s) for s in ds.asstr()[()]] if ds.shape[0] else []
    expected = ds.attrs.get("sha256")
    if expected is not None and strings_digest(values) != str(expected):
        raise DigestMismatch(f"dataset {ds.name}: its strings do not match their sha256 checksum")
    return values


def is_scale(ds: h5py.Dataset) -> bool:
    """Whether a dataset is a dimension scale (``step``, ``feature``, ``<extra>_dim1``, ...)."""
    cls = ds.attrs.get("CLASS")
    if isinstance(cls, bytes):
        cls = cls.decode("ascii", "replace")
    return cls == "DIMENSION_SCALE"
