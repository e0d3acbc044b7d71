"""Reading a feature cache: aligned float32 arrays per extractor, labels joined.

Files are opened read-only, once per call. Writers never modify a cache in place (they
write a new file and ``os.replace`` it), so a reader can neither see a half-written file
nor block a writer (HDF5's shared read lock is on the old file, the writer locks only its
new temp file), and a long-lived ``FeatureCache`` sees the latest merged file on its next
call. HDF5's default locking mode is kept so that opening a cache that the same process
already holds open (h5py, pandas) works; on file systems without locks, set HDF5's own
switch ``HDF5_USE_FILE_LOCKING=FALSE``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aigvqa.cache.schema import (
    CORE_DATASETS,
    FAILURE_COLUMNS,
    FAILURES,
    FORMAT_VERSION,
    GROUP_PREFIX,
    LABEL_PREFIX,
    READABLE_VERSIONS,
    RESERVED_GROUPS,
    VIDEO_COLUMNS,
    VIDEO_CORE,
    VIDEOS,
    Failure,
    flatten,
    is_random_init,
    is_scale,
    read_attrs,
    read_str,
    weights_identity,
)
from aigvqa.errors import AigvqaError, CacheError

_LIST_LIMIT = 10  # ids named in an error message before "... and N more"
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError)
"""What h5py (and json / numpy on damaged attributes) raise on a damaged file."""
VERIFY_BLOCK_BYTES = 64 << 20  # ``verify`` reads big datasets in blocks of about this size


@dataclass
class GroupInfo:
    name: str
    n: int
    t_max: int
    dim: int
    dtype: str
    keyed_by: str
    provenance: dict[str, Any]
    versions: list[dict[str, str]]
    weights: str | None
    random_init: bool
    lengths_min: int
    lengths_median: float
    lengths_max: int
    extras: dict[str, list[int]] = field(default_factory=dict)  # name -> per-row shape
    checksums: bool = False  # Fletcher-32 on its datasets (format 2); False: unverified
    columns: list[str] | None = None  # names of the D features, when the extractor gave them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass
class VerifyReport:
    """What ``FeatureCache.verify`` found: ``problems`` empty means every byte checked out."""

    path: Path
    format_version: int | None = None
    checksums: bool = False  # the file carries checksums (format 2); False: values unverified
    datasets: int = 0  # datasets read in full
    problems: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # datasets read without a checksum

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            head = f"{self.path}: DAMAGED: {len(self.problems)} problem(s)"
            lines = [head] + [f"  {p}" for p in self.problems]
            lines.append(
                "Restore the file from a copy, or re-create it (`aigvqa extract MANIFEST --cache "
                f"{self.path} --overwrite`, or into a new --cache file)."
            )
            return "\n".join(lines)
        if not self.checksums:
            return (
                f"{self.path}: readable, UNVERIFIED: format {self.format_version} was written "
                f"without checksums, so damaged values cannot be detected ({self.datasets} "
                "datasets read; the structure is sound). The next merge into it (any extract "
                "or import-features run) rewrites it with checksums."
            )
        return f"{self.path}: OK: {self.datasets} datasets read in full, every checksum matches"


def _name_some(items: Sequence[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f" ... and {more} more" if more > 0 else "")


def _fix_hint(path: Path, what: str) -> str:
    if what == "shard":
        return (
            "delete it: its videos are computed again by the next run (ids already in the "
            "cache are skipped)"
        )
    return (
        f"see `aigvqa info --verify {path}` for every damaged part; restore the file from a copy "
        f"or re-create it (`aigvqa extract MANIFEST --cache {path}`)"
    )


def damaged(path: Path, where: str | None, err: BaseException, what: str = "cache file") -> CacheError:
    place = f"group {where!r}" if where else "its structure"
    detail = str(err).strip() or type(err).__name__
    return CacheError(
        f"{what} {path} is damaged: {place} cannot be read ({type(err).__name__}: {detail}); "
        + _fix_hint(path, what)
    )


class Place:
    """Where a read is (file, group), for the message of an error HDF5 raises there."""

    def __init__(self, path: Path, what: str = "cache file") -> None:
        self.path, self.what, self.group = Path(path), what, None


@contextlib.contextmanager
def guarded(place: Place) -> Iterator[Place]:
    """Turn every error a damaged file makes h5py raise into a CacheError naming it."""
    try:
        yield place
    except AigvqaError:
        raise
    except H5_ERRORS as err:
        raise damaged(place.path, place.group, err, place.what) from err


def open_h5(path: Path, what: str = "cache file") -> h5py.File:
    """Open a cache or shard read-only, turning every failure into a CacheError."""
    path = Path(path)
    if not path.exists():
        raise CacheError(
            f"{what} {path} does not exist; create it with "
            f"`aigvqa extract MANIFEST --cache {path}` (or check the path)"
            if what == "cache file" else f"{what} {path} does not exist (check the path)"
        )
    try:
        f = h5py.File(path, "r")
    except H5_ERRORS as err:
        raise CacheError(
            f"{what} {path} is not a readable HDF5 file ({err}); if a copy of it was "
            f"interrupted, restore it or re-create it with `aigvqa extract MANIFEST --cache {path}`"
        ) from err
    try:
        version = f.attrs.get("format_version")
        if version is None:
            raise CacheError(f"{path} is an HDF5 file but not an aigvqa cache (no format_version attribute)")
        version = int(version)
        if version > FORMAT_VERSION:
            raise CacheError(
                f"{path} uses cache format {version}, newer than this aigvqa reads "
                f"({FORMAT_VERSION}); upgrade aigvqa (pip install -U aigvqa)"
            )
        if version not in READABLE_VERSIONS:
            raise CacheError(f"{path}: unknown cache format {version} (this aigvqa reads {READABLE_VERSIONS})")
        read_attrs(f)  # format 2: the root's attributes match their sealed checksum
    except BaseException as err:
        f.close()
        if isinstance(err, H5_ERRORS) and not isinstance(err, AigvqaError):
            raise damaged(path, None, err, what) from err
        raise
    return f


@contextlib.contextmanager
def reading(path: Path, what: str = "cache file") -> Iterator[tuple[h5py.File, Place]]:
    """``with reading(path) as (f, place)``: the open file, errors mapped to CacheError
    (set ``place.group`` to name the group being read)."""
    place = Place(path, what)
    with guarded(place):
        f = open_h5(path, what)
        with f:
            yield f, place


def file_format(f: h5py.File) -> int:
    return int(f.attrs["format_version"])


def feature_group_names(f: h5py.File) -> list[str]:
    return sorted(k for k in f.keys() if k not in RESERVED_GROUPS and isinstance(f[k], h5py.Group))


def extra_names(g: h5py.Group) -> list[str]:
    """Per-row extras of a group: its datasets that are neither core nor dimension scales."""
    return sorted(k for k in g.keys() if k not in CORE_DATASETS and not is_scale(g[k]))


def group_meta(g: h5py.Group, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that decides whether rows may join this group (compared on merge).
    ``attrs``: ``read_attrs(g)`` when the caller has it (it checks a digest each call)."""
    values = g["values"]
    attrs = read_attrs(g) if attrs is None else attrs
    return {
        "keyed_by": str(attrs["keyed_by"]),
        "dtype": str(values.dtype),
        "dim": int(values.shape[2]),
        "extras": {
            k: {"shape": list(g[k].shape[1:]), "dtype": str(g[k].dtype)} for k in extra_names(g)
        },
        "provenance": json.loads(attrs["provenance"]),
    }


