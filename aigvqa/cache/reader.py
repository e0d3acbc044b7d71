"""Reading a feature cache: aligned float32 arrays per extractor, labels joined.

Files are opened read-only, once per call. Writers never modify a cache in place (they
write a new file and ``os.replace`` it), so a reader can neither see a half-written file
nor block a writer (HDF5's shared read lock is on the old file, the writer locks only its
new temp file), and a long-lived ``FeatureCache`` sees the latest merged file on its next
call. HDF5's default locking mode is kept so that opening a cache that the same process
already holds open (h5py, pandas) works; on file systems without locks, set HDF5's own
switch ``HDF5_USE_FILE_LOCKING=FALSE``.

The parts are read by ``aigvqa.cache.access`` (opening, errors named, part readers),
checked in full by ``aigvqa.cache.verify`` and described by ``aigvqa.cache.summary``;
their public names are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aigvqa.cache.access import (
    H5_ERRORS,
    GroupInfo,
    Place,
    _name_some,
    check_group,
    damaged,
    extra_names,
    feature_group_names,
    file_format,
    group_columns,
    group_info,
    group_meta,
    group_versions,
    guarded,
    has_checksums,
    keyed_by,
    open_h5,
    read_failures,
    read_videos,
    reading,
    take_rows,
)
from aigvqa.cache.schema import FAILURES, RESERVED_GROUPS, VIDEOS, Failure
from aigvqa.cache.summary import describe_file, format_summary
from aigvqa.cache.verify import VERIFY_BLOCK_BYTES, VerifyReport, verify_file
from aigvqa.errors import CacheError

__all__ = [
    "H5_ERRORS",
    "VERIFY_BLOCK_BYTES",
    "CacheData",
    "FeatureCache",
    "GroupInfo",
    "Place",
    "VerifyReport",
    "check_group",
    "damaged",
    "describe_file",
    "extra_names",
    "feature_group_names",
    "file_format",
    "format_summary",
    "group_columns",
    "group_info",
    "group_meta",
    "group_versions",
    "guarded",
    "has_checksums",
    "keyed_by",
    "open_h5",
    "read_failures",
    "read_videos",
    "reading",
    "take_rows",
    "verify_file",
]


@dataclass
class CacheData:
    """Rows aligned across groups, in the order of ``ids``.

    ``arrays[g]`` [N, T_max, D] float32 (zero-padded after ``lengths[g]``);
    ``extras["g/name"]`` [N, ...]; ``labels[name]`` [N] float (NaN where a video lacks that
    label); ``groups[name]`` [N] str ("" where missing).
    """

    ids: list[str]
    arrays: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    groups: dict[str, np.ndarray]


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


class FeatureCache:
    """Read-only view of a cache file (or a shard). Stores only the path: cheap to pickle."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r})"

    def _reading(self):
        return reading(self.path)

    # -- listing -----------------------------------------------------------------------
    def groups(self) -> list[str]:
        with self._reading() as (f, _):
            return feature_group_names(f)

    def _group(self, f: h5py.File, name: str) -> h5py.Group:
        if name in RESERVED_GROUPS or name not in f:
            have = feature_group_names(f)
            raise CacheError(
                f"cache {self.path} has no feature group {name!r} (it has: "
                f"{', '.join(have) or 'none'}); compute it with "
                f"`aigvqa extract MANIFEST --cache {self.path} --extractors {name}`"
            )
        return f[name]

    def group_info(self, name: str) -> GroupInfo:
        with self._reading() as (f, place):
            g = self._group(f, name)
            place.group = name
            return group_info(g, name)

    def ids(self, name: str) -> list[str]:
        """Stored ids of a group: video ids, or prompt ids for prompt-keyed groups."""
        with self._reading() as (f, place):
            g = self._group(f, name)
            place.group = name
            return check_group(g, name, self.path)[0]

    def failures(self) -> list[Failure]:
        with self._reading() as (f, place):
            place.group = FAILURES
            return read_failures(f)

    def videos(self) -> list[dict[str, Any]]:
        """Videos-table rows: video_id, path, prompt, prompt_id, labels {}, groups {}, and any
        other field the writer stored (e.g. source_order)."""
        with self._reading() as (f, place):
            place.group = VIDEOS
            return list(read_videos(f).values())

    # -- reading arrays ----------------------------------------------------------------
    def read(
        self,
        groups: str | Iterable[str],
        ids: Iterable[str] | None = None,
        *,
        stored_dtype: bool = False,
    ) -> CacheData:
        """Aligned rows of every requested group.

        ``ids=None`` reads the videos present in *all* requested groups, sorted by video id.
        Prompt-keyed groups are expanded to video rows via the videos table. Floating
        arrays come as float32 unless ``stored_dtype`` (float16 groups stay float16). A
        group with duplicate ids or a row of length 0, or a damaged byte anywhere in what
        is read, raises CacheError naming the file and group.
        """
        convert = (lambda a: a) if stored_dtype else _as_float32
        names = [groups] if isinstance(groups, str) else list(groups)
        if not names:
            raise ValueError("read() needs at least one group name")
        with self._reading() as (f, place):
            missing = [n for n in names if n in RESERVED_GROUPS or n not in f]
            if missing:
                have = feature_group_names(f)
                raise CacheError(
                    f"cache {self.path} lacks feature group(s) {', '.join(missing)} (it has: "
                    f"{', '.join(have) or 'none'}); compute them with "
                    f"`aigvqa extract MANIFEST --cache {self.path} "
                    f"--extractors {','.join(missing)}`"
                )
            place.group = VIDEOS
            videos = read_videos(f)
            row_of: dict[str, dict[str, int]] = {}  # group -> video id -> stored row
            for name in names:
                place.group = name
                g = f[name]
                stored = {s: i for i, s in enumerate(check_group(g, name, self.path)[0])}
                if keyed_by(g) == "prompt":
                    row_of[name] = {
                        vid: stored[v["prompt_id"]]
                        for vid, v in videos.items()
                        if v["prompt_id"] in stored
                    }
                else:
                    row_of[name] = stored

            if ids is None:
                common = set.intersection(*(set(r) for r in row_of.values()))
                selected = sorted(common)
            else:
                selected = [str(i) for i in ids]
                self._check_present(f, names, selected, row_of, videos)

            arrays, lengths, extras = {}, {}, {}
            for name in names:
                place.group = name
                g = f[name]
                rows = np.fromiter(
                    (row_of[name][v] for v in selected), dtype=np.int64, count=len(selected)
                )
                arrays[name] = convert(take_rows(g["values"], rows))
                lengths[name] = take_rows(g["lengths"], rows).astype(np.int64)
                for extra in extra_names(g):
                    extras[f"{name}/{extra}"] = convert(take_rows(g[extra], rows))

        label_names = sorted({k for v in selected if v in videos for k in videos[v]["labels"]})
        group_names = sorted({k for v in selected if v in videos for k in videos[v]["groups"]})
        labels = {
            k: np.array(
                [
                    videos[v]["labels"].get(k, math.nan) if v in videos else math.nan
                    for v in selected
                ],
                dtype=np.float64,
            )
            for k in label_names
        }
        groups_out = {
            k: np.array(
                [videos[v]["groups"].get(k, "") if v in videos else "" for v in selected],
                dtype=object,
            )
            for k in group_names
        }
        return CacheData(selected, arrays, lengths, extras, labels, groups_out)

    def read_stored(
        self, name: str, ids: Iterable[str] | None = None, *, stored_dtype: bool = False
    ) -> CacheData:
        """Rows of one group by its own ids (prompt ids for a prompt-keyed group: nothing
        is expanded to videos), in stored order (sorted) when ``ids`` is None; ``labels``
        and ``groups`` are left empty. Floating arrays as float32 unless ``stored_dtype``."""
        convert = (lambda a: a) if stored_dtype else _as_float32
        with self._reading() as (f, place):
            g = self._group(f, name)
            place.group = name
            stored = check_group(g, name, self.path)[0]
            if ids is None:
                selected, rows = stored, np.arange(len(stored), dtype=np.int64)
            else:
                index = {s: i for i, s in enumerate(stored)}
                selected = [str(i) for i in ids]
                absent = [i for i in selected if i not in index]
                if absent:
                    raise CacheError(
                        f"cache {self.path}, group {name!r}: no rows for ids {_name_some(absent)}"
                    )
                rows = np.array([index[i] for i in selected], dtype=np.int64)
            arrays = {name: convert(take_rows(g["values"], rows))}
            lengths = {name: take_rows(g["lengths"], rows).astype(np.int64)}
            extras = {f"{name}/{e}": convert(take_rows(g[e], rows)) for e in extra_names(g)}
        return CacheData(list(selected), arrays, lengths, extras, {}, {})

    def _check_present(self, f, names, selected, row_of, videos) -> None:
        problems = []
        for name in names:
            absent = [v for v in dict.fromkeys(selected) if v not in row_of[name]]
            if not absent:
                continue
            line = f"  {name}: {len(absent)} of {len(selected)} ids missing ({_name_some(absent)})"
            if keyed_by(f[name]) == "prompt":
                unknown = [v for v in absent if v not in videos]
                if unknown:
                    line += (
                        f"; {len(unknown)} of them are not in the videos table, "
                        "so their prompt is unknown"
                    )
            problems.append(line)
        if problems:
            failed = {fl.id for fl in read_failures(f)}
            hint = (
                f"\nSome of them are listed as failures: see `aigvqa info {self.path}`."
                if any(v in failed for v in selected)
                else ""
            )
            raise CacheError(
                f"cache {self.path} lacks features for requested ids:\n"
                + "\n".join(problems)
                + f"\nCompute them with `aigvqa extract MANIFEST --cache {self.path} "
                f"--extractors {','.join(names)}` (ids already cached are skipped)." + hint
            )

    # -- integrity -------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Read every dataset of the file in full and check it (``verify.verify_file``):
        never raises for a damaged file, the report lists each damaged part."""
        return verify_file(self.path)

    # -- description ---------------------------------------------------------------------
    def describe(self, max_failures: int = 5) -> dict[str, Any]:
        """Everything ``aigvqa info`` shows, as JSON-serialisable data."""
        return describe_file(self.path, max_failures=max_failures)

    def summary(self, max_failures: int = 5) -> str:
        """The readable report ``aigvqa info CACHE`` prints."""
        return format_summary(self.describe(max_failures=max_failures))
