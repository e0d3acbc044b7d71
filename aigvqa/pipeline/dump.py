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

Every dump also writes ``videos.csv`` (video_id, path, prompt_id, prompt, one column per
label and per grouping key, then any other per-video field such as source_order), so
labels travel with the features, and ``failures.csv`` (id, extractor, error; only the
header when nothing failed).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigvqa.errors import AigvqaError, CacheError

FORMATS = ("npy", "csv")
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
            report.files.append(_dump_csv(group, out, pool, chunk_rows))
        report.rows[name] = len(group.ids)
        report.keyed_by[name] = "prompt" if group.by_prompt else "video"
    if per_prompt:
        report.files.append(_write_video_prompt_map(videos, out / VIDEO_PROMPT_MAP))
    report.files.append(_write_videos_csv(videos, out / "videos.csv"))
    path = out / "failures.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "extractor", "error"])
        writer.writerows((f.id, f.extractor, f.error) for f in reader.failures())
    report.files.append(path)
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


def _dump_csv(group: _Group, out: Path, pool: str, chunk_rows: int) -> Path:
    name, info = group.name, group.info
    t_max, dim = max(1, info.t_max), info.dim
    if pool == "mean":
        header = [f"{name}.{c}" for c in group.columns]
    else:
        header = [f"{name}.t{t}.{c}" for t in range(t_max) for c in group.columns]
    path = out / f"{name}.csv"
    extra_columns = None
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for part in _chunks(group.ids, chunk_rows):
            data = group.read(part)
            if extra_columns is None:  # the extras' widths are known from the first rows
                extra_columns = _extra_columns(name, data.extras)
                extra_header = [c for cols in extra_columns.values() for c in cols]
                writer.writerow([group.id_column, *header, *extra_header])
            values, lengths = group.cast(data.arrays[name]), data.lengths[name]
            extras = {key: group.cast(data.extras[key]) for key in extra_columns}
            for i, row_id in enumerate(part):
                valid = values[i, : lengths[i]]
                if pool == "mean":
                    # the mean of float16 values is taken in float64, then written in full
                    cells = (
                        [_fmt(x) for x in valid.astype(np.float64).mean(axis=0)]
                        if len(valid)
                        else [""] * dim
                    )
                else:
                    cells = [_fmt(x) for x in valid.reshape(-1)]
                    cells += [""] * (t_max * dim - len(cells))
                for key in extras:
                    cells += [_fmt(x) for x in np.ravel(extras[key][i])]
                writer.writerow([row_id, *cells])
        if extra_columns is None:  # a group without rows: the header alone
            writer.writerow([group.id_column, *header])
    return path


def _fmt(x) -> str:
    """The shortest text that reads back as the same number in its own dtype (float16,
    float32 or float64 alike)."""
    if isinstance(x, np.floating):
        return (
            np.format_float_positional(x, unique=True, trim="-")
            if np.isfinite(x)
            else str(float(x))
        )
    return repr(float(x))


def _write_video_prompt_map(videos: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "prompt_id"])
        for v in sorted(videos, key=lambda r: r["video_id"]):
            if v["prompt_id"]:
                writer.writerow([v["video_id"], v["prompt_id"]])
    return path


_VIDEO_KEYS = ("video_id", "path", "prompt", "prompt_id", "labels", "groups")


def _write_videos_csv(videos: list[dict], path: Path) -> Path:
    label_names = sorted({k for v in videos for k in v["labels"]})
    group_names = sorted({k for v in videos for k in v["groups"]})
    fields = sorted({k for v in videos for k in v} - set(_VIDEO_KEYS))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["video_id", "path", "prompt_id", "prompt"]
            + [f"label.{k}" for k in label_names]
            + [f"group.{k}" for k in group_names]
            + fields
        )
        for v in sorted(videos, key=lambda r: r["video_id"]):
            writer.writerow(
                [v["video_id"], v["path"], v["prompt_id"], v["prompt"]]
                + ["" if v["labels"].get(k) is None else _fmt(v["labels"][k]) for k in label_names]
                + [v["groups"].get(k, "") for k in group_names]
                + ["" if v.get(k) is None else v[k] for k in fields]
            )
    return path
