"""Merging shards into the cache: one batched, atomic rewrite.

``merge_shards`` builds the complete new cache in a temporary file and replaces the old
cache with it in one rename (``aigvqa.cache.files``), holding the writers' lock; the
objects are created by ``aigvqa.cache.layout``, the inputs read by ``aigvqa.cache.access``.

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aigvqa.cache.access import (
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
from aigvqa.cache.files import _stale_temps, _temp_path, _writer_lock, publish
from aigvqa.cache.layout import _create_group, _new_file, _write_failures, _write_videos
from aigvqa.cache.schema import (
    ALL_EXTRACTORS,
    CHUNK_CACHE_BYTES,
    FAILURES,
    FORMAT_VERSION,
    RUNTIME_KEYS,
    VIDEOS,
    Failure,
    describe_differences,
    read_attrs,
)
from aigvqa.errors import ProvenanceMismatchError

__all__ = ["MERGE_BLOCK_BYTES", "MergeReport", "merge_shards"]

MERGE_BLOCK_BYTES = 64 << 20  # a merge moves rows in blocks of about this size


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
    upgraded_from: int | None = (
        None  # format of an older cache this merge rewrote in the current one
    )

    def __str__(self) -> str:
        parts = []
        for name in sorted(set(self.added) | set(self.skipped) | set(self.replaced)):
            s = f"{name} +{self.added.get(name, 0)}"
            if self.skipped.get(name):
                s += f" ({self.skipped[name]} already cached)"
            if self.replaced.get(name):
                s += f" ({self.replaced[name]} replaced)"
            parts.append(s)
        text = f"merged {self.shards} shard(s) into {self.cache}: " + (
            ", ".join(parts) or "no features"
        )
        text += f"; videos +{self.videos_added}"
        if self.videos_updated:
            text += f" ({self.videos_updated} updated)"
        text += f"; failures +{self.failures_added} -{self.failures_cleared}"
        if self.groups_replaced:
            text += f"; groups replaced (--overwrite): {', '.join(self.groups_replaced)}"
        if self.upgraded_from is not None:
            text += (
                f"; rewritten from cache format {self.upgraded_from} to {FORMAT_VERSION} "
                "(checksums added)"
            )
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


def _mismatch(
    name: str, old_label: str, new_label: str, diffs: list[str], fix: str
) -> ProvenanceMismatchError:
    return ProvenanceMismatchError(
        f"refusing to mix features in group {name!r}: {old_label} and {new_label} were made "
        f"under different settings:\n" + "\n".join(f"  {d}" for d in diffs) + f"\n{fix}"
    )


def _plan_group(
    name, cache_path, old, shard_paths, shards, overwrite, report, compression
) -> _GroupPlan:
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
                name,
                f"shard {shard_paths[ref_index]}",
                f"shard {shard_paths[i]}",
                diffs,
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
                    name,
                    f"cache {cache_path}",
                    f"shard {shard_paths[contributing[0]]}",
                    diffs,
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
        sources.append(
            _Source(
                group, place, np.array(src_rows, dtype=np.int64), np.array(dst_rows, dtype=np.int64)
            )
        )
    meta = old_meta if keep else ref_meta
    return _GroupPlan(
        name=name,
        meta=meta,
        ids=ids,
        t_max=t_max,
        sources=sources,
        versions=versions,
        columns=columns,
        compression=old_compression if keep and compression is None else compression,
        changed=bool(added or replaced or not keep),
    )


def _one_run(rows: np.ndarray) -> bool:
    return (
        bool(rows.size)
        and int(rows[-1]) - int(rows[0]) + 1 == rows.size
        and bool((np.diff(rows) == 1).all())
    )


def _fill_group(g: h5py.Group, plan: _GroupPlan) -> None:
    """Write the merged rows block by block (bounded memory, each block written once)."""
    n = len(plan.ids)
    datasets = ["values", "lengths", *plan.meta["extras"]]
    row_bytes = sum(
        int(np.prod(g[k].shape[1:], dtype=np.int64)) * g[k].dtype.itemsize for k in datasets
    )
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
                if _one_run(src) and _one_run(
                    dst
                ):  # the usual case: HDF5 reads straight into the block
                    rows = np.s_[int(src[0]) : int(src[-1]) + 1]
                    into = np.s_[int(dst[0]) : int(dst[-1]) + 1]
                    t = min(int(source.group["values"].shape[1]), plan.t_max)
                    source.group["values"].read_direct(
                        buffers["values"], np.s_[rows, :t], np.s_[into, :t]
                    )
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
                out,
                plan.name,
                keyed_by=meta["keyed_by"],
                dtype=meta["dtype"],
                dim=meta["dim"],
                t_max=plan.t_max,
                ids=plan.ids,
                extras=meta["extras"],
                provenance=meta["provenance"],
                versions=plan.versions,
                columns=plan.columns,
                compression=plan.compression,
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
    failure and concurrency rules (and ``aigvqa.cache.store``'s for atomicity).
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
                    old_failures = {
                        (fl.id, fl.extractor): fl.error
                        for fl in (read_failures(old) if old is not None else [])
                    }
                shard_names = set()
                shard_videos, shard_failures = [], []
                for path, s in zip(shard_paths, shards):
                    with guarded(Place(path, "shard")):
                        shard_names.update(feature_group_names(s))
                        shard_videos.append(read_videos(s))
                        shard_failures.append(read_failures(s))
                names = sorted(set(old_names) | shard_names)
                plans = [
                    _plan_group(
                        n, cache_path, old, shard_paths, shards, overwrite, report, compression
                    )
                    for n in names
                ]

                for rows in shard_videos:
                    for vid, row in rows.items():
                        if "source_order" not in row and "source_order" in videos.get(vid, {}):
                            # an extract's row for an imported video keeps its row in the
                            # imported file
                            row = {**row, "source_order": videos[vid]["source_order"]}
                        if "file_identity" not in row and "file_identity" in videos.get(vid, {}):
                            # the client's row of a video it did not decode (resumed by id)
                            # keeps the identity of the file its features were made from
                            row = {**row, "file_identity": videos[vid]["file_identity"]}
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
                failures = {
                    k: v
                    for k, v in failures.items()
                    if not _covered(k, final_ids, prompt_groups, videos)
                }
                report.failures_added = len(set(failures) - set(old_failures))
                report.failures_cleared = len(set(old_failures) - set(failures))

                changed = (
                    old is None
                    or old_format < FORMAT_VERSION
                    or any(p.changed for p in plans)
                    or report.videos_added
                    or report.videos_updated
                    or failures != old_failures
                )
                if changed:
                    _build_merged(tmp, plans, videos, failures)
            if changed:  # every file is closed now: Windows cannot replace an open file
                publish(tmp, cache_path)
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
