"""Manifests: dataset label files -> a list of ``VideoRecord``.

Formats (``fmt``):

- ``csv`` / ``jsonl``: one row per video. Columns are found by name (case-insensitive)
  unless given: id ``video_id | id | name | video_name``; path ``path | file | video |
  video_path | filename | file_name``; prompt ``prompt | text | caption``; labels ``mos``
  (label "mos") and every ``mos_<name>`` (label "<name>"); groups ``prompt_id |
  prompt_idx`` (group "prompt"), ``generator | model | source_model`` (group
  "generator") and every ``group_<name>``. Without a path column the id is the file
  name; without an id column the id is the file's stem. JSON-lines rows may also hold
  ``"labels": {...}`` and ``"groups": {...}`` objects. ``write_manifest_csv`` writes
  this layout, so its output reads back unchanged.
- ``t2vqa``: T2VQA-DB ``info.txt``, lines ``name|prompt|mos`` (a prompt containing ``|``
  is kept whole: the first field is the name, the last the MOS).
- ``fetv``: FETV ratings table (``fetv_ratings.csv``): one row per (prompt, model); only
  rows with a ``gif_path`` have a video and become records (the others are counted in an
  INFO log line). Labels ``static_quality``, ``temporal_quality``, ``alignment`` = the
  ``*_mean`` columns (mean of 3 raters); groups prompt = ``prompt_idx``, generator =
  ``source_model`` (``ground-truth`` for the real reference videos); id =
  ``"{prompt_idx}-{source_model}"``.
- ``lgvq``: LGVQ-style CSV, labels ``spatial``, ``temporal``, ``alignment`` from columns
  named e.g. ``spatial | spatial_quality | spatial_mos`` (see ``_LGVQ_LABELS``).
- ``auto`` (default): ``.jsonl/.json/.ndjson`` -> jsonl, ``.txt`` -> t2vqa, a CSV whose
  header has ``prompt_idx``, ``source_model`` and ``gif_path`` -> fetv, one with
  spatial, temporal and alignment columns -> lgvq, any other -> csv.

Relative video paths resolve against ``video_dir`` when given, else the manifest's own
folder. Every bad row (missing file, empty id, duplicate id, empty or non-numeric MOS,
unparsable line) is collected and reported in ONE ``ManifestError`` naming each line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigvqa.errors import ManifestError
from aigvqa.pipeline.records import VideoRecord, prompt_key

__all__ = ["FORMATS", "read_manifest", "write_manifest_csv"]

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "t2vqa", "fetv", "lgvq")

_ID_ALIASES = ("video_id", "id", "name", "video_name")
_PATH_ALIASES = ("path", "file", "video", "video_path", "filename", "file_name")
_PROMPT_ALIASES = ("prompt", "text", "caption")
_GROUP_ALIASES = {
    "prompt": ("prompt_id", "prompt_idx"),
    "generator": ("generator", "model", "source_model"),
}
_LABEL_PREFIX = "mos_"
_GROUP_PREFIX = "group_"
_LGVQ_LABELS = {
    "spatial": ("spatial", "spatial_quality", "spatial_mos", "spatial_score"),
    "temporal": ("temporal", "temporal_quality", "temporal_mos", "temporal_score"),
    "alignment": (
        "alignment",
        "alignment_mos",
        "alignment_score",
        "text_alignment",
        "text_video_alignment",
        "consistency",
    ),
}
_FETV_LABELS = {
    "static_quality": "static_quality_mean",
    "temporal_quality": "temporal_quality_mean",
    "alignment": "alignment_mean",
}
_FETV_COLUMNS = {"prompt_idx", "source_model", "gif_path"}
_FETV_ID = "\x00record_id"  # a key no CSV header has: FETV's own video_id is the source clip


@dataclass
class _Columns:
    """Which column holds what (None: absent)."""

    id: str | None
    path: str | None
    prompt: str | None
    labels: dict[str, str] = field(default_factory=dict)  # label name -> column
    groups: dict[str, str] = field(default_factory=dict)  # group name -> column


@dataclass
class _Row:
    line: int
    values: dict[str, Any]
    problem: str | None = None  # set when the line itself could not be parsed


# -- reading the raw rows ---------------------------------------------------------------------


def _read_text(path: Path, encoding: str) -> str:
    """The whole manifest decoded strictly; a byte the encoding cannot decode is a
    ManifestError naming its line (a raw UnicodeDecodeError names neither line nor fix)."""
    data = path.read_bytes()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding  # drop a BOM
    try:
        return data.decode(codec)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        bad = data[err.start : max(err.end, err.start + 1)]
        raise ManifestError(
            f"{path}: line {line}, column {column}: byte(s) {bad.hex(' ')} are not valid "
            f"{encoding} ({err.reason}); manifests are read as {encoding}. Re-save the file as "
            "UTF-8, or name its encoding (encoding='latin-1'; 'cp1252' for files saved by Excel "
            "on Windows)"
        ) from err


def _csv_rows(text: str, path: Path, delimiter: str) -> tuple[list[str], list[_Row]]:
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = list(reader.fieldnames or [])
        rows = []
        line_after_previous = reader.line_num
        for values in reader:
            # line_num counts physical lines read: a quoted multi-line cell spans several
            rows.append(_Row(line_after_previous + 1, values))
            line_after_previous = reader.line_num
    if not header:
        raise ManifestError(f"{path}: the file is empty; a CSV manifest needs a header line")
    return header, rows


def _flatten_json(record: dict[str, Any]) -> dict[str, Any]:
    """Nested ``labels`` / ``groups`` objects become the flat column names of the CSV layout."""
    flat = {k: v for k, v in record.items() if k not in ("labels", "groups")}
    labels = record.get("labels")
    if isinstance(labels, dict):
        for name, value in labels.items():
            flat["mos" if name == "mos" else _LABEL_PREFIX + name] = value
    groups = record.get("groups")
    if isinstance(groups, dict):
        for name, value in groups.items():
            column = {"prompt": "prompt_id", "generator": "generator"}.get(
                name, _GROUP_PREFIX + name
            )
            flat[column] = value
    return flat


def _jsonl_rows(text: str) -> tuple[list[str], list[_Row]]:
    rows: list[_Row] = []
    header: dict[str, None] = {}
    with io.StringIO(text, newline=None) as handle:  # universal newlines, as open() reads
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append(_Row(line_number, {}, f"not valid JSON ({err.msg})"))
                continue
            if not isinstance(record, dict):
                rows.append(_Row(line_number, {}, "not a JSON object"))
                continue
            values = _flatten_json(record)
            header.update(dict.fromkeys(values))
            rows.append(_Row(line_number, values))
    return list(header), rows


def _t2vqa_rows(text: str) -> tuple[list[str], list[_Row]]:
    rows: list[_Row] = []
    with io.StringIO(text, newline=None) as handle:  # universal newlines, as open() reads
        for line_number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            fields = [part.strip() for part in text.split("|")]
            if len(fields) < 3:
                rows.append(_Row(line_number, {}, "expected 'name|prompt|mos'"))
                continue
            if not rows and fields[-1].lower() in ("mos", "score", "label"):
                continue  # a header line
            rows.append(
                _Row(
                    line_number,
                    {"name": fields[0], "prompt": "|".join(fields[1:-1]), "mos": fields[-1]},
                )
            )
    return ["name", "prompt", "mos"], rows


# -- columns ------------------------------------------------------------------------------------


def _find(header: Sequence[str], aliases: Iterable[str]) -> str | None:
    by_lower = {name.lower().strip(): name for name in header}
    for alias in aliases:
        if alias in by_lower:
            return by_lower[alias]
    return None


# the read_manifest argument that names a role's column; errors.CLI_WORDS has the CLI's flag
_COLUMN_ARGUMENT = {
    "id": "id_col=...",
    "path": "path_col=...",
    "prompt": "prompt_col=...",
    "label": "label_cols=...",
    "group": "group_cols=...",
}


def _require(header: Sequence[str], column: str, role: str, path: Path) -> str:
    found = _find(header, [column.lower()])
    if found is None:
        raise ManifestError(
            f"{path}: the {role} column {column!r} is not in the header {list(header)}; "
            f"name one of those columns in {_COLUMN_ARGUMENT[role]}"
        )
    return found


def _default_columns(fmt: str, header: Sequence[str]) -> _Columns:
    columns = _Columns(
        id=_find(header, _ID_ALIASES),
        path=_find(header, _PATH_ALIASES),
        prompt=_find(header, _PROMPT_ALIASES),
    )
    if fmt == "fetv":
        columns.id, columns.path = _FETV_ID, "gif_path"
        columns.labels = {name: col for name, col in _FETV_LABELS.items() if col in header}
        columns.groups = {"prompt": "prompt_idx", "generator": "source_model"}
        return columns
    if fmt == "lgvq":
        for name, aliases in _LGVQ_LABELS.items():
            column = _find(header, aliases)
            if column is not None:
                columns.labels[name] = column
    else:
        for column in header:
            lower = column.lower().strip()
            if lower == "mos":
                columns.labels["mos"] = column
            elif lower.startswith(_LABEL_PREFIX) and len(lower) > len(_LABEL_PREFIX):
                columns.labels[column.strip()[len(_LABEL_PREFIX) :]] = column
    for name, aliases in _GROUP_ALIASES.items():
        column = _find(header, aliases)
        if column is not None:
            columns.groups[name] = column
    for column in header:
        lower = column.lower().strip()
        if lower.startswith(_GROUP_PREFIX) and len(lower) > len(_GROUP_PREFIX):
            columns.groups[column.strip()[len(_GROUP_PREFIX) :]] = column
    return columns


def _apply_overrides(
    columns: _Columns,
    header: Sequence[str],
    path: Path,
    id_col: str | None,
    path_col: str | None,
    prompt_col: str | None,
    label_cols: Sequence[str] | Mapping[str, str] | None,
    group_cols: Mapping[str, str] | None,
) -> _Columns:
    if id_col is not None:
        columns.id = _require(header, id_col, "id", path)
    if path_col is not None:
        columns.path = _require(header, path_col, "path", path)
    if prompt_col is not None:
        columns.prompt = _require(header, prompt_col, "prompt", path)
    if label_cols is not None:
        pairs = (
            label_cols.items() if isinstance(label_cols, Mapping) else [(c, c) for c in label_cols]
        )
        columns.labels = {name: _require(header, col, "label", path) for name, col in pairs}
    if group_cols is not None:
        columns.groups = {
            name: _require(header, col, "group", path) for name, col in group_cols.items()
        }
    if columns.id is None and columns.path is None:
        raise ManifestError(
            f"{path}: no id or path column found in the header {list(header)} (looked for "
            f"{_ID_ALIASES} and {_PATH_ALIASES}); pass id_col=... and/or path_col=..."
        )
    return columns


# -- rows -> records ----------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _parse_label(value: Any, column: str) -> tuple[float | None, str | None]:
    text = _text(value)
    if not text:
        return None, f"empty MOS in column {column!r}"
    try:
        number = float(text)
    except ValueError:
        return None, f"non-numeric MOS {text!r} in column {column!r}"
    if not math.isfinite(number):
        return None, f"non-finite MOS {text!r} in column {column!r}"
    return number, None


def _records(
    rows: list[_Row], columns: _Columns, manifest: Path, video_dir: Path, check_files: bool
) -> list[VideoRecord]:
    records: list[VideoRecord] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    missing_files = 0
    for row in rows:
        if row.problem is not None:
            problems.append((row.line, row.problem))
            continue
        reasons: list[str] = []
        raw_path = _text(row.values.get(columns.path)) if columns.path else ""
        video_id = _text(row.values.get(columns.id)) if columns.id else Path(raw_path).stem
        if not columns.path:
            raw_path = video_id
        if not video_id:
            reasons.append("empty id")
        elif video_id in first_line:
            reasons.append(f"duplicate id {video_id!r} (first on line {first_line[video_id]})")
        else:
            first_line[video_id] = row.line
        resolved = Path(os.path.expanduser(raw_path)) if raw_path else None
        if resolved is not None and not resolved.is_absolute():
            resolved = Path(os.path.normpath(video_dir / resolved))
        if resolved is None:
            reasons.append("empty path")
        elif check_files and not resolved.is_file():
            missing_files += 1
            reasons.append(f"file not found: {raw_path!r} (looked at {resolved})")
        labels: dict[str, float] = {}
        for name, column in columns.labels.items():
            value, reason = _parse_label(row.values.get(column), column)
            if reason:
                reasons.append(reason)
            else:
                labels[name] = value  # type: ignore[assignment]
        prompt = _text(row.values.get(columns.prompt)) if columns.prompt else ""
        groups = {
            name: _text(row.values.get(column))
            for name, column in columns.groups.items()
            if _text(row.values.get(column))
        }
        if prompt and "prompt" not in groups:
            groups["prompt"] = prompt_key(prompt)
        if reasons:
            problems.append((row.line, "; ".join(reasons)))
            continue
        records.append(VideoRecord(video_id, resolved, prompt or None, labels, groups))
    if problems:
        raise ManifestError(_problem_report(manifest, problems, missing_files, video_dir))
    return records


def _problem_report(
    manifest: Path, problems: list[tuple[int, str]], missing_files: int, video_dir: Path
) -> str:
    lines = [f"{manifest}: {len(problems)} bad row(s); fix or remove them:"]
    lines += [f"  line {line}: {reason}" for line, reason in problems]
    if missing_files:
        lines.append(
            f"Relative video paths resolve against {video_dir}; pass video_dir=... if the "
            "videos live elsewhere (or check_files=False to skip the existence check)."
        )
    return "\n".join(lines)


def _fetv_ids(rows: list[_Row], manifest: Path) -> list[_Row]:
    """Keep the FETV rows that have a video and give them ids ``{prompt_idx}-{source_model}``."""
    kept = [row for row in rows if row.problem is not None or _text(row.values.get("gif_path"))]
    if len(kept) < len(rows):
        logger.info(
            "%s: %d of %d rows have no gif_path (video not distributed) and were left out",
            manifest,
            len(rows) - len(kept),
            len(rows),
        )
    for row in kept:
        prompt_idx = _text(row.values.get("prompt_idx"))
        model = _text(row.values.get("source_model"))
        row.values[_FETV_ID] = f"{prompt_idx}-{model}" if prompt_idx and model else ""
    return kept


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".txt":
        return "t2vqa"
    with io.StringIO(text, newline="") as handle:
        header = next(csv.reader(handle, delimiter=_delimiter(path)), [])
    lower = {name.lower().strip() for name in header}
    if _FETV_COLUMNS <= lower:
        return "fetv"
    if all(_find(header, aliases) for aliases in _LGVQ_LABELS.values()):
        return "lgvq"
    return "csv"


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def read_manifest(
    path: str | Path,
    fmt: str = "auto",
    *,
    id_col: str | None = None,
    path_col: str | None = None,
    prompt_col: str | None = None,
    label_cols: Sequence[str] | Mapping[str, str] | None = None,
    group_cols: Mapping[str, str] | None = None,
    video_dir: str | Path | None = None,
    check_files: bool = True,
    encoding: str = "utf-8",
) -> list[VideoRecord]:
    """Read a manifest into records (see the module docstring for formats and defaults).

    Column arguments override the format's defaults: ``label_cols`` is a list of columns
    (label name = column name) or a ``{label name: column}`` mapping (``[]`` = unlabelled,
    e.g. for scoring); ``group_cols`` maps group names ("prompt", "generator") to columns.
    ``check_files=False`` skips the check that every video exists. ``encoding``: the
    file's text encoding (default UTF-8, a byte-order mark allowed); a byte it cannot
    decode is a ManifestError naming the line.

    Raises ManifestError listing every bad row with its line number.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file; check the path")
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise ManifestError(
            f"{path}: unknown text encoding {encoding!r} (e.g. 'utf-8', 'latin-1', 'cp1252')"
        ) from err
    text = _read_text(path, encoding)
    fmt = _detect_format(path, text) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ManifestError(f"{path}: unknown manifest format {fmt!r}; use one of {FORMATS}")
    if fmt == "jsonl":
        header, rows = _jsonl_rows(text)
    elif fmt == "t2vqa":
        header, rows = _t2vqa_rows(text)
    else:
        header, rows = _csv_rows(text, path, _delimiter(path))
    if fmt == "fetv":
        missing = {name for name in _FETV_COLUMNS if name not in header}
        if missing:
            raise ManifestError(
                f"{path}: not a FETV ratings table, missing columns {sorted(missing)}"
            )
        rows = _fetv_ids(rows, path)
        header = [*header, _FETV_ID]
    columns = _apply_overrides(
        _default_columns(fmt, header),
        header,
        path,
        id_col,
        path_col,
        prompt_col,
        label_cols,
        group_cols,
    )
    base = Path(video_dir).expanduser() if video_dir is not None else path.parent
    return _records(rows, columns, path, base.resolve(), check_files)


