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

Cost. A merge copies the existing groups into the new file with HDF5's object copy
(raw chunks, no decompression: about disk speed) and appends the shards' rows with one
resize per dataset, so merging a batch of K shards costs one copy of the cache, not K.
Callers should merge in batches (e.g. every few minutes of extraction), not per shard.

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
import json
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
    feature_group_names,
    group_meta,
    open_h5,
    read_failures,
    read_videos,
)
from aigvqa.cache.schema import (
    ALL_EXTRACTORS,
    CHUNK_CACHE_BYTES,
    CORE_DATASETS,
    DTYPES,
    FAILURE_COLUMNS,
    FAILURES,
    FORMAT_VERSION,
    KEYED_BY,
    RESERVED_GROUPS,
    RUNTIME_KEYS,
    SOURCE_ORDER,
    STR,
    VIDEO_COLUMNS,
    VIDEOS,
    Failure,
    GroupData,
    as_failure,
    chunk_rows,
    describe_differences,
    dumps,
    normalize,
    package_versions,
    read_str,
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
    ids: list[str]
    values: np.ndarray  # [n, T_max, D] in the stored dtype
    lengths: np.ndarray  # [n] int32
    extras: dict[str, np.ndarray]
    provenance: dict[str, Any]


def _check_float16(name: str, what: str, a: np.ndarray, path: Path) -> None:
    finite = a[np.isfinite(a)]
    if finite.size and float(np.abs(finite).max()) > FLOAT16_MAX:
        raise CacheError(
            f"{path}: {what} of group {name!r} reach {float(np.abs(finite).max()):.4g}, beyond "
            f"float16's range (+-{FLOAT16_MAX:g}), and would be stored as inf; store this group "
            f"as float32 (write_shard(..., dtype={{{name!r}: 'float32'}}); for an extractor, set its "
            f"class attribute cache_dtype = 'float32')"
        )


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
    seqs = []
    for i, v in zip(ids, group.values):
        a = np.asarray(v)
        if a.ndim == 1:  # one vector per video: a sequence of length 1
            a = a[None, :]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"group {name!r}, id {i!r}: values must be numeric [T, D] or [D], got {a.shape} {a.dtype}")
        seqs.append(a)
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
        if extra in CORE_DATASETS or not extra or "/" in extra:
            raise ValueError(f"group {name!r}: invalid extra name {extra!r}")
        rows = list(rows)
        if len(rows) != len(ids):
            raise ValueError(f"group {name!r}: extra {extra!r} has {len(rows)} rows for {len(ids)} ids")
        try:
            arr = np.stack([np.asarray(x) for x in rows])
        except ValueError as err:
            raise ValueError(f"group {name!r}: rows of extra {extra!r} must share one shape ({err})") from err
        if np.issubdtype(arr.dtype, np.floating):
            if dtype == "float16":
                _check_float16(name, f"extra {extra!r}", arr, path)
            arr = arr.astype(dtype)
        extras[extra] = arr
    return _Prepared(name, group.keyed_by, ids, values, lengths, extras, normalize(group.provenance))


