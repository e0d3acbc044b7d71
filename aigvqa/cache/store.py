"""Writing the feature cache: atomic shards and a batched, atomic merge.

The layout is documented in ``aigvqa.cache.schema``; reading is ``aigvqa.cache.reader``
(re-exported here so ``aigvqa.cache.store`` is the one import of the contract).

Atomicity. HDF5 files are not crash-safe when modified in place: a process killed
while appending can leave a file whose metadata no longer opens. So nothing here ever
modifies a finished file. ``write_shard`` writes ``.<name>.<pid>-<rand>.partial`` in the
target directory, fsyncs it and ``os.replace``-s it onto the final name; ``merge_shards``
builds the complete new cache in such a temporary file and replaces the old cache with
it in one rename. A kill at any moment therefore leaves either the previous cache or the
new one under the cache's name, plus at worst a stale ``.partial`` file, which the next
merge deletes (it holds the writers' lock, so no live writer owns one).

Cost. A merge writes every group anew, rows sorted by id (the order the schema
promises outside readers, so new ids land between old ones), moving rows in blocks of
about ``MERGE_BLOCK_BYTES``: one read of the cache and one write of the new file, with
HDF5 computing each chunk's Fletcher-32 checksum. So merging a batch of K shards costs
one rewrite of the cache, not K. Callers should merge in batches (e.g. every few minutes
of extraction), not per shard. (HDF5's raw object copy would be cheaper, but it breaks
the dimension scales of the copied datasets.)

Integrity. Everything read from the old cache and the shards is checked as it is read
(checksums, unique ids, lengths in 1..T_max); a damaged file raises CacheError naming it
and leaves the cache as it was.

Resume and failures. Ids already present in a group are skipped (``overwrite=True``
replaces them instead). The failures table keeps one row per (id, extractor), the
latest error text winning; a failure never hides a success: at every merge, failure rows
whose id now has features in that extractor's group (any group for extractor ``"*"``)
are dropped, so a video that failed once and later succeeded shows as cached only.

Concurrency. Merges into one cache are serialised by an advisory ``flock`` on
``<cache>.lock`` (released by the OS if the process dies; the empty lock file stays).
Readers take no lock and are never blocked: the file they opened stays valid after a
rename.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aigvqa import __version__
from aigvqa.cache.reader import (
    CacheData,
    FeatureCache,
    GroupInfo,
    Place,
    check_group,
    feature_group_names,
    file_format,
    group_columns,
    group_meta,
    group_versions,
    guarded,
    open_h5,
    read_failures,
    read_videos,
    take_rows,
)
from aigvqa.cache.schema import (
    ALL_EXTRACTORS,
    CHECKSUMS,
    CHUNK_CACHE_BYTES,
    DTYPES,
    FAILURE_COLUMNS,
    FAILURE_DIM,
    FAILURES,
    FEATURE,
    FORMAT_VERSION,
    GROUP_PREFIX,
    JOIN,
    KEYED_BY,
    LABEL_PREFIX,
    LIBVER,
    RESERVED_DATASETS,
    RESERVED_GROUPS,
    ROW_ORDER,
    RUNTIME_KEYS,
    STEP,
    STR,
    VIDEO_CORE,
    VIDEOS,
    Failure,
    GroupData,
    as_failure,
    chunk_rows,
    describe_differences,
    dumps,
    field_kind,
    normalize,
    package_versions,
    read_attrs,
    seal_attrs,
    strings_digest,
    video_row,
)
from aigvqa.errors import CacheError, ProvenanceMismatchError

__all__ = [
    "CacheData",
    "FeatureCache",
    "Failure",
    "GroupData",
    "GroupInfo",
    "MergeReport",
    "merge_shards",
    "write_shard",
]

FLOAT16_MAX = float(np.finfo(np.float16).max)
MERGE_BLOCK_BYTES = 64 << 20  # a merge moves rows in blocks of about this size


# -- small file-system helpers -----------------------------------------------------------
def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _stale_temps(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.*.partial"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); Windows has no directory fds."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    _fsync(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def _writer_lock(cache_path: Path, timeout: float):
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one merging process per cache is the caller's duty
        yield
        return
    lock_path = cache_path.with_name(cache_path.name + ".lock")
    with open(lock_path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheError(
                        f"another process has been merging into {cache_path} for over "
                        f"{timeout:.0f} s (lock {lock_path}); wait for it to finish or write to "
                        "another cache file"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
            f"as float32 (write_shard(..., dtype={{{name!r}: 'float32'}}); for an extractor, set its "
            f"class attribute cache_dtype = 'float32')"
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
        raise ValueError(f"invalid group name {name!r} (no '/', no leading '.', not one of {sorted(RESERVED_GROUPS)})")
    if group.keyed_by not in KEYED_BY:
        raise ValueError(f"group {name!r}: keyed_by must be one of {KEYED_BY}, got {group.keyed_by!r}")
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
            raise ValueError(f"group {name!r}, id {ids[i]!r}: values must be numeric [T, D] or [D], got {a.shape} {a.dtype}")
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
            raise ValueError(f"group {name!r}: invalid extra name {extra!r} (reserved: {sorted(RESERVED_DATASETS)})")
        rows = list(rows)
        if len(rows) != len(ids):
            raise ValueError(f"group {name!r}: extra {extra!r} has {len(rows)} rows for {len(ids)} ids")
        try:
            arr = np.stack([np.asarray(rows[i]) for i in order])
        except ValueError as err:
            raise ValueError(f"group {name!r}: rows of extra {extra!r} must share one shape ({err})") from err
        if np.issubdtype(arr.dtype, np.floating):
            if dtype == "float16":
                _check_float16(name, f"extra {extra!r}", arr, path)
            arr = arr.astype(dtype)
        extras[extra] = arr
    for extra in extras:
        for k in range(1, extras[extra].ndim):
            if f"{extra}_dim{k}" in extras:
                raise ValueError(f"group {name!r}: extra name {extra}_dim{k} is reserved (a dimension scale of {extra!r})")
    columns = _check_columns(name, group.columns, dim)
    return _Prepared(name, group.keyed_by, ids, values, lengths, extras, normalize(group.provenance), columns)


def _digest_strings(g: h5py.Group, name: str, values: Sequence[str]) -> h5py.Dataset:
    """A utf-8 dataset with the sha256 of its strings (HDF5 cannot checksum vlen data)."""
    values = [str(v) for v in values]
    ds = g.create_dataset(name, shape=(len(values),), dtype=STR)
    if values:
        ds[...] = np.array(values, dtype=object)
    ds.attrs["sha256"] = strings_digest(values)
    return ds


def _checked_numbers(g: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    """A 1-D numeric dataset with a Fletcher-32 checksum per chunk."""
    data = np.asarray(data)
    return g.create_dataset(name, data=data, maxshape=(None,), chunks=(max(1, min(len(data), 1 << 14)),),
                            fletcher32=True)


def _maxshape(shape: Sequence[int]) -> tuple[int | None, ...]:
    """Unlimited rows (and empty axes): lets a chunk be larger than an empty dataset."""
    return (None, *(None if s == 0 else s for s in shape[1:]))


def _scale(ds: h5py.Dataset, name: str) -> h5py.Dataset:
    ds.make_scale(name)
    return ds


def _create_group(
    f: h5py.File,
    name: str,
    *,
    keyed_by: str,
    dtype: str,
    dim: int,
    t_max: int,
    ids: Sequence[str],
    extras: Mapping[str, Mapping[str, Any]],
    provenance: Mapping,
    versions: list[dict[str, str]],
    columns: Sequence[str] | None,
    compression: str | None,
    chunk_cap: int,
) -> h5py.Group:
    """A group's datasets for ``ids`` (written here, with their checksum) and empty checksummed
    ``values`` / ``lengths`` / extras for the caller to fill, every axis with its scale."""
    n = len(ids)
    itemsize = np.dtype(dtype).itemsize
    g = f.create_group(name)
    ids_ds = _scale(_digest_strings(g, "ids", ids), "ids")
    step = _scale(_checked_numbers(g, STEP, np.arange(t_max, dtype=np.int32)), STEP)
    if columns is not None:
        feature = _scale(_digest_strings(g, FEATURE, columns), FEATURE)
    else:
        feature = _scale(_checked_numbers(g, FEATURE, np.arange(dim, dtype=np.int32)), FEATURE)
    values = g.create_dataset(
        "values", shape=(n, t_max, dim), maxshape=_maxshape((n, t_max, dim)), dtype=dtype,
        fillvalue=0, fletcher32=True,
        chunks=(min(max(1, n), chunk_rows(t_max * dim * itemsize, chunk_cap)), t_max, max(1, dim)),
        compression=compression,
    )
    lengths = g.create_dataset("lengths", shape=(n,), maxshape=(None,), dtype="int32", fletcher32=True,
                               chunks=(max(1, min(n, 1 << 14)),))
    for axis, scale in enumerate((ids_ds, step, feature)):
        values.dims[axis].attach_scale(scale)
    lengths.dims[0].attach_scale(ids_ds)
    for extra, spec in extras.items():
        shape = tuple(int(s) for s in spec["shape"])
        edtype = np.dtype(spec["dtype"])
        row_bytes = int(np.prod(shape, dtype=np.int64)) * edtype.itemsize
        ds = g.create_dataset(
            extra, shape=(n, *shape), maxshape=_maxshape((n, *shape)), dtype=edtype, fletcher32=True,
            chunks=(min(max(1, n), chunk_rows(row_bytes, chunk_cap)), *(max(1, s) for s in shape)),
            compression=compression if np.issubdtype(edtype, np.floating) else None,
        )
        ds.dims[0].attach_scale(ids_ds)
        for axis, size in enumerate(shape, start=1):
            scale_name = f"{extra}_dim{axis}"
            ds.dims[axis].attach_scale(_scale(_checked_numbers(g, scale_name, np.arange(size, dtype=np.int32)), scale_name))
    g.attrs["format_version"] = FORMAT_VERSION
    g.attrs["keyed_by"] = keyed_by
    g.attrs["provenance"] = dumps(provenance)
    weights = provenance.get("weights")
    g.attrs["weights"] = "" if weights is None else str(weights)
    g.attrs["versions"] = dumps(versions)
    if columns is not None:
        g.attrs["columns"] = np.array(list(columns), dtype=STR)
    seal_attrs(g)
    return g


def _new_file(path: Path, kind: str, **kwargs) -> h5py.File:
    f = h5py.File(path, "w", libver=LIBVER, **kwargs)
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["kind"] = kind
    f.attrs["aigvqa_version"] = __version__
    f.attrs["row_order"] = ROW_ORDER
    f.attrs["join"] = JOIN
    f.attrs["checksums"] = CHECKSUMS
    seal_attrs(f)
    return f


def _write_videos(f: h5py.File, rows: Iterable[Mapping[str, Any]]) -> None:
    """/videos sorted by video_id: core utf-8 columns, one float64 column per label, one
    utf-8 column per grouping key, one typed column per extra field (schema docstring)."""
    rows = sorted(rows, key=lambda r: r["video_id"])
    g = f.create_group(VIDEOS)
    video_id = _scale(_digest_strings(g, "video_id", [r["video_id"] for r in rows]), "video_id")
    columns = [_digest_strings(g, c, [r[c] for r in rows]) for c in VIDEO_CORE if c != "video_id"]
    for label in sorted({k for r in rows for k in r["labels"]}):
        data = np.array([r["labels"].get(label, np.nan) for r in rows], dtype=np.float64)
        columns.append(_checked_numbers(g, LABEL_PREFIX + label, data))
    for key in sorted({k for r in rows for k in r["groups"]}):
        columns.append(_digest_strings(g, GROUP_PREFIX + key, [r["groups"].get(key, "") for r in rows]))
    for name in sorted({k for r in rows for k in r} - set(VIDEO_CORE) - {"labels", "groups"}):
        present = [r[name] for r in rows if name in r]
        kind = field_kind(name, present)
        if kind == "str":
            ds = _digest_strings(g, name, [r.get(name, "") for r in rows])
        elif kind in ("int", "bool") and len(present) == len(rows):
            ds = _checked_numbers(g, name, np.array([int(r[name]) for r in rows], dtype=np.int64))
        else:  # floats, and ints / bools some rows lack: NaN marks the missing ones
            ds = _checked_numbers(g, name, np.array([float(r.get(name, np.nan)) for r in rows], dtype=np.float64))
        ds.attrs["kind"] = kind
        seal_attrs(ds)
        columns.append(ds)
    for ds in columns:
        ds.dims[0].attach_scale(video_id)


def _write_failures(f: h5py.File, failures: Iterable[Failure]) -> None:
    failures = sorted(failures, key=lambda fl: (fl.id, fl.extractor))
    g = f.create_group(FAILURES)
    index = _scale(_checked_numbers(g, FAILURE_DIM, np.arange(len(failures), dtype=np.int32)), FAILURE_DIM)
    for col in FAILURE_COLUMNS:
        _digest_strings(g, col, [getattr(fl, col) for fl in failures]).dims[0].attach_scale(index)


def _write_group(f: h5py.File, p: _Prepared, compression: str | None) -> None:
    g = _create_group(
        f, p.name, keyed_by=p.keyed_by, dtype=str(p.values.dtype), dim=p.values.shape[2],
        t_max=p.values.shape[1], ids=p.ids,
        extras={k: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)} for k, a in p.extras.items()},
        provenance=p.provenance, versions=[package_versions()], columns=p.columns,
        compression=compression, chunk_cap=max(1, len(p.ids)),
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
    for name in sorted({k for r in vids.values() for k in r} - set(VIDEO_CORE) - {"labels", "groups"}):
        field_kind(name, [r[name] for r in vids.values() if name in r])  # refuse mixed kinds now
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with _new_file(tmp, "shard") as f:
            for p in prepared:
                _write_group(f, p, compression)
            _write_videos(f, vids.values())
            _write_failures(f, fails.values())
        _publish(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave our temp behind
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- merge -------------------------------------------------------------------------------
@dataclass
class MergeReport:
    cache: Path
    shards: int = 0
    added: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # ids already cached (resume)
    replaced: dict[str, int] = field(default_factory=dict)  # overwrite=True only
    groups_replaced: list[str] = field(default_factory=list)  # overwrite=True, provenance differed
    failures_added: int = 0
    failures_cleared: int = 0
    videos_added: int = 0
    videos_updated: int = 0
    stale_temps_removed: int = 0
    rewritten: bool = False
    upgraded_from: int | None = None  # format of an older cache this merge rewrote in the current one

    def __str__(self) -> str:
        parts = []
        for name in sorted(set(self.added) | set(self.skipped) | set(self.replaced)):
            s = f"{name} +{self.added.get(name, 0)}"
            if self.skipped.get(name):
                s += f" ({self.skipped[name]} already cached)"
            if self.replaced.get(name):
                s += f" ({self.replaced[name]} replaced)"
            parts.append(s)
        text = f"merged {self.shards} shard(s) into {self.cache}: " + (", ".join(parts) or "no features")
        text += f"; videos +{self.videos_added}"
        if self.videos_updated:
            text += f" ({self.videos_updated} updated)"
        text += f"; failures +{self.failures_added} -{self.failures_cleared}"
        if self.groups_replaced:
            text += f"; groups replaced (--overwrite): {', '.join(self.groups_replaced)}"
        if self.upgraded_from is not None:
            text += f"; rewritten from cache format {self.upgraded_from} to {FORMAT_VERSION} (checksums added)"
        return text


@dataclass
class _Source:
    """Rows of one file's group that land in the merged group: ``src`` rows to ``dst`` rows."""

    group: h5py.Group
    place: Place
    src: np.ndarray
    dst: np.ndarray  # ascending


