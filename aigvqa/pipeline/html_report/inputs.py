"""What a report shows, read from a score CSV of ``aigvqa score`` and / or a feature cache.

A score CSV (``video_id, path, status, <one column per predicted label>, error``) gives the
predictions and the files scored; a cache's videos table gives each video's prompt,
generator, MOS and file. Given both, rows are joined on ``video_id``: the videos shown are
the CSV's, with what the cache knows about them. Which file is which is read from the
file itself (an HDF5 signature, or a CSV header), not from its name.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aigvqa.errors import AigvqaError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
SCORE_COLUMNS = ("video_id", "path", "status", "error")
"""The columns of every score CSV; the others are the predicted labels."""
STATUS_OK = "ok"  # as pipeline.model.score_output writes it


class ReportError(AigvqaError, ValueError):
    """A report cannot be written: an input is missing or of the wrong kind, an option is
    out of range, the output cannot be written."""


@dataclass
class ReportVideo:
    """One video of the report: what the score CSV and the cache say about it."""

    video_id: str
    path: str = ""  # as recorded (the score CSV's, else the cache's)
    base: Path | None = None  # the folder a relative ``path`` resolves against
    prompt: str = ""
    prompt_id: str = ""
    generator: str = ""
    mos: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    status: str = ""  # the score CSV's status ("ok" / "failed"); "" without a score CSV
    error: str = ""

    def video_file(self) -> Path | None:
        if not self.path:
            return None
        path = Path(self.path)
        if not path.is_absolute() and self.base is not None:
            path = self.base / path
        return path

    def value(self, label: str, of: str) -> float | None:
        """The finite predicted score (``of="predicted"``) or MOS (``of="mos"``) on ``label``."""
        if of == "predicted" and self.status != STATUS_OK:
            return None
        value = (self.predicted if of == "predicted" else self.mos).get(label)
        return value if value is not None and math.isfinite(value) else None


@dataclass
class ReportData:
    videos: list[ReportVideo]
    scores_path: Path | None = None
    cache_path: Path | None = None
    predicted_labels: list[str] = field(default_factory=list)
    mos_labels: list[str] = field(default_factory=list)
    only_in_cache: int = 0  # cache videos without a row in the score CSV (not shown)

    @property
    def common_labels(self) -> list[str]:
        return [label for label in self.predicted_labels if label in self.mos_labels]

    @property
    def sources(self) -> list[Path]:
        return [p for p in (self.scores_path, self.cache_path) if p is not None]


def source_kind(path: Path) -> str:
    """``"cache"`` (an HDF5 file) or ``"scores"`` (anything else: read as a score CSV, or
    JSONL / Parquet by its suffix, later)."""
    if not path.exists():
        raise ReportError(
            f"{path} does not exist: give a score CSV written by `aigvqa score` and / or the "
            "feature cache (.h5) of its videos (check the path)"
        )
    if not path.is_file():
        raise ReportError(
            f"{path} is not a file: give a score CSV written by `aigvqa score` and / or a "
            "feature cache (.h5)"
        )
    with open(path, "rb") as fh:
        return "cache" if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE else "scores"


def read_inputs(sources: str | Path | Iterable[str | Path]) -> ReportData:
    """Read one score CSV, one cache, or one of each (in any order)."""
    paths = [Path(sources)] if isinstance(sources, str | Path) else [Path(s) for s in sources]
    if not 1 <= len(paths) <= 2:
        raise ReportError(
            f"give one or two inputs (a score CSV and / or a feature cache), got {len(paths)}"
        )
    kinds: dict[str, Path] = {}
    for path in paths:
        kind = source_kind(path)
        if kind in kinds:
            what = "feature caches" if kind == "cache" else "score CSVs"
            raise ReportError(
                f"two {what} given ({kinds[kind]}, {path}): a report reads at most one score "
                "CSV and one feature cache; write one report per file"
            )
        kinds[kind] = path
    scores = kinds.get("scores")
    cache = kinds.get("cache")
    data = ReportData([], scores_path=scores, cache_path=cache)
    cached = read_cache_videos(cache) if cache is not None else {}
    if cache is not None:
        data.mos_labels = sorted({k for v in cached.values() for k in v.mos})
    if scores is None:
        if not cached:
            raise ReportError(
                f"cache {cache} has no videos table rows (features imported without videos?): "
                "nothing to show; give the score CSV of its videos as well"
            )
        data.videos = list(cached.values())
        return data
    data.predicted_labels, rows = read_scores(scores)
    for row in rows:
        video = cached.get(row.video_id)
        if video is not None:
            row.prompt, row.prompt_id = video.prompt, video.prompt_id
            row.generator, row.mos = video.generator, video.mos
            if not row.path:
                row.path, row.base = video.path, video.base
    data.videos = rows
    data.only_in_cache = len(set(cached) - {r.video_id for r in rows})
    if cache is not None:
        data.mos_labels = sorted({k for v in rows for k in v.mos})
    return data


def read_cache_videos(path: Path) -> dict[str, ReportVideo]:
    from aigvqa.cache import FeatureCache

    out = {}
    for row in FeatureCache(path).videos():
        groups = row.get("groups") or {}
        out[row["video_id"]] = ReportVideo(
            video_id=row["video_id"],
            path=row.get("path") or "",
            base=path.parent,
            prompt=row.get("prompt") or "",
            prompt_id=row.get("prompt_id") or groups.get("prompt", ""),
            generator=groups.get("generator", ""),
            mos={k: float(v) for k, v in (row.get("labels") or {}).items()},
        )
    return out


def read_scores(path: Path) -> tuple[list[str], list[ReportVideo]]:
    """(predicted labels, one ReportVideo per row) of a score file (CSV, or by its suffix
    JSONL / Parquet, as `aigvqa score --out` writes them); a later row of the same id
    replaces an earlier one."""
    if path.suffix.lower() in (".jsonl", ".parquet"):
        return _read_score_table(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            _check_header(path, header)
            labels = [c for c in header if c not in SCORE_COLUMNS]
            rows: dict[str, ReportVideo] = {}
            for row in reader:
                video = _score_row(path, reader.line_num, row, labels)
                rows.pop(video.video_id, None)
                rows[video.video_id] = video
    except UnicodeDecodeError as err:
        raise ReportError(
            f"{path} is neither a feature cache nor a score CSV (not UTF-8 text at byte "
            f"{err.start}): give a score CSV written by `aigvqa score` and / or a cache (.h5)"
        ) from None
    except csv.Error as err:
        raise ReportError(f"{path} is not a readable CSV ({err}); re-run `aigvqa score`") from None
    return labels, list(rows.values())


def _read_score_table(path: Path) -> tuple[list[str], list[ReportVideo]]:
    """A JSONL or Parquet score output (with a Parquet run's journal, if one is left),
    through the reader `aigvqa score` resumes with."""
    import json

    from aigvqa.pipeline.model.score_output import read_rows

    try:
        if path.suffix.lower() == ".parquet":
            from aigvqa.pipeline.tables import import_pyarrow

            _, pq = import_pyarrow(path, ReportError)
            header = list(pq.read_schema(path).names)
        else:
            with open(path, encoding="utf-8") as fh:
                first = fh.readline()
            header = list(json.loads(first)) if first.strip() else list(SCORE_COLUMNS)
        _check_header(path, header)
        labels = [c for c in header if c not in SCORE_COLUMNS]
        table = read_rows(path, labels)
    except ReportError:
        raise
    except (AigvqaError, ValueError, OSError, KeyError, TypeError) as err:
        raise ReportError(
            f"{path} is not a readable score file ({err}); give the file that "
            "`aigvqa score ... --out FILE` wrote, or re-run it"
        ) from None
    rows: dict[str, ReportVideo] = {}
    for number, row in enumerate(table, 1):
        cells = {k: ("" if v is None else str(v)) for k, v in row.items()}
        video = _score_row(path, number, cells, labels)
        rows.pop(video.video_id, None)
        rows[video.video_id] = video
    return labels, list(rows.values())


def _check_header(path: Path, header: Sequence[str]) -> None:
    missing = [c for c in SCORE_COLUMNS if c not in header]
    if missing:
        raise ReportError(
            f"{path} is neither a feature cache (HDF5) nor a score CSV of `aigvqa score`: its "
            f"header {list(header)[:8]} lacks {', '.join(missing)}. Give the CSV that "
            "`aigvqa score ... --out FILE` wrote and / or the feature cache of its videos"
        )


def _score_row(path: Path, line: int, row: dict, labels: Sequence[str]) -> ReportVideo:
    video_id = (row.get("video_id") or "").strip()
    if not video_id:
        raise ReportError(f"{path}, line {line}: empty video_id; re-run `aigvqa score`")
    status = (row.get("status") or "").strip()
    predicted: dict[str, float] = {}
    if status == STATUS_OK:
        for label in labels:
            text = (row.get(label) or "").strip()
            try:
                predicted[label] = float(text)
            except ValueError:
                raise ReportError(
                    f"{path}, line {line}: video {video_id!r} has status ok but {label} = "
                    f"{text!r} is not a number; fix the row, or delete it and re-run "
                    "`aigvqa score` (it rescores what is missing)"
                ) from None
    return ReportVideo(
        video_id=video_id,
        path=row.get("path") or "",
        base=path.parent,
        predicted=predicted,
        status=status,
        error=row.get("error") or "",
    )