def _create_group(
    f: h5py.File,
    name: str,
    *,
    keyed_by: str,
    dtype: str,
    dim: int,
    t_max: int,
    n: int,
    extras: Mapping[str, Mapping[str, Any]],
    provenance: Mapping,
    versions: list[dict[str, str]],
    compression: str | None,
    growing: bool,
) -> h5py.Group:
    """Empty datasets for ``n`` rows. ``growing`` (caches): chunks sized for later appends;
    otherwise (shards) chunks no larger than the data."""
    cap = 1024 if growing else max(1, n)
    itemsize = np.dtype(dtype).itemsize
    g = f.create_group(name)
    g.create_dataset(
        "values", shape=(n, t_max, dim), maxshape=(None, None, dim), dtype=dtype, fillvalue=0,
        chunks=(chunk_rows(t_max * dim * itemsize, cap), t_max, dim), compression=compression,
    )
    g.create_dataset("lengths", shape=(n,), maxshape=(None,), dtype="int32", chunks=(min(4096, cap * 4),))
    g.create_dataset("ids", shape=(n,), maxshape=(None,), dtype=STR, chunks=(min(1024, cap),))
    for extra, spec in extras.items():
        shape = tuple(int(s) for s in spec["shape"])
        edtype = np.dtype(spec["dtype"])
        row_bytes = int(np.prod(shape, dtype=np.int64)) * edtype.itemsize
        g.create_dataset(
            extra, shape=(n, *shape), maxshape=(None, *shape), dtype=edtype,
            chunks=(chunk_rows(row_bytes, cap), *(max(1, s) for s in shape)),
            compression=compression if np.issubdtype(edtype, np.floating) else None,
        )
    g.attrs["format_version"] = FORMAT_VERSION
    g.attrs["keyed_by"] = keyed_by
    g.attrs["provenance"] = dumps(provenance)
    weights = provenance.get("weights")
    g.attrs["weights"] = "" if weights is None else str(weights)
    g.attrs["versions"] = dumps(versions)
    return g


def _write_root(f: h5py.File, kind: str) -> None:
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["kind"] = kind
    f.attrs["aigvqa_version"] = __version__


def _write_strings(g: h5py.Group, name: str, values: Sequence[str]) -> None:
    g.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STR,
                     maxshape=(None,), chunks=(1024,))


def _write_videos(f: h5py.File, rows: Iterable[Mapping[str, Any]]) -> None:
    rows = list(rows)
    g = f.create_group(VIDEOS)
    for col in VIDEO_COLUMNS:
        if col in ("labels", "groups"):
            _write_strings(g, col, [json.dumps(r[col], sort_keys=True) for r in rows])
        else:
            _write_strings(g, col, [r[col] for r in rows])
    if any(SOURCE_ORDER in r for r in rows):
        g.create_dataset(SOURCE_ORDER, data=np.array([r.get(SOURCE_ORDER, -1) for r in rows], dtype=np.int64),
                         maxshape=(None,), chunks=(1024,))


def _write_failures(f: h5py.File, failures: Iterable[Failure]) -> None:
    failures = list(failures)
    g = f.create_group(FAILURES)
    for col in FAILURE_COLUMNS:
        _write_strings(g, col, [getattr(fl, col) for fl in failures])


