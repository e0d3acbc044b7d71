"""Read access to a cache or shard file: opening it, reading its parts, errors named.

Everything a damaged file makes h5py (or json / numpy on damaged attributes) raise
becomes a CacheError naming the file and the group (``guarded``, ``open_h5``,
``reading``). The part readers (group metadata, ids and lengths checked against the
cache's contract, the videos and failures tables, rows by index) serve the reader
(``aigvqa.cache.reader``), the checker (``aigvqa.cache.verify``), the description
(``aigvqa.cache.summary``) and the merge (``aigvqa.cache.merge``).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
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


def damaged(
    path: Path, where: str | None, err: BaseException, what: str = "cache file"
) -> CacheError:
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
            if what == "cache file"
            else f"{what} {path} does not exist (check the path)"
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
            raise CacheError(
                f"{path} is an HDF5 file but not an aigvqa cache (no format_version attribute)"
            )
        version = int(version)
        if version > FORMAT_VERSION:
            raise CacheError(
                f"{path} uses cache format {version}, newer than this aigvqa reads "
                f"({FORMAT_VERSION}); upgrade aigvqa (pip install -U aigvqa)"
            )
        if version not in READABLE_VERSIONS:
            raise CacheError(
                f"{path}: unknown cache format {version} (this aigvqa reads {READABLE_VERSIONS})"
            )
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


def check_group(
    g: h5py.Group, name: str, path: Path, what: str = "cache file"
) -> tuple[list[str], np.ndarray]:
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
            + ", ".join(f"{k} has {c}" for k, c in bad.items())
            + f"; the file is damaged: {fix}"
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
            labels[key[len(LABEL_PREFIX) :]] = g[key][()]
        elif key.startswith(GROUP_PREFIX):
            groups[key[len(GROUP_PREFIX) :]] = read_str(g[key])
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
