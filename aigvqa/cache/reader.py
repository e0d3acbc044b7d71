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

import json
import math
from collections.abc import Iterable, Sequence
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
    RESERVED_GROUPS,
    SOURCE_ORDER,
    VIDEO_COLUMNS,
    VIDEOS,
    Failure,
    flatten,
    is_random_init,
    read_str,
    weights_identity,
)
from aigvqa.errors import CacheError

_LIST_LIMIT = 10  # ids named in an error message before "... and N more"


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


def _name_some(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f" ... and {more} more" if more > 0 else "")


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
    except OSError as err:
        raise CacheError(
            f"{what} {path} is not a readable HDF5 file ({err}); if a copy of it was "
            f"interrupted, restore it or re-create it with `aigvqa extract MANIFEST --cache {path}`"
        ) from err
    version = f.attrs.get("format_version")
    if version is None:
        f.close()
        raise CacheError(f"{path} is an HDF5 file but not an aigvqa cache (no format_version attribute)")
    if int(version) > FORMAT_VERSION:
        f.close()
        raise CacheError(
            f"{path} uses cache format {int(version)}, newer than this aigvqa reads "
            f"({FORMAT_VERSION}); upgrade aigvqa (pip install -U aigvqa)"
        )
    return f


def feature_group_names(f: h5py.File) -> list[str]:
    return sorted(k for k in f.keys() if k not in RESERVED_GROUPS and isinstance(f[k], h5py.Group))


def group_meta(g: h5py.Group) -> dict[str, Any]:
    """Everything that decides whether rows may join this group (compared on merge)."""
    values = g["values"]
    return {
        "keyed_by": str(g.attrs["keyed_by"]),
        "dtype": str(values.dtype),
        "dim": int(values.shape[2]),
        "extras": {
            k: {"shape": list(g[k].shape[1:]), "dtype": str(g[k].dtype)}
            for k in sorted(g.keys())
            if k not in CORE_DATASETS
        },
        "provenance": json.loads(g.attrs["provenance"]),
    }


def read_videos(f: h5py.File) -> dict[str, dict[str, Any]]:
    """video_id -> row, in table order."""
    if VIDEOS not in f:
        return {}
    g = f[VIDEOS]
    cols = {c: read_str(g[c]) for c in VIDEO_COLUMNS}
    order = g[SOURCE_ORDER][()] if SOURCE_ORDER in g else None
    rows: dict[str, dict[str, Any]] = {}
    for i, vid in enumerate(cols["video_id"]):
        rows[vid] = {
            "video_id": vid,
            "path": cols["path"][i],
            "prompt": cols["prompt"][i],
            "prompt_id": cols["prompt_id"][i],
            "labels": json.loads(cols["labels"][i]),
            "groups": json.loads(cols["groups"][i]),
        }
        if order is not None and order[i] >= 0:
            rows[vid][SOURCE_ORDER] = int(order[i])
    return rows


def read_failures(f: h5py.File) -> list[Failure]:
    if FAILURES not in f:
        return []
    g = f[FAILURES]
    cols = [read_str(g[c]) for c in FAILURE_COLUMNS]
    return [Failure(*row) for row in zip(*cols)]


def group_info(g: h5py.Group, name: str) -> GroupInfo:
    meta = group_meta(g)
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
        versions=json.loads(g.attrs.get("versions", "[]")),
        weights=weights_identity(prov),
        random_init=is_random_init(prov),
        lengths_min=int(lengths.min()) if lengths.size else 0,
        lengths_median=float(np.median(lengths)) if lengths.size else 0.0,
        lengths_max=int(lengths.max()) if lengths.size else 0,
        extras={k: v["shape"] for k, v in meta["extras"].items()},
    )


def take_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """ds[rows] for any row order / repeats, reading only what is needed."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)
    if rows.size == ds.shape[0] and (rows == np.arange(rows.size)).all():
        return ds[()]
    unique, inverse = np.unique(rows, return_inverse=True)
    if unique.size * 4 >= ds.shape[0]:  # a large share: one sequential read beats a hyperslab list
        return ds[()][rows]
    return ds[unique][inverse]


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


class FeatureCache:
    """Read-only view of a cache file (or a shard). Stores only the path: cheap to pickle."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r})"

    # -- listing -----------------------------------------------------------------------
    def groups(self) -> list[str]:
        with open_h5(self.path) as f:
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
        with open_h5(self.path) as f:
            return group_info(self._group(f, name), name)

    def ids(self, name: str) -> list[str]:
        """Stored ids of a group: video ids, or prompt ids for prompt-keyed groups."""
        with open_h5(self.path) as f:
            return read_str(self._group(f, name)["ids"])

    def failures(self) -> list[Failure]:
        with open_h5(self.path) as f:
            return read_failures(f)

    def videos(self) -> list[dict[str, Any]]:
        """Videos-table rows: video_id, path, prompt, prompt_id, labels {}, groups {}."""
        with open_h5(self.path) as f:
            return list(read_videos(f).values())

    # -- reading arrays ----------------------------------------------------------------
    def read(self, groups: str | Iterable[str], ids: Iterable[str] | None = None) -> CacheData:
        """Aligned rows of every requested group.

        ``ids=None`` reads the videos present in *all* requested groups, sorted by video id
        (merge order depends on which worker finished first, so it is not a stable order).
        Prompt-keyed groups are expanded to video rows via the videos table.
        """
        names = [groups] if isinstance(groups, str) else list(groups)
        if not names:
            raise ValueError("read() needs at least one group name")
        with open_h5(self.path) as f:
            missing = [n for n in names if n in RESERVED_GROUPS or n not in f]
            if missing:
                have = feature_group_names(f)
                raise CacheError(
                    f"cache {self.path} lacks feature group(s) {', '.join(missing)} (it has: "
                    f"{', '.join(have) or 'none'}); compute them with "
                    f"`aigvqa extract MANIFEST --cache {self.path} --extractors {','.join(missing)}`"
                )
            videos = read_videos(f)
            row_of: dict[str, dict[str, int]] = {}  # group -> video id -> stored row
            for name in names:
                g = f[name]
                stored = {s: i for i, s in enumerate(read_str(g["ids"]))}
                if str(g.attrs["keyed_by"]) == "prompt":
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
                g = f[name]
                rows = np.fromiter((row_of[name][v] for v in selected), dtype=np.int64, count=len(selected))
                arrays[name] = _as_float32(take_rows(g["values"], rows))
                lengths[name] = take_rows(g["lengths"], rows).astype(np.int64)
                for extra in sorted(k for k in g.keys() if k not in CORE_DATASETS):
                    extras[f"{name}/{extra}"] = _as_float32(take_rows(g[extra], rows))

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

    def _check_present(self, f, names, selected, row_of, videos) -> None:
        problems = []
        for name in names:
            absent = [v for v in dict.fromkeys(selected) if v not in row_of[name]]
            if not absent:
                continue
            line = f"  {name}: {len(absent)} of {len(selected)} ids missing ({_name_some(absent)})"
            if str(f[name].attrs["keyed_by"]) == "prompt":
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

    # -- description ---------------------------------------------------------------------
    def describe(self, max_failures: int = 5) -> dict[str, Any]:
        """Everything ``aigvqa info`` shows, as JSON-serialisable data."""
        with open_h5(self.path) as f:
            format_version = int(f.attrs["format_version"])
            kind = str(f.attrs.get("kind", "cache"))
            infos = [group_info(f[n], n).to_dict() for n in feature_group_names(f)]
            videos = read_videos(f)
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
        f"format:   aigvqa {d['kind']} format {d['format_version']}",
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