def _write_group(f: h5py.File, p: _Prepared, compression: str | None) -> None:
    g = _create_group(
        f, p.name, keyed_by=p.keyed_by, dtype=str(p.values.dtype), dim=p.values.shape[2],
        t_max=p.values.shape[1], n=len(p.ids),
        extras={k: {"shape": list(a.shape[1:]), "dtype": str(a.dtype)} for k, a in p.extras.items()},
        provenance=p.provenance, versions=[package_versions()], compression=compression, growing=False,
    )
    if not p.ids:
        return
    g["values"][...] = p.values
    g["lengths"][...] = p.lengths
    g["ids"][...] = np.array(p.ids, dtype=object)
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
    Groups with no rows are left out (they carry no features to merge). ``videos`` are
    dicts or ``VideoRecord``-like objects. ``compression``: None (default; fastest reads)
    or an h5py filter name such as "lzf" (shards only; the cache's layout is chosen by
    ``merge_shards``). Everything is validated before the disk is
    touched; a crash leaves no file under ``path`` (only a ``.partial`` temp, at worst).
    """
    path = Path(path)
    per_group = dict(dtype) if isinstance(dtype, Mapping) else {}
    default = "float16" if isinstance(dtype, Mapping) else dtype
    prepared = [_prepare(g, per_group.get(g.name, default), path) for g in groups if len(g.ids)]
    names = [p.name for p in prepared]
    if len(set(names)) != len(names):
        raise ValueError(f"write_shard: a group name appears twice in {names}")
    fails = [as_failure(x) for x in failures]
    vids = {}
    for v in videos:
        row = video_row(v)
        vids[row["video_id"]] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            _write_root(f, "shard")
            for p in prepared:
                _write_group(f, p, compression)
            _write_videos(f, vids.values())
            _write_failures(f, fails)
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
        return text


@dataclass
class _GroupPlan:
    name: str
    meta: dict[str, Any]
    keep_existing: bool
    n_existing: int
    t_existing: int
    ids: list[str]
    t_max: int
    writes: list[tuple[int, np.ndarray, np.ndarray]]  # (shard index, source rows, target rows)
    versions: list[dict[str, str]]


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


def _plan_group(name, cache_path, old, shard_paths, shards, overwrite, report) -> _GroupPlan:
    contributing = [i for i, s in enumerate(shards) if name in s and name not in RESERVED_GROUPS]
    ref_meta = None
    for i in contributing:
        meta = group_meta(shards[i][name])
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
    existing = old[name] if old is not None and name in old and name not in RESERVED_GROUPS else None
    keep = existing is not None
    if existing is not None and ref_meta is not None:
        old_meta = group_meta(existing)
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
    meta = group_meta(existing) if keep else ref_meta
    ids = read_str(existing["ids"]) if keep else []
    versions = json.loads(existing.attrs.get("versions", "[]")) if keep else []
    t_existing = int(existing["values"].shape[1]) if keep else 1
    n_existing = len(ids)
    index = {s: r for r, s in enumerate(ids)}
    t_max = t_existing
    writes = []
    added = skipped = replaced = 0
    for i in contributing:
        sg = shards[i][name]
        sids = read_str(sg["ids"])
        slens = sg["lengths"][()]
        src, dst = [], []
        for r, sid in enumerate(sids):
            if sid in index:
                if not overwrite:
                    skipped += 1
                    continue
                replaced += 1
            else:
                index[sid] = len(ids)
                ids.append(sid)
                added += 1
            src.append(r)
            dst.append(index[sid])
            t_max = max(t_max, int(slens[r]))
        if src:
            writes.append((i, np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)))
            for v in json.loads(sg.attrs.get("versions", "[]")):
                if v not in versions:
                    versions.append(v)
    if contributing:
        report.added[name] = added
        report.skipped[name] = skipped
        if overwrite:
            report.replaced[name] = replaced
    return _GroupPlan(name, meta, keep, n_existing, t_existing, ids, max(1, t_max), writes, versions)


def _runs(dst: np.ndarray) -> list[tuple[int, int]]:
    """Split target rows into maximal consecutive runs: [(start index in dst, stop index)]."""
    breaks = np.flatnonzero(np.diff(dst) != 1) + 1
    edges = [0, *breaks.tolist(), len(dst)]
    return list(zip(edges[:-1], edges[1:]))


def _write_rows(g: h5py.Group, sg: h5py.Group, src: np.ndarray, dst: np.ndarray, t_max: int) -> None:
    """Copy shard rows ``src`` to cache rows ``dst`` (values zero-padded to ``t_max``)."""

    def rows_of(ds: h5py.Dataset) -> np.ndarray:
        data = ds[()]
        whole = len(src) == len(data) and bool((src == np.arange(len(data))).all())
        return data if whole else data[src]

    values = rows_of(sg["values"])
    if values.shape[1] != t_max:  # full-width rows: a replaced row must not keep an old tail
        block = np.zeros((len(src), t_max, values.shape[2]), dtype=g["values"].dtype)
        t = min(t_max, values.shape[1])
        block[:, :t] = values[:, :t]
        values = block
    columns = {"values": values, "lengths": rows_of(sg["lengths"])}
    for extra in g.keys():
        if extra not in CORE_DATASETS:
            columns[extra] = rows_of(sg[extra])
    for a, b in _runs(dst):
        rows = slice(int(dst[a]), int(dst[a]) + (b - a))
        for key, data in columns.items():
            g[key][rows] = data[a:b]


def _build_merged(tmp, old, shards, plans, videos, failures, compression) -> None:
    with h5py.File(tmp, "w", rdcc_nbytes=CHUNK_CACHE_BYTES) as out:
        _write_root(out, "cache")
        for plan in plans:
            n = len(plan.ids)
            meta = plan.meta
            if plan.keep_existing:
                out.copy(old[plan.name], out, name=plan.name)  # raw chunk copy, no re-encoding
                g = out[plan.name]
                g["values"].resize((n, plan.t_max, meta["dim"]))
                for key in g.keys():
                    if key != "values":
                        g[key].resize(n, axis=0)
                g.attrs["versions"] = dumps(plan.versions)
            else:
                g = _create_group(
                    out, plan.name, keyed_by=meta["keyed_by"], dtype=meta["dtype"], dim=meta["dim"],
                    t_max=plan.t_max, n=n, extras=meta["extras"], provenance=meta["provenance"],
                    versions=plan.versions, compression=compression, growing=True,
                )
            new_ids = plan.ids[plan.n_existing:] if plan.keep_existing else plan.ids
            if new_ids:
                g["ids"][n - len(new_ids):n] = np.array(new_ids, dtype=object)
            for shard_index, src, dst in plan.writes:
                _write_rows(g, shards[shard_index][plan.name], src, dst, plan.t_max)
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
    groups this merge creates: None (default) or e.g. "lzf", which shrinks heavily padded
    groups but read ~5x slower in our measurement — stage two reads the cache many
    times. See the module docstring for the atomicity, failure and concurrency rules.
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
                names = sorted(set(feature_group_names(old) if old is not None else [])
                               | {n for s in shards for n in feature_group_names(s)})
                plans = [_plan_group(n, cache_path, old, shard_paths, shards, overwrite, report) for n in names]

                videos = read_videos(old) if old is not None else {}
                for s in shards:
                    for vid, row in read_videos(s).items():
                        if SOURCE_ORDER not in row and SOURCE_ORDER in videos.get(vid, {}):
                            # an extract's row for an imported video keeps its source row
                            row = {**row, SOURCE_ORDER: videos[vid][SOURCE_ORDER]}
                        if vid not in videos:
                            report.videos_added += 1
                        elif videos[vid] != row:
                            report.videos_updated += 1
                        videos[vid] = row  # the latest manifest row wins (labels may be fixed)

                old_failures = {(fl.id, fl.extractor): fl.error for fl in (read_failures(old) if old is not None else [])}
                failures = dict(old_failures)
                for s in shards:
                    for fl in read_failures(s):
                        failures[(fl.id, fl.extractor)] = fl.error  # latest error text wins
                final_ids = {p.name: set(p.ids) for p in plans}
                prompt_groups = {p.name for p in plans if p.meta["keyed_by"] == "prompt"}
                failures = {k: v for k, v in failures.items() if not _covered(k, final_ids, prompt_groups, videos)}
                report.failures_added = len(set(failures) - set(old_failures))
                report.failures_cleared = len(set(old_failures) - set(failures))

                changed = (
                    old is None
                    or any(p.writes or not p.keep_existing for p in plans)
                    or report.videos_added or report.videos_updated
                    or failures != old_failures
                )
                if changed:
                    _build_merged(tmp, old, shards, plans, videos, failures, compression)
            if changed:  # every file is closed now: Windows cannot replace an open file
                _publish(tmp, cache_path)
                report.rewritten = True
        except BaseException:  # KeyboardInterrupt included: the old cache stays as it was
            tmp.unlink(missing_ok=True)
            raise
    if remove_shards:
        for p in shard_paths:
            p.unlink(missing_ok=True)
    return report
