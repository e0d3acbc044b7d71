"""``aigvqa dump``: export cached features for outside tools (numpy, pandas, R, Excel).

Rows are sorted by id, as in the cache. A video-keyed group has one row per video; a
prompt-keyed group (text features) has one row per **prompt**, as the cache stores it
(10 videos of one prompt share one row: a clip-text dump stays the size of the cache, not
x videos-per-prompt), and ``video_prompt.csv`` maps each video to its prompt id. Pass
``expand_prompts=True`` (``--expand-prompts``) for one row per video instead. Values keep
the cache's dtype (float16 stays float16) unless ``dtype`` widens them ("float32" /
"float64"). Memory stays bounded: groups are read and written ``chunk_rows`` rows at a time.

``format="npy"`` writes, per group ``G`` (file names keep the group name, e.g. clip-frames):

    G.values.npy    [N, T_max, D], zero-padded after each row's length
    G.lengths.npy   [N] int64, valid time steps of each row
    G.ids.npy       [N] unicode ids: video ids, or prompt ids for a prompt-keyed group
                    (``np.load`` needs no pickle)
    G.<extra>.npy   [N, ...] per-row extras (clip-text: pooled, mask)
    G.columns.txt   the D column names, one per line, when the extractor names them

``format="csv"`` writes ``G.csv`` per group: an id column (``video_id``, or ``prompt_id``
for a prompt-keyed group) then features, by ``pool``:

    "mean"     D columns ``G.<name>`` (the extractor's column names, e.g.
               ``handcrafted.sharpness_laplacian_var``, else ``G.0 .. G.{D-1}``): the mean
               over the row's valid time steps (a length-1 group is its vector as is)
    "flatten"  T_max x D columns ``G.t{t}.<name>``: every time step, cells past the row's
               length left empty (wide; meant for short sequences)

then, for each per-row float extra ``e``, its columns ``G.e.<j>`` (clip-text's ``pooled``
embedding: a CSV of clip-text holds the token mean *and* the pooled vector). Column names
are the extractor's (the cache's ``columns`` attribute), else the column ranges the group's
provenance records (blip-itm: ``blip-itm.match.0``, ``blip-itm.image.0``, ...), else numbers;
``G.columns.txt`` of an npy dump lists the same names.

``format="jsonl"`` and ``format="parquet"`` (needs pyarrow) write the same tables, with
the same columns in the same order, as ``G.jsonl`` (one JSON object per row) or
``G.parquet`` (one row group per ``chunk_rows`` rows; written to a hidden temporary file
and renamed into place when complete, so an interrupted dump leaves no corrupt Parquet
file); ``aigvqa.pipeline.tables`` says how values are written. Their number columns are
numbers: in Parquet typed as the cache's dtype (a mean float64, float16 widened to
float32, which holds it exactly), in JSONL as the CSV's text; a cell the CSV leaves empty
is null.

Every dump also writes ``videos.csv`` (video_id, path, prompt_id, prompt, one column per
label and per grouping key, then any other per-video field such as source_order), so
labels travel with the features, and ``failures.csv`` (id, extractor, error; only the
header when nothing failed); a jsonl or parquet dump writes these (and
``video_prompt.csv``) as ``.jsonl`` or ``.parquet`` files too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError, CacheError
from aigvqa.pipeline.tables import TableWriter, import_pyarrow

TABLE_FORMATS = ("csv", "jsonl", "parquet")  # one table per group, the suffix the format
FORMATS = ("npy", *TABLE_FORMATS)
CSV_POOLS = ("mean", "flatten")
DTYPES = ("cache", "float32", "float64")
VIDEO_PROMPT_MAP = "video_prompt.csv"


class DumpError(AigvqaError, ValueError):
    """A dump was asked for with an unknown format / pool / dtype or an unusable output folder."""


@dataclass
class DumpReport:
    out: Path
    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # group -> rows written
    keyed_by: dict[str, str] = field(default_factory=dict)  # group -> "video" | "prompt" rows

    def summary(self) -> str:
        groups = ", ".join(
            f"{g} ({n} {'prompt ' if self.keyed_by.get(g) == 'prompt' else ''}rows)"
            for g, n in self.rows.items()
        )
        return f"wrote {len(self.files)} files to {self.out}: {groups}"


def dump(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "npy",
    groups: Sequence[str] | None = None,
    pool: str = "mean",
    dtype: str = "cache",
    expand_prompts: bool = False,
    chunk_rows: int = 1024,
) -> DumpReport:
    """Export ``groups`` (default: all) of ``cache`` into folder ``out`` (created).

    ``dtype``: "cache" keeps each group's stored dtype; "float32" / "float64" widen.
    ``expand_prompts``: prompt-keyed groups as one row per video instead of per prompt."""
    from aigvqa.cache.reader import FeatureCache

    if format not in FORMATS:
        raise DumpError(f"unknown dump format {format!r}; use one of {', '.join(FORMATS)}")
    if pool not in CSV_POOLS:
        raise DumpError(f"unknown csv pooling {pool!r}; use one of {', '.join(CSV_POOLS)}")
    if dtype not in DTYPES:
        raise DumpError(f"unknown dump dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if format == "parquet":  # before anything is read or written
        import_pyarrow(Path(out), DumpError)
    reader = FeatureCache(cache)
    available = reader.groups()
    names = list(groups) if groups else available
    unknown = [g for g in names if g not in available]
    if unknown:
        raise CacheError(
            f"cache {reader.path} has no group(s) {', '.join(unknown)} (it has: "
            f"{', '.join(available) or 'none'}); pick from those with --groups"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DumpError(f"--out {out} exists and is not a folder; give a folder path")
    out.mkdir(parents=True, exist_ok=True)

    report = DumpReport(out=out)
    # the tables beside the features: in the dump's table format, CSV beside .npy files
    tables = format if format in TABLE_FORMATS else "csv"
    videos = reader.videos()
    per_prompt = []
    for name in names:
        info = reader.group_info(name)
        group = _Group(reader, name, info, videos, expand_prompts, dtype)
        if group.by_prompt:
            per_prompt.append(name)
        if format == "npy":
            report.files += _dump_npy(group, out, chunk_rows)
        else:
            report.files.append(_dump_table(group, out, format, pool, chunk_rows))
        report.rows[name] = len(group.ids)
        report.keyed_by[name] = "prompt" if group.by_prompt else "video"
    if per_prompt:
        path = out / Path(VIDEO_PROMPT_MAP).with_suffix(f".{tables}")
        report.files.append(_write_video_prompt_map(videos, path, tables))
    report.files.append(_write_videos_table(videos, out / f"videos.{tables}", tables))
    failures = reader.failures()
    report.files.append(
        _write_rows(
            out / f"failures.{tables}",
            tables,
            ["id", "extractor", "error"],
            [[f.id, f.extractor, f.error] for f in failures],
        )
    )
    return report


class _Group:
    """What to export of one cache group: its row ids and how to read a chunk of them."""

    def __init__(self, reader, name, info, videos, expand_prompts: bool, dtype: str) -> None:
        self.reader, self.name, self.info = reader, name, info
        self.by_prompt = info.keyed_by == "prompt" and not expand_prompts
        self.dtype = None if dtype == "cache" else np.dtype(dtype)
        if self.by_prompt:
            self.ids = reader.ids(name)  # stored order: sorted prompt ids
        elif info.keyed_by == "prompt":
            have = set(reader.ids(name))
            self.ids = sorted(v["video_id"] for v in videos if v["prompt_id"] in have)
        else:
            self.ids = sorted(reader.ids(name))
        self.id_column = "prompt_id" if self.by_prompt else "video_id"
        self.columns, self.named = _column_names(info)

    def read(self, ids: list[str]):
        if self.by_prompt:
            data = self.reader.read_stored(self.name, ids, stored_dtype=True)
        else:
            data = self.reader.read([self.name], ids=ids, stored_dtype=True)
        return data

    def cast(self, a: np.ndarray) -> np.ndarray:
        if self.dtype is not None and np.issubdtype(a.dtype, np.floating):
            return a.astype(self.dtype)
        return a


def _column_names(info) -> tuple[list[str], bool]:
    """The D column names of a group and whether the cache names them: the extractor's
    names (the ``columns`` attribute), else the column ranges its provenance records
    (blip-itm: ``match.0, match.1, image.0 ..``), else the column numbers."""
    dim = info.dim
    if info.columns and len(info.columns) == dim:
        return list(info.columns), True
    names = [str(d) for d in range(dim)]
    ranges = (info.provenance or {}).get("columns") or {}
    named = False
    for label, (start, stop) in ranges.items():
        if 0 <= start < stop <= dim:
            names[start:stop] = [f"{label}.{j}" for j in range(stop - start)]
            named = True
    return names, named


def _extra_columns(name: str, extras: dict) -> dict[str, list[str]]:
    """CSV columns of a group's per-row float extras (clip-text's ``pooled``: one vector per
    row); boolean extras (token masks) are left out: the lengths already carry them."""
    columns = {}
    for key, array in extras.items():
        extra = key.split("/", 1)[1]
        if not np.issubdtype(array.dtype, np.floating):
            continue
        width = int(np.prod(array.shape[1:], dtype=np.int64))
        columns[key] = (
            [f"{name}.{extra}"]
            if array.ndim == 1
            else [f"{name}.{extra}.{j}" for j in range(width)]
        )
    return columns


def _chunks(ids: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(ids), max(1, size)):
        yield list(ids[start : start + size])


def _dump_npy(group: _Group, out: Path, chunk_rows: int) -> list[Path]:
    name, info = group.name, group.info
    n, t_max, dim = len(group.ids), max(1, info.t_max), info.dim
    values_path = out / f"{name}.values.npy"
    lengths_path = out / f"{name}.lengths.npy"
    ids_path = out / f"{name}.ids.npy"
    value_dtype = group.dtype or np.dtype(info.dtype)
    values = np.lib.format.open_memmap(
        values_path, mode="w+", dtype=value_dtype, shape=(n, t_max, dim)
    )
    lengths = np.zeros(n, dtype=np.int64)
    extras: dict[str, np.memmap] = {}
    row = 0
    for part in _chunks(group.ids, chunk_rows):
        data = group.read(part)
        k = len(part)
        values[row : row + k] = group.cast(data.arrays[name])
        lengths[row : row + k] = data.lengths[name]
        for key, array in data.extras.items():
            extra = key.split("/", 1)[1]
            array = group.cast(array)
            if extra not in extras:
                extras[extra] = np.lib.format.open_memmap(
                    out / f"{name}.{extra}.npy",
                    mode="w+",
                    dtype=array.dtype,
                    shape=(n, *array.shape[1:]),
                )
            extras[extra][row : row + k] = array
        row += k
    values.flush()
    del values
    for memmap in extras.values():
        memmap.flush()
    np.save(lengths_path, lengths)
    np.save(ids_path, np.asarray(group.ids, dtype=str))
    files = [values_path, lengths_path, ids_path] + [out / f"{name}.{e}.npy" for e in extras]
    if group.named:
        columns_path = out / f"{name}.columns.txt"
        columns_path.write_text("".join(f"{c}\n" for c in group.columns), encoding="utf-8")
        files.append(columns_path)
    return files


def _dump_table(group: _Group, out: Path, fmt: str, pool: str, chunk_rows: int) -> Path:
    """``G.csv`` / ``G.jsonl`` / ``G.parquet``: the id, the features pooled by ``pool``, the
    per-row float extras; ``chunk_rows`` rows at a time."""
    name, info = group.name, group.info
    t_max = max(1, info.t_max)
    if pool == "mean":
        header = [f"{name}.{c}" for c in group.columns]
    else:
        header = [f"{name}.t{t}.{c}" for t in range(t_max) for c in group.columns]
    path = out / f"{name}.{fmt}"
    writer = None
    try:
        for part in _chunks(group.ids, chunk_rows):
            data = group.read(part)
            if writer is None:  # the extras' widths are known from the first rows
                extra_columns = _extra_columns(name, data.extras)
                extra_header = [c for cols in extra_columns.values() for c in cols]
                writer = TableWriter(
                    path, fmt, [group.id_column, *header, *extra_header], DumpError
                )
            blocks = [_feature_block(group, data, part, pool, t_max)]
            blocks += [(_flat(group.cast(data.extras[key])), None) for key in extra_columns]
            writer.write([(part, None), *_block_columns(blocks)])
        if writer is None:  # a group without rows: the header alone
            writer = TableWriter(path, fmt, [group.id_column, *header], DumpError)
            dtype = np.float64 if pool == "mean" else group.dtype or np.dtype(info.dtype)
            empty = np.zeros((0, len(header)), dtype=dtype)
            writer.write([([], None), *_block_columns([(empty, None)])])
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    writer.close()
    return path


def _feature_block(group: _Group, data, part: list[str], pool: str, t_max: int):
    """(values [k, C], present [k, C]) of a chunk's feature columns: ``mean``, the mean of
    each row's valid steps in float64 (not present for a row without any); ``flatten``,
    every step in the group's dtype (not present past the row's length)."""
    name, dim = group.name, group.info.dim
    values, lengths = group.cast(data.arrays[name]), data.lengths[name]
    k = len(part)
    if pool == "mean":
        block = np.zeros((k, dim), dtype=np.float64)
        present = np.zeros((k, dim), dtype=bool)
    else:
        block = np.zeros((k, t_max * dim), dtype=values.dtype)
        present = np.zeros((k, t_max * dim), dtype=bool)
    for i in range(k):
        valid = values[i, : lengths[i]]
        if pool == "mean":
            if len(valid):
                # the mean of float16 values is taken in float64, then written in full
                block[i] = valid.astype(np.float64).mean(axis=0)
                present[i] = True
        else:
            cells = valid.reshape(-1)
            block[i, : len(cells)] = cells
            present[i, : len(cells)] = True
    return block, present


def _flat(array: np.ndarray) -> np.ndarray:
    """Per-row extras as [k, width]: a vector per row, or one value per row."""
    return array.reshape(len(array), -1)


def _block_columns(blocks) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(values, present) blocks [k, w] as their w columns each, what ``TableWriter`` takes."""
    return [
        (values[:, j], None if present is None else present[:, j])
        for values, present in blocks
        for j in range(values.shape[1])
    ]