def keyed_by(g: h5py.Group) -> str:
    return str(read_attrs(g)["keyed_by"])


def group_versions(g: h5py.Group, attrs: dict[str, Any] | None = None) -> list[dict[str, str]]:
    return json.loads((read_attrs(g) if attrs is None else attrs).get("versions", "[]"))


def group_columns(g: h5py.Group, attrs: dict[str, Any] | None = None) -> list[str] | None:
    columns = (read_attrs(g) if attrs is None else attrs).get("columns")
    if columns is None:
        return None
    return [str(c) for c in (columns if isinstance(columns, list) else [columns])]


def has_checksums(g: h5py.Group) -> bool:
    return bool(g["values"].fletcher32)


def check_group(g: h5py.Group, name: str, path: Path, what: str = "cache file") -> tuple[list[str], np.ndarray]:
    """A group's ids and lengths, refusing what a writer never produces: rows of unequal
    count across datasets, duplicate ids, lengths outside 1..T_max (a zero length would
    make a row of padding only)."""
    values = g["values"]
    n, t_max = int(values.shape[0]), int(values.shape[1])
    ids = read_str(g["ids"])
    lengths = g["lengths"][()]
    counts = {"ids": len(ids), "lengths": int(lengths.shape[0])}
    counts.update({k: int(g[k].shape[0]) for k in extra_names(g)})
    bad = {k: c for k, c in counts.items() if c != n}
    fix = _fix_hint(path, what)
    if bad:
        raise CacheError(
            f"{what} {path}, group {name!r}: values has {n} rows but "
            + ", ".join(f"{k} has {c}" for k, c in bad.items()) + f"; the file is damaged: {fix}"
        )
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})
        raise CacheError(
            f"{what} {path}, group {name!r}: duplicate ids {_name_some(dupes)}; a row per id is "
            f"the cache's contract (the file was damaged or written by another tool): {fix}"
        )
    wrong = np.flatnonzero((lengths < 1) | (lengths > t_max))
    if wrong.size:
        shown = [f"{ids[i]} ({int(lengths[i])})" for i in wrong]
        raise CacheError(
            f"{what} {path}, group {name!r}: {wrong.size} row(s) with a length outside 1..{t_max} "
            f"(T_max): {_name_some(shown)}; such a row holds no features: {fix}"
        )
    return ids, lengths


