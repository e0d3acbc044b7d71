"""What ``aigvqa info`` shows: a cache described as data, and as readable text.

``describe_file`` (``FeatureCache.describe``, ``aigvqa info --json``) and
``format_summary`` (``FeatureCache.summary``, ``aigvqa info``).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aigvqa.cache.access import (
    feature_group_names,
    file_format,
    group_info,
    read_failures,
    read_videos,
    reading,
)
from aigvqa.cache.schema import FAILURES, VIDEOS, flatten, is_random_init, read_attrs


def describe_file(path: str | Path, max_failures: int = 5) -> dict[str, Any]:
    """Everything ``aigvqa info`` shows, as JSON-serialisable data."""
    path = Path(path)
    with reading(path) as (f, place):
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
        "file": str(path),
        "kind": kind,
        "format_version": format_version,
        "checksums": format_version >= 2 and all(g["checksums"] for g in infos),
        "size_bytes": path.stat().st_size,
        "groups": infos,
        "videos": len(videos),
        "labels": label_stats,
        "group_keys": {
            k: len({v["groups"].get(k) for v in videos.values()} - {None}) for k in group_keys
        },
        "failures": {
            "count": len(failures),
            "first": [asdict(fl) for fl in failures[:max_failures]],
        },
    }


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
        f"format:   aigvqa {d['kind']} format {d['format_version']}, "
        + (
            "checksummed (verified on read; `aigvqa info --verify` checks every byte)"
            if d.get("checksums")
            else "UNVERIFIED: written without checksums (an older aigvqa), so damaged values "
            "cannot be detected; the next extract / import-features merge rewrites it with "
            "checksums"
        ),
    ]
    groups = d["groups"]
    if groups:
        lines.append(f"groups:   {len(groups)}")
        header = ["group", "keyed_by", "N", "T_max", "D", "dtype", "lengths min/med/max", "weights"]
        rows = [header]
        for g in groups:
            rows.append(
                [
                    g["name"],
                    g["keyed_by"],
                    str(g["n"]),
                    str(g["t_max"]),
                    str(g["dim"]),
                    g["dtype"],
                    f"{g['lengths_min']}/{g['lengths_median']:g}/{g['lengths_max']}",
                    _short_weights(g["weights"]),
                ]
            )
        lines += _table(rows)
        for g in groups:
            if g["random_init"]:
                lines.append(
                    f"  !! {g['name']}: WEIGHTS: RANDOM-INIT (not a real model) - these features "
                    "are noise, fit for tests and benchmarks only"
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
        rows = [
            [k, f"{s['count']} values", f"range [{s['min']:.4g}, {s['max']:.4g}]"]
            for k, s in sorted(d["labels"].items())
        ]
        lines.append("labels:")
        lines += _table(rows)
    else:
        lines.append("labels:   none")
    if d["group_keys"]:
        lines.append(
            "grouping: " + ", ".join(f"{k} ({n} distinct)" for k, n in d["group_keys"].items())
        )
    fails = d["failures"]
    lines.append(f"failures: {fails['count']}")
    if fails["first"]:
        rows = [
            [
                fl["id"],
                fl["extractor"],
                fl["error"].strip().splitlines()[0][:100] if fl["error"].strip() else "",
            ]
            for fl in fails["first"]
        ]
        lines += _table(rows)
        if fails["count"] > len(fails["first"]):
            lines.append(
                f"  ... and {fails['count'] - len(fails['first'])} more "
                "(aigvqa info --failures N shows more)"
            )
    return "\n".join(lines)
