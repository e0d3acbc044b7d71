"""Creating a file's HDF5 objects in the schema's layout, each with its checksum.

The layout itself is documented in ``aigvqa.cache.schema``. Every numeric dataset gets
Fletcher-32 checksums, every utf-8 dataset the sha256 of its strings, every object its
sealed attribute digest, and every axis its dimension scale. Both writers use these:
``store.write_shard`` (one shard) and ``merge.merge_shards`` (the merged cache).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from aigvqa import __version__
from aigvqa.cache.schema import (
    CHECKSUMS,
    FAILURE_COLUMNS,
    FAILURE_DIM,
    FAILURES,
    FEATURE,
    FORMAT_VERSION,
    GROUP_PREFIX,
    JOIN,
    LABEL_PREFIX,
    LIBVER,
    ROW_ORDER,
    STEP,
    STR,
    VIDEO_CORE,
    VIDEOS,
    Failure,
    chunk_rows,
    dumps,
    field_kind,
    seal_attrs,
    strings_digest,
)


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
    return g.create_dataset(
        name,
        data=data,
        maxshape=(None,),
        chunks=(max(1, min(len(data), 1 << 14)),),
        fletcher32=True,
    )


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
        "values",
        shape=(n, t_max, dim),
        maxshape=_maxshape((n, t_max, dim)),
        dtype=dtype,
        fillvalue=0,
        fletcher32=True,
        chunks=(min(max(1, n), chunk_rows(t_max * dim * itemsize, chunk_cap)), t_max, max(1, dim)),
        compression=compression,
    )
    lengths = g.create_dataset(
        "lengths",
        shape=(n,),
        maxshape=(None,),
        dtype="int32",
        fletcher32=True,
        chunks=(max(1, min(n, 1 << 14)),),
    )
    for axis, scale in enumerate((ids_ds, step, feature)):
        values.dims[axis].attach_scale(scale)
    lengths.dims[0].attach_scale(ids_ds)
    for extra, spec in extras.items():
        shape = tuple(int(s) for s in spec["shape"])
        edtype = np.dtype(spec["dtype"])
        row_bytes = int(np.prod(shape, dtype=np.int64)) * edtype.itemsize
        ds = g.create_dataset(
            extra,
            shape=(n, *shape),
            maxshape=_maxshape((n, *shape)),
            dtype=edtype,
            fletcher32=True,
            chunks=(min(max(1, n), chunk_rows(row_bytes, chunk_cap)), *(max(1, s) for s in shape)),
            compression=compression if np.issubdtype(edtype, np.floating) else None,
        )
        ds.dims[0].attach_scale(ids_ds)
        for axis, size in enumerate(shape, start=1):
            scale_name = f"{extra}_dim{axis}"
            ds.dims[axis].attach_scale(
                _scale(_checked_numbers(g, scale_name, np.arange(size, dtype=np.int32)), scale_name)
            )
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
        columns.append(
            _digest_strings(g, GROUP_PREFIX + key, [r["groups"].get(key, "") for r in rows])
        )
    for name in sorted({k for r in rows for k in r} - set(VIDEO_CORE) - {"labels", "groups"}):
        present = [r[name] for r in rows if name in r]
        kind = field_kind(name, present)
        if kind == "str":
            ds = _digest_strings(g, name, [r.get(name, "") for r in rows])
        elif kind in ("int", "bool") and len(present) == len(rows):
            ds = _checked_numbers(g, name, np.array([int(r[name]) for r in rows], dtype=np.int64))
        else:  # floats, and ints / bools some rows lack: NaN marks the missing ones
            ds = _checked_numbers(
                g, name, np.array([float(r.get(name, np.nan)) for r in rows], dtype=np.float64)
            )
        ds.attrs["kind"] = kind
        seal_attrs(ds)
        columns.append(ds)
    for ds in columns:
        ds.dims[0].attach_scale(video_id)


def _write_failures(f: h5py.File, failures: Iterable[Failure]) -> None:
    failures = sorted(failures, key=lambda fl: (fl.id, fl.extractor))
    g = f.create_group(FAILURES)
    index = _scale(
        _checked_numbers(g, FAILURE_DIM, np.arange(len(failures), dtype=np.int32)), FAILURE_DIM
    )
    for col in FAILURE_COLUMNS:
        _digest_strings(g, col, [getattr(fl, col) for fl in failures]).dims[0].attach_scale(index)