def _write_rows(path: Path, fmt: str, header: list[str], rows: list[list[Any]]) -> Path:
    """A small table (videos, failures, the prompt map) in one chunk; None: an empty cell."""
    with TableWriter(path, fmt, header, DumpError) as writer:
        writer.write([(list(column), None) for column in zip(*rows)] or [([], None)] * len(header))
    return path


def _write_video_prompt_map(videos: list[dict], path: Path, fmt: str) -> Path:
    rows = [
        [v["video_id"], v["prompt_id"]]
        for v in sorted(videos, key=lambda r: r["video_id"])
        if v["prompt_id"]
    ]
    return _write_rows(path, fmt, ["video_id", "prompt_id"], rows)


_VIDEO_KEYS = ("video_id", "path", "prompt", "prompt_id", "labels", "groups")


def _write_videos_table(videos: list[dict], path: Path, fmt: str) -> Path:
    label_names = sorted({k for v in videos for k in v["labels"]})
    group_names = sorted({k for v in videos for k in v["groups"]})
    fields = sorted({k for v in videos for k in v} - set(_VIDEO_KEYS))
    header = (
        ["video_id", "path", "prompt_id", "prompt"]
        + [f"label.{k}" for k in label_names]
        + [f"group.{k}" for k in group_names]
        + fields
    )
    rows = [
        [v["video_id"], v["path"], v["prompt_id"], v["prompt"]]
        + [None if v["labels"].get(k) is None else float(v["labels"][k]) for k in label_names]
        + [v["groups"].get(k) for k in group_names]
        + [v.get(k) for k in fields]
        for v in sorted(videos, key=lambda r: r["video_id"])
    ]
    return _write_rows(path, fmt, header, rows)