@dataclass
class _GroupPlan:
    name: str
    meta: dict[str, Any]
    ids: list[str]  # sorted: the merged group's rows
    t_max: int
    sources: list[_Source]
    versions: list[dict[str, str]]
    columns: list[str] | None
    compression: str | None
    changed: bool  # rows added or replaced, or the group replaced


def _comparable(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance keys at top level (``config.arch``), storage layout under ``stored.``."""
    out = dict(meta["provenance"])
    out["stored"] = {k: meta[k] for k in ("keyed_by", "dtype", "dim", "extras")}
    return out


def _mismatch(name: str, old_label: str, new_label: str, diffs: list[str], fix: str) -> ProvenanceMismatchError:
    return ProvenanceMismatchError(
        f"refusing to mix features in group {name!r}: {old_label} and {new_label} were made "
        f"under different settings:\n" + "\n".join(f"  {d}" for d in diffs) + f"\n{fix}"
    )


def _plan_group(name, cache_path, old, shard_paths, shards, overwrite, report, compression) -> _GroupPlan:
    """Which rows of which file make the merged group (read-only; errors name the file)."""
    contributing = [i for i, s in enumerate(shards) if name in s]
    places = [Place(p, "shard") for p in shard_paths]
    metas, checked, attrs = {}, {}, {}
    ref_meta = ref_index = None
    for i in contributing:
        places[i].group = name
        with guarded(places[i]):
            attrs[i] = read_attrs(shards[i][name])
            metas[i] = group_meta(shards[i][name], attrs[i])
            checked[i] = check_group(shards[i][name], name, shard_paths[i], "shard")
            meta = metas[i]
        if ref_meta is None:
            ref_meta, ref_index = meta, i
            continue
        diffs = describe_differences(_comparable(ref_meta), _comparable(meta), RUNTIME_KEYS)
        if diffs:
            raise _mismatch(
                name, f"shard {shard_paths[ref_index]}", f"shard {shard_paths[i]}", diffs,
                "One batch of shards must come from one configuration; merge them into "
                "different cache files.",
            )
    old_place = Place(cache_path)
    old_place.group = name
    existing = old[name] if old is not None and name in old else None
    keep = existing is not None
    old_meta = None
    if existing is not None:
        with guarded(old_place):
            old_attrs = read_attrs(existing)
            old_meta = group_meta(existing, old_attrs)
            old_ids, _ = check_group(existing, name, cache_path)
            old_versions = group_versions(existing, old_attrs)
            old_columns = group_columns(existing, old_attrs)
            old_t = int(existing["values"].shape[1])
            old_compression = existing["values"].compression
        if ref_meta is not None:
            diffs = describe_differences(_comparable(old_meta), _comparable(ref_meta), RUNTIME_KEYS)
            if diffs and not overwrite:
                raise _mismatch(
                    name, f"cache {cache_path}", f"shard {shard_paths[contributing[0]]}", diffs,
                    "Write these features to another cache file (--cache other.h5), or pass "
                    f"--overwrite (merge_shards(..., overwrite=True)) to replace group {name!r}.",
                )
            if diffs:
                keep = False
                report.groups_replaced.append(name)
    # id -> (source key, source row); source key None = the existing cache group
    origin: dict[str, tuple[int | None, int]] = {}
    versions: list[dict[str, str]] = []
    columns = None
    t_max = 1
    if keep:
        origin = {sid: (None, r) for r, sid in enumerate(old_ids)}
        versions, columns, t_max = list(old_versions), old_columns, old_t
    added = skipped = replaced = 0
    for i in contributing:
        sids, slens = checked[i]
        took = False
        for r, sid in enumerate(sids):
            if sid in origin:
                if not overwrite:
                    skipped += 1
                    continue
                replaced += 1
            else:
                added += 1
            origin[sid] = (i, r)
            t_max = max(t_max, int(slens[r]))
            took = True
        if took:
            with guarded(places[i]):
                shard_versions = group_versions(shards[i][name], attrs[i])
                shard_columns = group_columns(shards[i][name], attrs[i])
            versions += [v for v in shard_versions if v not in versions]
            if columns is None:
                columns = shard_columns
    if contributing:
        report.added[name] = added
        report.skipped[name] = skipped
        if overwrite:
            report.replaced[name] = replaced
    ids = sorted(origin)
    by_source: dict[int | None, tuple[list[int], list[int]]] = {}
    for dst, sid in enumerate(ids):
        key, row = origin[sid]
        src_rows, dst_rows = by_source.setdefault(key, ([], []))
        src_rows.append(row)
        dst_rows.append(dst)
    sources = []
    for key, (src_rows, dst_rows) in by_source.items():
        group = existing if key is None else shards[key][name]
        place = old_place if key is None else places[key]
        sources.append(_Source(group, place, np.array(src_rows, dtype=np.int64), np.array(dst_rows, dtype=np.int64)))
    meta = old_meta if keep else ref_meta
    return _GroupPlan(
        name=name, meta=meta, ids=ids, t_max=t_max, sources=sources, versions=versions,
        columns=columns, compression=old_compression if keep and compression is None else compression,
        changed=bool(added or replaced or not keep),
    )


def _one_run(rows: np.ndarray) -> bool:
    return bool(rows.size) and int(rows[-1]) - int(rows[0]) + 1 == rows.size and bool((np.diff(rows) == 1).all())


def _fill_group(g: h5py.Group, plan: _GroupPlan) -> None:
    """Write the merged rows block by block (bounded memory, each block written once)."""
    n = len(plan.ids)
    datasets = ["values", "lengths", *plan.meta["extras"]]
    row_bytes = sum(int(np.prod(g[k].shape[1:], dtype=np.int64)) * g[k].dtype.itemsize for k in datasets)
    chunk = g["values"].chunks[0]
    block = max(1, MERGE_BLOCK_BYTES // max(1, row_bytes * chunk)) * chunk  # whole chunks per block
    for start in range(0, n, block):
        stop = min(n, start + block)
        buffers = {k: np.zeros((stop - start, *g[k].shape[1:]), dtype=g[k].dtype) for k in datasets}
        for source in plan.sources:
            lo, hi = np.searchsorted(source.dst, [start, stop])
            if lo == hi:
                continue
            src, dst = source.src[lo:hi], source.dst[lo:hi] - start
            with guarded(source.place):
                if _one_run(src) and _one_run(dst):  # the usual case: HDF5 reads straight into the block
                    rows = np.s_[int(src[0]) : int(src[-1]) + 1]
                    into = np.s_[int(dst[0]) : int(dst[-1]) + 1]
                    t = min(int(source.group["values"].shape[1]), plan.t_max)
                    source.group["values"].read_direct(buffers["values"], np.s_[rows, :t], np.s_[into, :t])
                    for key in datasets[1:]:
                        source.group[key].read_direct(buffers[key], rows, into)
                    continue
                values = take_rows(source.group["values"], src)
                t = min(values.shape[1], plan.t_max)
                buffers["values"][dst, :t] = values[:, :t]
                for key in datasets[1:]:
                    buffers[key][dst] = take_rows(source.group[key], src)
        for key, data in buffers.items():
            g[key][start:stop] = data


def _build_merged(tmp, plans, videos, failures) -> None:
    with _new_file(tmp, "cache", rdcc_nbytes=CHUNK_CACHE_BYTES) as out:
        for plan in plans:
            meta = plan.meta
            g = _create_group(
                out, plan.name, keyed_by=meta["keyed_by"], dtype=meta["dtype"], dim=meta["dim"],
                t_max=plan.t_max, ids=plan.ids, extras=meta["extras"], provenance=meta["provenance"],
                versions=plan.versions, columns=plan.columns, compression=plan.compression,
                chunk_cap=1024,
            )
            _fill_group(g, plan)
        _write_videos(out, videos.values())
        _write_failures(out, (Failure(i, e, msg) for (i, e), msg in failures.items()))


def _covered(failure_key, final_ids, prompt_groups, videos) -> bool:
    """Whether a failure row is superseded by features that landed for the same id.

    A whole-video failure (extractor ``*``: the file could not be decoded) is covered only
    by video-keyed features of that video. Prompt-keyed text features are encoded apart
    from the video, so their presence says nothing about whether the video decoded.
    """
    id_, extractor = failure_key
    if extractor == ALL_EXTRACTORS:
        return any(id_ in final_ids[name] for name in final_ids if name not in prompt_groups)
    ids = final_ids.get(extractor)
    if ids is None:
        return False
    if id_ in ids:
        return True
    return extractor in prompt_groups and id_ in videos and videos[id_]["prompt_id"] in ids


def merge_shards(
    cache_path: str | Path,
    shard_paths: Iterable[str | Path],
    *,
    overwrite: bool = False,
    remove_shards: bool = False,
    compression: str | None = None,
    lock_timeout: float = 600.0,
) -> MergeReport:
    """Merge shard files into ``cache_path`` (created if absent) in one atomic replace.

    Ids already cached are skipped (resume) unless ``overwrite``, which also replaces a
    whole group whose provenance differs instead of raising ``ProvenanceMismatchError``.
    ``remove_shards`` deletes the shard files once their content is in the cache (a crash
    before that only means the next merge skips their ids). ``compression`` applies to
    groups this merge creates (an existing group keeps its own): None (default) or e.g.
    "lzf", which shrinks heavily padded groups but read ~5x slower in our measurement —
    stage two reads the cache many times. A damaged shard or cache raises CacheError
    naming it (the cache is left as it was). See the module docstring for the atomicity,
    failure and concurrency rules.
    """
    cache_path = Path(cache_path)
    shard_paths = [Path(p) for p in shard_paths]
    report = MergeReport(cache=cache_path, shards=len(shard_paths))
    if not shard_paths:
        return report
    if any(p.resolve() == cache_path.resolve() for p in shard_paths):
        raise ValueError(f"{cache_path} is both the cache and one of the shards")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(cache_path, lock_timeout):
        stale = _stale_temps(cache_path)
        for p in stale:  # left by a killed merge; we hold the lock, so nobody owns them
            p.unlink(missing_ok=True)
        report.stale_temps_removed = len(stale)
        tmp = _temp_path(cache_path)
        try:
            with contextlib.ExitStack() as stack:
                old = stack.enter_context(open_h5(cache_path)) if cache_path.exists() else None
                shards = [stack.enter_context(open_h5(p, what="shard")) for p in shard_paths]
                old_place = Place(cache_path)
                with guarded(old_place):
                    old_format = file_format(old) if old is not None else FORMAT_VERSION
                    old_names = feature_group_names(old) if old is not None else []
                    old_place.group = VIDEOS
                    videos = read_videos(old) if old is not None else {}
                    old_place.group = FAILURES
                    old_failures = {(fl.id, fl.extractor): fl.error
                                    for fl in (read_failures(old) if old is not None else [])}
                shard_names = set()
                shard_videos, shard_failures = [], []
                for path, s in zip(shard_paths, shards):
                    with guarded(Place(path, "shard")):
                        shard_names.update(feature_group_names(s))
                        shard_videos.append(read_videos(s))
                        shard_failures.append(read_failures(s))
                names = sorted(set(old_names) | shard_names)
                plans = [_plan_group(n, cache_path, old, shard_paths, shards, overwrite, report, compression)
                         for n in names]

                for rows in shard_videos:
                    for vid, row in rows.items():
                        if "source_order" not in row and "source_order" in videos.get(vid, {}):
                            # an extract's row for an imported video keeps its row in the imported file
                            row = {**row, "source_order": videos[vid]["source_order"]}
                        if vid not in videos:
                            report.videos_added += 1
                        elif videos[vid] != row:
                            report.videos_updated += 1
                        videos[vid] = row  # the latest manifest row wins (labels may be fixed)

                failures = dict(old_failures)
                for rows in shard_failures:
                    for fl in rows:
                        failures[(fl.id, fl.extractor)] = fl.error  # latest error text wins
                final_ids = {p.name: set(p.ids) for p in plans}
                prompt_groups = {p.name for p in plans if p.meta["keyed_by"] == "prompt"}
                failures = {k: v for k, v in failures.items() if not _covered(k, final_ids, prompt_groups, videos)}
                report.failures_added = len(set(failures) - set(old_failures))
                report.failures_cleared = len(set(old_failures) - set(failures))

                changed = (
                    old is None
                    or old_format < FORMAT_VERSION
                    or any(p.changed for p in plans)
                    or report.videos_added or report.videos_updated
                    or failures != old_failures
                )
                if changed:
                    _build_merged(tmp, plans, videos, failures)
            if changed:  # every file is closed now: Windows cannot replace an open file
                _publish(tmp, cache_path)
                report.rewritten = True
                if old is not None and old_format < FORMAT_VERSION:
                    report.upgraded_from = old_format
        except BaseException:  # KeyboardInterrupt included: the old cache stays as it was
            tmp.unlink(missing_ok=True)
            raise
    if remove_shards:
        for p in shard_paths:
            p.unlink(missing_ok=True)
    return report
