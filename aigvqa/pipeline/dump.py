"""``aigvqa dump``: export cached features for outside tools (numpy, pandas, R, Excel).

Every export is keyed by **video id**: prompt-keyed groups (text features) are expanded
to one row per video through the cache's videos table, so all files of a dump line up
by id. Rows are sorted by video id. Features are written as float32 whatever the cache
dtype. Memory stays bounded: groups are read and written ``chunk_rows`` rows at a time.

``format="npy"`` writes, per group ``G`` (file names keep the group name, e.g. clip-frames):

    G.values.npy    [N, T_max, D] float32, zero-padded after each row's length
    G.lengths.npy   [N] int64, valid time steps of each row
    G.ids.npy       [N] unicode video ids (``np.load`` needs no pickle)
    G.<extra>.npy   [N, ...] per-row extras (clip-text: pooled, mask)

``format="csv"`` writes ``G.csv`` per group: a ``video_id`` column then features, by
``pool``:

    "mean"     D columns ``G.0 .. G.{D-1}``: the mean over the row's valid time steps
               (what classical regressors take; a length-1 group is its vector as is)
    "flatten"  T_max x D columns ``G.t{t}.{d}``: every time step, cells past the row's
               length left empty (wide; meant for short sequences)

Both formats also write ``videos.csv`` (video_id, path, prompt_id, prompt, one column per
label and per grouping key) so labels travel with the features, and ``failures.csv``
(id, extractor, error) when the cache lists failures.
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


class DumpError(AigvqaError, ValueError):
    """A dump was asked for with an unknown format / pool or an unusable output folder."""


@dataclass
class DumpReport:
    out: Path
    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # group -> video rows written

    def summary(self) -> str:
        groups = ", ".join(f"{g} ({n} rows)" for g, n in self.rows.items())
        return f"wrote {len(self.files)} files to {self.out}: {groups}"


def dump(
    cache: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "npy",
    groups: Sequence[str] | None = None,
    pool: str = "mean",
    chunk_rows: int = 1024,
) -> DumpReport:
    """Export ``groups`` (default: all) of ``cache`` into folder ``out`` (created)."""
    from aigvqa.cache.reader import FeatureCache

    if format not in FORMATS:
        raise DumpError(f"unknown dump format {format!r}; use one of {', '.join(FORMATS)}")
    if pool not in CSV_POOLS:
        raise DumpError(f"unknown csv pooling {pool!r}; use one of {', '.join(CSV_POOLS)}")
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
    for name in names:
        ids = video_ids_of(reader, name, videos)
        info = reader.group_info(name)
        if format == "npy":
            report.files += _dump_npy(reader, name, ids, info, out, chunk_rows)
        else:
            report.files.append(_dump_csv(reader, name, ids, info, out, pool, chunk_rows))
        report.rows[name] = len(ids)
    report.files.append(_write_videos_csv(videos, out / "videos.csv"))
    failures = reader.failures()
    if failures:
        path = out / "failures.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "extractor", "error"])
            writer.writerows((f.id, f.extractor, f.error) for f in failures)
        report.files.append(path)
    return report


def video_ids_of(reader, name: str, videos: list[dict] | None = None) -> list[str]:
    """Sorted video ids with features in group ``name`` (prompt groups via the videos table)."""
    stored = reader.ids(name)
    if reader.group_info(name).keyed_by != "prompt":
        return sorted(stored)
    have = set(stored)
    rows = videos if videos is not None else reader.videos()
    return sorted(v["video_id"] for v in rows if v["prompt_id"] in have)


def _chunks(ids: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(ids), max(1, size)):
        yield list(ids[start : start + size])


def _dump_npy(reader, name, ids, info, out: Path, chunk_rows: int) -> list[Path]:
    n, t_max, dim = len(ids), max(1, info.t_max), info.dim
    values_path = out / f"{name}.values.npy"
    lengths_path = out / f"{name}.lengths.npy"
    ids_path = out / f"{name}.ids.npy"
    values = np.lib.format.open_memmap(values_path, mode="w+", dtype=np.float32, shape=(n, t_max, dim))
    lengths = np.zeros(n, dtype=np.int64)
    extras: dict[str, np.memmap] = {}
    row = 0
    for part in _chunks(ids, chunk_rows):
        data = reader.read([name], ids=part)
        k = len(part)
        values[row : row + k] = data.arrays[name]
        lengths[row : row + k] = data.lengths[name]
        for key, array in data.extras.items():
            extra = key.split("/", 1)[1]
            if extra not in extras:
                extras[extra] = np.lib.format.open_memmap(
                    out / f"{name}.{extra}.npy", mode="w+", dtype=array.dtype, shape=(n, *array.shape[1:])
                )
            extras[extra][row : row + k] = array
        row += k
    values.flush()
    del values
    for memmap in extras.values():
        memmap.flush()
    np.save(lengths_path, lengths)
    np.save(ids_path, np.asarray(ids, dtype=str))
    return [values_path, lengths_path, ids_path] + [out / f"{name}.{e}.npy" for e in extras]


def _dump_csv(reader, name, ids, info, out: Path, pool: str, chunk_rows: int) -> Path:
    t_max, dim = max(1, info.t_max), info.dim
    if pool == "mean":
        header = [f"{name}.{d}" for d in range(dim)]
    else:
        header = [f"{name}.t{t}.{d}" for t in range(t_max) for d in range(dim)]
    path = out / f"{name}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", *header])
        for part in _chunks(ids, chunk_rows):
            data = reader.read([name], ids=part)
            values, lengths = data.arrays[name], data.lengths[name]
            for i, video_id in enumerate(part):
                valid = values[i, : lengths[i]]
                if pool == "mean":
                    cells = [_fmt(x) for x in valid.mean(axis=0)] if len(valid) else [""] * dim
                else:
                    cells = [_fmt(x) for x in valid.reshape(-1)]
                    cells += [""] * (t_max * dim - len(cells))
                writer.writerow([video_id, *cells])
    return path


def _fmt(x: float) -> str:
    return f"{float(x):.9g}"  # 9 significant digits round-trip any float32 exactly


def _write_videos_csv(videos: list[dict], path: Path) -> Path:
    label_names = sorted({k for v in videos for k in v["labels"]})
    group_names = sorted({k for v in videos for k in v["groups"]})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["video_id", "path", "prompt_id", "prompt"]
            + [f"label.{k}" for k in label_names]
            + [f"group.{k}" for k in group_names]
        )
        for v in sorted(videos, key=lambda r: r["video_id"]):
            writer.writerow(
                [v["video_id"], v["path"], v["prompt_id"], v["prompt"]]
                + ["" if v["labels"].get(k) is None else _fmt(v["labels"][k]) for k in label_names]
                + [v["groups"].get(k, "") for k in group_names]
            )
    return path