def write_manifest_csv(records: Iterable[VideoRecord], path: str | Path) -> Path:
    """Write records as a generic CSV manifest that ``read_manifest`` reads back unchanged.

    Columns: video_id, path (relative to the manifest's folder when possible), prompt,
    ``mos`` / ``mos_<label>`` and ``prompt_id``, ``generator``, ``group_<name>``.
    """
    path = Path(path)
    records = list(records)
    label_names = list(dict.fromkeys(name for r in records for name in r.labels))
    group_names = list(dict.fromkeys(name for r in records for name in r.groups))
    label_column = {n: "mos" if n == "mos" else _LABEL_PREFIX + n for n in label_names}
    group_column = {
        n: {"prompt": "prompt_id", "generator": "generator"}.get(n, _GROUP_PREFIX + n)
        for n in group_names
    }
    base = path.parent.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["video_id", "path", "prompt", *label_column.values(), *group_column.values()]
        )
        for record in records:
            writer.writerow(
                [
                    record.video_id,
                    _relative(Path(record.path), base),
                    record.prompt or "",
                    *[_format_label(record.labels.get(n)) for n in label_names],
                    *[record.groups.get(n, "") for n in group_names],
                ]
            )
    return path


def _format_label(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _relative(video: Path, base: Path) -> str:
    try:
        return Path(os.path.relpath(video.resolve(), base)).as_posix()
    except ValueError:  # another drive on Windows
        return str(video.resolve())