def _decode_field(ds: h5py.Dataset) -> list[Any]:
    """A /videos field column back to Python values (None where a row lacks the field)."""
    kind = str(read_attrs(ds).get("kind", ""))
    if ds.dtype.kind in "OSU":
        return [v if v != "" else None for v in read_str(ds)]
    data = ds[()]
    out: list[Any] = []
    for x in data.tolist():
        if isinstance(x, float) and math.isnan(x):
            out.append(None)
        elif kind == "bool":
            out.append(bool(x))
        elif kind == "int":
            out.append(int(x))
        else:
            out.append(float(x) if kind == "float" else x)
    return out


def read_videos(f: h5py.File) -> dict[str, dict[str, Any]]:
    """video_id -> row (video_id, path, prompt, prompt_id, labels, groups, other fields),
    in table order."""
    if VIDEOS not in f:
        return {}
    g = f[VIDEOS]
    rows: dict[str, dict[str, Any]] = {}
    if file_format(f) == 1:
        cols = {c: read_str(g[c]) for c in VIDEO_COLUMNS}
        for i, vid in enumerate(cols["video_id"]):
            rows[vid] = {c: cols[c][i] for c in VIDEO_CORE}
            rows[vid]["labels"] = json.loads(cols["labels"][i])
            rows[vid]["groups"] = json.loads(cols["groups"][i])
        return rows
    core = {c: read_str(g[c]) for c in VIDEO_CORE}
    n = len(core["video_id"])
    labels, groups, fields = {}, {}, {}
    for key in sorted(g.keys()):
        if key in VIDEO_CORE:
            continue
        if g[key].shape != (n,):
            raise ValueError(f"/videos/{key} has shape {g[key].shape}, expected ({n},)")
        if key.startswith(LABEL_PREFIX):
            labels[key[len(LABEL_PREFIX):]] = g[key][()]
        elif key.startswith(GROUP_PREFIX):
            groups[key[len(GROUP_PREFIX):]] = read_str(g[key])
        else:
            fields[key] = _decode_field(g[key])
    for i, vid in enumerate(core["video_id"]):
        row: dict[str, Any] = {c: core[c][i] for c in VIDEO_CORE}
        row["labels"] = {k: float(v[i]) for k, v in labels.items() if not math.isnan(v[i])}
        row["groups"] = {k: v[i] for k, v in groups.items() if v[i] != ""}
        row.update({k: v[i] for k, v in fields.items() if v[i] is not None})
        rows[vid] = row
    return rows


