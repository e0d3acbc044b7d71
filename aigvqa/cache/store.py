"""Writing the feature cache: atomic shards (here) and a batched, atomic merge.

The layout is documented in ``aigvqa.cache.schema``; reading is ``aigvqa.cache.reader``
(re-exported here so ``aigvqa.cache.store`` is the one import of the contract). Writing
is split by concern: this module validates and writes one shard (``write_shard``);
``aigvqa.cache.merge`` merges shards into the cache (``merge_shards``, ``MergeReport``,
re-exported here); ``aigvqa.cache.layout`` creates the HDF5 objects of the layout with
their checksums; ``aigvqa.cache.files`` holds the temp files, the rename and the lock.

Atomicity. HDF5 files are not crash-safe when modified in place: a process killed
while appending can leave a file whose metadata no longer opens. So nothing here ever
modifies a finished file. ``write_shard`` writes ``.<name>.<pid>-<rand>.partial`` in the
target directory, fsyncs it and ``os.replace``-s it onto the final name; ``merge_shards``
builds the complete new cache in such a temporary file and replaces the old cache with
it in one rename. A kill at any moment therefore leaves either the previous cache or the
new one under the cache's name, plus at worst a stale ``.partial`` file, which the next
merge deletes (it holds the writers' lock, so no live writer owns one).

Merge cost, integrity checks, resume and failure rows: see ``aigvqa.cache.merge``;
concurrency (the writers' ``flock``, lock-free readers): see ``aigvqa.cache.files``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aigvqa.cache.files import _temp_path, publish
from aigvqa.cache.layout import _create_group, _new_file, _write_failures, _write_videos
from aigvqa.cache.merge import MergeReport, merge_shards
from aigvqa.cache.reader import CacheData, FeatureCache, GroupInfo
from aigvqa.cache.schema import (
    DTYPES,
    KEYED_BY,
    RESERVED_DATASETS,
    RESERVED_GROUPS,
    VIDEO_CORE,
    Failure,
    GroupData,
    as_failure,
    describe_differences,
    field_kind,
    normalize,
    package_versions,
    video_row,
)
from aigvqa.errors import CacheError

__all__ = [
    "CacheData",
    "FeatureCache",
    "Failure",
    "GroupData",
    "GroupInfo",
    "MergeReport",
    "describe_differences",
    "merge_shards",
    "write_shard",
]

FLOAT16_MAX = float(np.finfo(np.float16).max)


# -- shard writer ------------------------------------------------------------------------
@dataclass
class _Prepared:
    name: str
    keyed_by: str
    ids: list[str]  # sorted
    values: np.ndarray  # [n, T_max, D] in the stored dtype, rows in ids order
    lengths: np.ndarray  # [n] int32
    extras: dict[str, np.ndarray]
    provenance: dict[str, Any]
    columns: list[str] | None


def _check_float16(name: str, what: str, a: np.ndarray, path: Path) -> None:
    finite = a[np.isfinite(a)]
    if finite.size and float(np.abs(finite).max()) > FLOAT16_MAX:
        raise CacheError(
            f"{path}: {what} of group {name!r} reach {float(np.abs(finite).max()):.4g}, beyond "
            f"float16's range (+-{FLOAT16_MAX:g}), and would be stored as inf; store this group "
            f"as float32 (write_shard(..., dtype={{{name!r}: 'float32'}}); for an extractor, "
            f"set its class attribute cache_dtype = 'float32')"
        )


def _check_columns(name: str, columns: Sequence[str] | None, dim: int) -> list[str] | None:
    if columns is None:
        return None
    columns = [str(c) for c in columns]
    if len(columns) != dim or len(set(columns)) != len(columns) or not all(columns):
        raise ValueError(
            f"group {name!r}: columns must be {dim} distinct non-empty names (one per feature), "
            f"got {len(columns)}: {columns[:5]}"
        )
    return columns


def _prepare(group: GroupData, dtype: str, path: Path) -> _Prepared:
    name = group.name
    if not name or "/" in name or name.startswith(".") or name in RESERVED_GROUPS:
        raise ValueError(
            f"invalid group name {name!r} (no '/', no leading '.', "
            f"not one of {sorted(RESERVED_GROUPS)})"
        )
    if group.keyed_by not in KEYED_BY:
        raise ValueError(
            f"group {name!r}: keyed_by must be one of {KEYED_BY}, got {group.keyed_by!r}"
        )
    if dtype not in DTYPES:
        raise ValueError(f"group {name!r}: dtype must be one of {DTYPES}, got {dtype!r}")
    ids = [str(i) for i in group.ids]
    if len(ids) != len(group.values):
        raise ValueError(f"group {name!r}: {len(ids)} ids but {len(group.values)} value arrays")
    if any(not i for i in ids):
        raise ValueError(f"group {name!r}: empty id")
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"group {name!r}: duplicate ids {dupes[:10]}")
    order = sorted(range(len(ids)), key=ids.__getitem__)  # rows sorted by id (schema.ROW_ORDER)
    seqs = []
    for i in order:
        a = np.asarray(group.values[i])
        if a.ndim == 1:  # one vector per video: a sequence of length 1
            a = a[None, :]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise ValueError(
                f"group {name!r}, id {ids[i]!r}: values must be numeric [T, D] or [D], "
                f"got {a.shape} {a.dtype}"
            )
        seqs.append(a)
    empty = [ids[i] for i, a in zip(order, seqs) if a.shape[0] == 0]
    if empty:
        raise ValueError(
            f"group {name!r}: ids {empty[:10]} have no time steps ([0, D] values); a video an "
            "extractor yields nothing for is a failure row, not an empty feature row"
        )
    ids = [ids[i] for i in order]
    dims = {a.shape[1] for a in seqs}
    if len(dims) != 1:
        raise ValueError(f"group {name!r}: rows have different feature widths {sorted(dims)}")
    (dim,) = dims
    lengths = np.array([a.shape[0] for a in seqs], dtype=np.int32)
    t_max = max(1, int(lengths.max()))
    values = np.zeros((len(seqs), t_max, dim), dtype=dtype)
    for r, a in enumerate(seqs):
        if dtype == "float16":
            _check_float16(name, f"values of id {ids[r]!r}", a, path)
        values[r, : a.shape[0]] = a
    extras = {}
    for extra, rows in group.extras.items():
        if extra in RESERVED_DATASETS or not extra or "/" in extra or extra.startswith("."):
            raise ValueError(
                f"group {name!r}: invalid extra name {extra!r} "
                f"(reserved: {sorted(RESERVED_DATASETS)})"
            )
        rows = list(rows)
        if len(rows) != len(ids):
            raise ValueError(
                f"group {name!r}: extra {extra!r} has {len(rows)} rows for {len(ids)} ids"
            )
        try:
            arr = np.stack([np.asarray(rows[i]) for i in order])
        except ValueError as err:
            raise ValueError(
                f"group {name!r}: rows of extra {extra!r} must share one shape ({err})"
            ) from err
        if np.issubdtype(arr.dtype, np.floating):
            if dtype == "float16":
                _check_float16(name, f"extra {extra!r}", arr, path)
            arr = arr.astype(dtype)
        extras[extra] = arr
    for extra in extras:
        for k in range(1, extras[extra].ndim):
            if f"{extra}_dim{k}" in extras:
                raise ValueError(
                    f"group {name!r}: extra name {extra}_dim{k} is reserved "
                    f"(a dimension scale of {extra!r})"
                )
    columns = _check_columns(name, group.columns, dim)
    return _Prepared(
        name, group.keyed_by, ids, values, lengths, extras, normalize(group.provenance), columns
    )


def _write_group(f: h5py.File, p: _Prepared, compression: str | None) -> None:
    g = _create_group(
        f,
        p.name,
        keyed_by=p.keyed_by,
        dtype=str(p.values.dtype),
        dim=p.values.shape[2],
        t_max=p.values.shape[1],
        ids=p.ids,
        extras={
            k: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)} for k, a in p.extras.items()
        },
        provenance=p.provenance,
        versions=[package_versions()],
        columns=p.columns,
        compression=compression,
        chunk_cap=max(1, len(p.ids)),
    )
    g["values"][...] = p.values
    g["lengths"][...] = p.lengths
    for k, a in p.extras.items():
        g[k][...] = a


def write_shard(
    path: str | Path,
    groups: Iterable[GroupData],
    failures: Iterable[Failure | Mapping | tuple] = (),
    videos: Iterable[Any] = (),
    dtype: str | Mapping[str, str] = "float16",
    *,
    compression: str | None = None,
) -> Path:
    """Write one self-contained shard atomically; return its path.

    ``dtype`` is one dtype for all groups or ``{group: dtype}`` (others float16).
    Groups with no rows are left out (they carry no features to merge); rows are stored
    sorted by id. ``videos`` are dicts or ``VideoRecord``-like objects (see
    ``schema.video_row``). ``compression``: None (default; fastest reads) or an h5py filter
    name such as "lzf" (shards only; the cache's layout is chosen by ``merge_shards``).
    Everything is validated before the disk is touched; a crash leaves no file under
    ``path`` (only a ``.partial`` temp, at worst).
    """
    path = Path(path)
    per_group = dict(dtype) if isinstance(dtype, Mapping) else {}
    default = "float16" if isinstance(dtype, Mapping) else dtype
    prepared = [_prepare(g, per_group.get(g.name, default), path) for g in groups if len(g.ids)]
    names = [p.name for p in prepared]
    if len(set(names)) != len(names):
        raise ValueError(f"write_shard: a group name appears twice in {names}")
    fails = {}
    for x in failures:
        fl = as_failure(x)
        fails[(fl.id, fl.extractor)] = fl  # one row per (id, extractor): the last one wins
    vids = {}
    for v in videos:
        row = video_row(v)
        vids[row["video_id"]] = row
    for name in sorted(
        {k for r in vids.values() for k in r} - set(VIDEO_CORE) - {"labels", "groups"}
    ):
        field_kind(name, [r[name] for r in vids.values() if name in r])  # refuse mixed kinds now
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with _new_file(tmp, "shard") as f:
            for p in prepared:
                _write_group(f, p, compression)
            _write_videos(f, vids.values())
            _write_failures(f, fails.values())
        publish(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave our temp behind
        tmp.unlink(missing_ok=True)
        raise
    return path