def read_failures(f: h5py.File) -> list[Failure]:
    if FAILURES not in f:
        return []
    g = f[FAILURES]
    cols = [read_str(g[c]) for c in FAILURE_COLUMNS]
    return [Failure(*row) for row in zip(*cols)]


def group_info(g: h5py.Group, name: str) -> GroupInfo:
    attrs = read_attrs(g)
    meta = group_meta(g, attrs)
    lengths = g["lengths"][()]
    prov = meta["provenance"]
    return GroupInfo(
        name=name,
        n=int(g["values"].shape[0]),
        t_max=int(g["values"].shape[1]),
        dim=meta["dim"],
        dtype=meta["dtype"],
        keyed_by=meta["keyed_by"],
        provenance=prov,
        versions=group_versions(g, attrs),
        weights=weights_identity(prov),
        random_init=is_random_init(prov),
        lengths_min=int(lengths.min()) if lengths.size else 0,
        lengths_median=float(np.median(lengths)) if lengths.size else 0.0,
        lengths_max=int(lengths.max()) if lengths.size else 0,
        extras={k: v["shape"] for k, v in meta["extras"].items()},
        checksums=has_checksums(g),
        columns=group_columns(g, attrs),
    )


def take_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """ds[rows] for any row order / repeats, reading only what is needed."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)
    if rows.size == ds.shape[0] and (rows == np.arange(rows.size)).all():
        return ds[()]
    unique, inverse = np.unique(rows, return_inverse=True)
    if unique[-1] - unique[0] + 1 == unique.size:  # one contiguous run: a plain slice
        return ds[int(unique[0]) : int(unique[-1]) + 1][inverse]
    if unique.size * 4 >= ds.shape[0]:  # a large share: one sequential read beats a hyperslab list
        return ds[()][rows]
    return ds[unique][inverse]


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


def _read_blocks(ds: h5py.Dataset) -> int:
    """Read a dataset in full (in row blocks: bounded memory); return its element count."""
    if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype) is not None:
        return len(read_str(ds))
    if ds.shape is None or ds.ndim == 0:
        ds[()]
        return 1
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, VERIFY_BLOCK_BYTES // row_bytes)
    for start in range(0, ds.shape[0], step):
        ds[start : start + step]
    return int(ds.size)


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
        self, groups: str | Iterable[str], ids: Iterable[str] | None = None, *, stored_dtype: bool = False
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
                    f"`aigvqa extract MANIFEST --cache {self.path} --extractors {','.join(missing)}`"
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
                rows = np.fromiter((row_of[name][v] for v in selected), dtype=np.int64, count=len(selected))
                arrays[name] = convert(take_rows(g["values"], rows))
                lengths[name] = take_rows(g["lengths"], rows).astype(np.int64)
                for extra in extra_names(g):
                    extras[f"{name}/{extra}"] = convert(take_rows(g[extra], rows))

        label_names = sorted({k for v in selected if v in videos for k in videos[v]["labels"]})
        group_names = sorted({k for v in selected if v in videos for k in videos[v]["groups"]})
        labels = {
            k: np.array([videos[v]["labels"].get(k, math.nan) if v in videos else math.nan for v in selected],
                        dtype=np.float64)
            for k in label_names
        }
        groups_out = {
            k: np.array([videos[v]["groups"].get(k, "") if v in videos else "" for v in selected], dtype=object)
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
                    line += f"; {len(unknown)} of them are not in the videos table, so their prompt is unknown"
            problems.append(line)
        if problems:
            failed = {fl.id for fl in read_failures(f)}
            hint = (
                f"\nSome of them are listed as failures: see `aigvqa info {self.path}`."
                if any(v in failed for v in selected)
                else ""
            )
            raise CacheError(
                f"cache {self.path} lacks features for requested ids:\n" + "\n".join(problems)
                + f"\nCompute them with `aigvqa extract MANIFEST --cache {self.path} "
                f"--extractors {','.join(names)}` (ids already cached are skipped)." + hint
            )

    # -- integrity -------------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        """Read every dataset of the file in full and check it: Fletcher-32 checksums (HDF5
        verifies them on read), the sha256 of every utf-8 dataset, and the structure
        (equal row counts, unique ids, lengths in 1..T_max, parseable attributes). Never
        raises for a damaged file: the report lists each damaged part."""
        report = VerifyReport(self.path)
        try:
            f = open_h5(self.path)
        except CacheError as err:
            report.problems.append(str(err))
            return report
        with f:
            try:
                report.format_version = file_format(f)
                names = list(f.keys())
            except H5_ERRORS as err:
                report.problems.append(f"the file's root group cannot be read ({type(err).__name__}: {err})")
                return report
            report.checksums = report.format_version >= 2
            for name in names:
                self._verify_group(f, name, report)
        return report

    def _verify_group(self, f: h5py.File, name: str, report: VerifyReport) -> None:
        try:
            g = f[name]
            keys = sorted(g.keys())
        except H5_ERRORS as err:
            report.problems.append(f"group {name!r} cannot be opened ({type(err).__name__}: {err})")
            return
        sound = True
        for key in keys:
            try:
                ds = g[key]
                _read_blocks(ds)
                read_attrs(ds)
                report.datasets += 1
                if ds.dtype.kind not in "OSU" and not ds.fletcher32:
                    report.unverified.append(f"{name}/{key}")
            except H5_ERRORS as err:
                sound = False
                report.problems.append(f"{name}/{key}: cannot be read ({type(err).__name__}: {err})")
        if not sound:
            return
        try:
            read_attrs(g)
            if name == VIDEOS:
                read_videos(f)
            elif name == FAILURES:
                read_failures(f)
            else:
                group_meta(g)
                group_versions(g)
                check_group(g, name, self.path)
        except CacheError as err:
            report.problems.append(str(err))
        except H5_ERRORS as err:
            report.problems.append(f"group {name!r}: {type(err).__name__}: {err}")

    # -- description ---------------------------------------------------------------------
    def describe(self, max_failures: int = 5) -> dict[str, Any]:
        """Everything ``aigvqa info`` shows, as JSON-serialisable data."""
        with self._reading() as (f, place):
            format_version = file_format(f)
            kind = str(read_attrs(f).get("kind", "cache"))
            infos = []
            for n in feature_group_names(f):
                place.group = n
                infos.append(group_info(f[n], n).to_dict())
            place.group = VIDEOS
            videos = read_videos(f)
            place.group = FAILURES
            failures = read_failures(f)
        label_stats: dict[str, dict[str, float]] = {}
        for v in videos.values():
            for k, x in v["labels"].items():
                if x is None or (isinstance(x, float) and math.isnan(x)):
                    continue
                s = label_stats.setdefault(k, {"count": 0, "min": math.inf, "max": -math.inf})
                s["count"] += 1
                s["min"] = min(s["min"], x)
                s["max"] = max(s["max"], x)
        group_keys = sorted({k for v in videos.values() for k in v["groups"]})
        return {
            "file": str(self.path),
            "kind": kind,
            "format_version": format_version,
            "checksums": format_version >= 2 and all(g["checksums"] for g in infos),
            "size_bytes": self.path.stat().st_size,
            "groups": infos,
            "videos": len(videos),
            "labels": label_stats,
            "group_keys": {k: len({v["groups"].get(k) for v in videos.values()} - {None}) for k in group_keys},
            "failures": {
                "count": len(failures),
                "first": [asdict(fl) for fl in failures[:max_failures]],
            },
        }

    def summary(self, max_failures: int = 5) -> str:
        """The readable report ``aigvqa info CACHE`` prints."""
        return format_summary(self.describe(max_failures=max_failures))


def _short_weights(identity: str | None) -> str:
    if identity is None:
        return "- (no weights)"
    if is_random_init({"weights": identity}):
        return "RANDOM-INIT"
    return identity if len(identity) <= 23 else identity[:20] + "..."


def _short_config(prov: dict[str, Any], width: int = 96) -> str:
    parts = []
    for section in ("config", "view"):
        value = prov.get(section)
        if isinstance(value, dict) and value:
            items = " ".join(f"{k}={v}" for k, v in flatten(value).items())
            parts.append(f"{section}: {items}")
    text = "; ".join(parts) or "(no config recorded)"
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_summary(d: dict[str, Any]) -> str:
    lines = [
        f"file:     {d['file']}  ({_size(d['size_bytes'])})",
        f"format:   aigvqa {d['kind']} format {d['format_version']}, " + (
            "checksummed (verified on read; `aigvqa info --verify` checks every byte)"
            if d.get("checksums") else
            "UNVERIFIED: written without checksums (an older aigvqa), so damaged values "
            "cannot be detected; the next extract / import-features merge rewrites it with checksums"
        ),
    ]
    groups = d["groups"]
    if groups:
        lines.append(f"groups:   {len(groups)}")
        header = ["group", "keyed_by", "N", "T_max", "D", "dtype", "lengths min/med/max", "weights"]
        rows = [header]
        for g in groups:
            rows.append([
                g["name"], g["keyed_by"], str(g["n"]), str(g["t_max"]), str(g["dim"]), g["dtype"],
                f"{g['lengths_min']}/{g['lengths_median']:g}/{g['lengths_max']}",
                _short_weights(g["weights"]),
            ])
        lines += _table(rows)
        for g in groups:
            if g["random_init"]:
                lines.append(
                    f"  !! {g['name']}: WEIGHTS: RANDOM-INIT (not a real model) - these features are "
                    "noise, fit for tests and benchmarks only"
                )
        lines.append("config:")
        for g in groups:
            extras = ", ".join(f"{k} {tuple(v)}" for k, v in g["extras"].items())
            lines.append(f"  {g['name']}: {_short_config(g['provenance'])}")
            if extras:
                lines.append(f"  {' ' * len(g['name'])}  extras: {extras}")
    else:
        lines.append("groups:   none (nothing extracted yet)")
    lines.append(f"videos:   {d['videos']}")
    if d["labels"]:
        rows = [[k, f"{s['count']} values", f"range [{s['min']:.4g}, {s['max']:.4g}]"] for k, s in sorted(d["labels"].items())]
        lines.append("labels:")
        lines += _table(rows)
    else:
        lines.append("labels:   none")
    if d["group_keys"]:
        lines.append("grouping: " + ", ".join(f"{k} ({n} distinct)" for k, n in d["group_keys"].items()))
    fails = d["failures"]
    lines.append(f"failures: {fails['count']}")
    if fails["first"]:
        rows = [[fl["id"], fl["extractor"], fl["error"].strip().splitlines()[0][:100] if fl["error"].strip() else ""]
                for fl in fails["first"]]
        lines += _table(rows)
        if fails["count"] > len(fails["first"]):
            lines.append(f"  ... and {fails['count'] - len(fails['first'])} more (aigvqa info --failures N shows more)")
    return "\n".join(lines)
