"""The output of ``aigvqa score`` (``pipeline.model.score``): its columns and formats, the
lock that keeps one run per output, resuming from what it holds, appending rows that
survive an interruption, and reading them back; ``ScoreReport``, what a run did.

Formats, by the output's suffix (``output_format``; any other suffix is refused), all with
the same columns in the same order (``output_columns``) and the same values:

- ``.csv``: appended to, one line per row, flushed and fsynced after every batch.
- ``.jsonl``: the same, one JSON object per line (keys: the columns; scores numbers, null
  where the video failed; ``aigvqa.pipeline.tables`` says how values are written).
- ``.parquet`` (needs pyarrow): a Parquet file cannot be appended to, so the rows of a run
  go to a JSONL *journal* beside it, ``<out>.partial.jsonl`` (named after the real path,
  like the lock), appended and flushed like a ``.jsonl`` output. When the run has scored
  every video, ``finish_output`` writes the Parquet file's rows and the journal's into a
  temporary file, renames it over ``<out>`` (atomic) and deletes the journal. An
  interrupted run thus leaves the finished ``<out>`` of earlier runs untouched and its own
  rows in the journal; a re-run reads both, scores the rest and folds the journal in:
  never a half-written Parquet file, nothing scored lost. (Rewriting the file at the end
  is cheap: a row is a few dozen bytes, 39,000 videos a few MB.)

Resuming reads the ids already in the output (and the journal); a torn last line (a run
killed in the middle of an append) is cut first and that video scored again; an output
written for other columns, or that is not a score file at all, is refused and left as it
is.

Concurrency: a run holds an exclusive ``flock`` on ``<out>.lock`` from reading the output
to its last row. A second run on the same output fails at once with ``ScoreError`` naming
the holder, instead of waiting: waiting would look like a hang and then find nothing left
to do. (flock is advisory and local: two hosts writing one file over NFS are not covered.)
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigvqa.cache.files import publish
from aigvqa.errors import AigvqaError
from aigvqa.pipeline.records import VideoRecord
from aigvqa.pipeline.tables import (
    TABLE_SUFFIXES,
    import_pyarrow,
    json_line,
    table_format,
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class ScoreError(AigvqaError, ValueError):
    """Scoring cannot start: the output belongs to another model, is being written by
    another run or has a suffix of no known format, features cannot be made, a needed
    prompt is missing."""


@dataclass
class ScoreReport:
    out: Path
    scored: int = 0
    failed: int = 0
    already_done: int = 0
    failed_before: int = 0  # of already_done: rows that say failed (not retried)
    from_cache: int = 0
    not_from_cache: int = 0  # in --cache under their id, but for another file or prompt
    extracted: int = 0  # computed by this run (failures included)
    reused_work: int = 0  # already in the work cache (an earlier, interrupted run's)
    cache_given: bool = False  # whether --cache was given (the summary names it only then)
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def any_failed(self) -> bool:
        """Whether some video of the input has a ``failed`` row in the output (this run's or
        an earlier one's): what ``aigvqa score``'s exit status 1 says."""
        return bool(self.failed or self.failed_before)

    def summary(self) -> str:
        text = (
            f"{self.scored + self.failed + self.already_done} videos: {self.scored} scored, "
            f"{self.failed} failed"
        )
        if self.already_done:
            text += (
                f", {self.already_done} already in {self.out} (not recomputed"
                + (
                    f"; {self.failed_before} of them failed: --retry-failed tries them again"
                    if self.failed_before
                    else ""
                )
                + ")"
            )
        text += (
            "; features: "
            + (f"{self.from_cache} from the given cache, " if self.cache_given else "")
            + f"{self.extracted} extracted"
            + (f", {self.reused_work} from the work cache" if self.reused_work else "")
            + f" ({self.seconds:.1f} s)"
        )
        if self.not_from_cache:
            text += (
                f"\n  {self.not_from_cache} video(s) were in the given cache under their id but "
                "for another file, an older version of the file or another prompt: extracted "
                "afresh"
            )
        for vid, error in self.failures[:10]:
            text += f"\n  failed {vid}: {error}"
        if len(self.failures) > 10:
            text += f"\n  ... {len(self.failures) - 10} more (status column of {self.out})"
        return text


def output_columns(label_names: Sequence[str]) -> list[str]:
    return ["video_id", "path", "status", *label_names, "error"]


def output_format(out: Path) -> str:
    """The format ``out``'s suffix names: "csv", "jsonl" or "parquet"; raises ``ScoreError``
    naming the file and the accepted suffixes for any other, and for ``.parquet`` when
    pyarrow is not installed: ``score`` calls it before reading or writing anything."""
    fmt = table_format(out, ScoreError)
    if fmt == "parquet":
        import_pyarrow(out, ScoreError)
    return fmt


def _kind(out: Path) -> str:
    """The format to read ``out`` as: by suffix, CSV for any other (what every output was
    before there were formats; ``output_format`` keeps new runs to the known suffixes)."""
    suffix = out.suffix.lower()
    return suffix[1:] if suffix in TABLE_SUFFIXES[1:] else "csv"


def journal_path(out: Path) -> Path:
    """Where a Parquet output's rows wait until the run ends: ``<out>.partial.jsonl``, named
    after the real path, so that runs given links to one output share one journal, as they
    share one lock."""
    real = Path(os.path.realpath(out))
    return real.with_name(real.name + ".partial.jsonl")


# -- the lock -----------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold ``<out>.lock`` exclusively (fcntl.flock, released by the OS if the process dies;
    the empty lock file stays), ``out`` resolved through symbolic links first. Raises
    ``ScoreError`` at once if another run holds it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # named after the real path: two runs given links to one CSV (or to its folder) must
    # take the same lock
    real = Path(os.path.realpath(out))
    lock = real.with_name(real.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise ScoreError(
                f"{out} is being written by another `aigvqa score` run ({holder}, lock {lock}); "
                "wait for it to finish and re-run (finished videos are kept), or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)


# -- what an output holds already ---------------------------------------------------------
def read_scored(out: Path, columns: list[str], retry_failed: bool) -> dict[str, str]:
    """{video id: status} of the rows already in ``out`` (and, for Parquet, its journal);
    checks it was written for the same labels. With ``retry_failed`` the failed rows are
    removed from the file(s) (atomically) first.

    Nothing is changed in a file that is not a score output of these columns: the header
    (CSV), every line (JSONL) or the schema (Parquet) is checked before a torn last line is
    cut (``drop_torn_tail``)."""
    kind = _kind(out)
    if kind == "parquet":
        return _read_scored_parquet(out, columns, retry_failed)
    if not out.exists():
        return {}
    if not out.is_file():  # a folder, or a FIFO that appending would block on
        raise ScoreError(f"{out} is not a regular file: give another --out")
    if out.stat().st_size == 0:
        return {}
    if kind == "jsonl":
        return _read_scored_jsonl(out, columns, retry_failed)
    return _read_scored_csv(out, columns, retry_failed)


def _read_scored_csv(out: Path, columns: list[str], retry_failed: bool) -> dict[str, str]:
    data = out.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScoreError(
            f"{out} is not a score CSV (not UTF-8 text at byte {err.start}; a feature cache or "
            "another binary file?): it was left as it is. Give another --out."
        ) from None
    header = next(csv.reader(io.StringIO(text.partition("\n")[0] + "\n")), [])
    if header != columns:
        raise ScoreError(
            f"{out} has columns {header[:12]}, but this model writes {columns}: it is not this "
            "model's score CSV (another model's, or another file) and was left as it is. Give "
            "another --out, or delete the file to rescore everything."
        )
    drop_torn_tail(out)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if retry_failed and any(r["status"] != STATUS_OK for r in rows):
        rows = [r for r in rows if r["status"] == STATUS_OK]
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    return {r["video_id"]: r["status"] for r in rows}


def drop_torn_tail(out: Path) -> bool:
    """Cut a last line that lacks its newline (a run killed in the middle of an append).

    Every row is written on one line (see ``_Appender``), so a tail without a newline is an
    incomplete row: dropping it means that video is scored again, and the next append starts
    on a fresh line instead of gluing onto the torn one. Returns whether anything was cut.
    Call it only on a file whose header ``read_scored`` has checked: it cuts any file.
    """
    data = out.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(out, "r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)
    return True


# -- JSONL --------------------------------------------------------------------------------
_JSONL_START = b'{"video_id": '  # how every line json_line writes for output_columns begins


def _read_scored_jsonl(out: Path, columns: list[str], retry_failed: bool) -> dict[str, str]:
    lines = _checked_jsonl(out, columns)
    if retry_failed and any(row["status"] != STATUS_OK for _, row in lines):
        lines = [(line, row) for line, row in lines if row["status"] == STATUS_OK]
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line, _ in lines))
        os.replace(tmp, out)
    return {row["video_id"]: row["status"] for _, row in lines}


def _checked_jsonl(out: Path, columns: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) of every complete line of a score JSONL, after checking each is a row of
    ``columns``; then a torn last line is cut. Raises ``ScoreError`` and changes nothing in
    a file that is not such a JSONL.

    The unterminated tail is checked too before it is cut: if it parses it must be one of
    our rows (a one-line manifest.jsonl without a final newline is refused, not truncated),
    and if it does not, some complete line must have been ours, or the tail must begin the
    way our lines do (a run killed while writing its first row)."""
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScoreError(
            f"{out} is not a score JSONL (not UTF-8 text at byte {err.start}; a feature cache "
            "or another binary file?): it was left as it is. Give another --out."
        ) from None
    lines = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        if line.strip():
            lines.append((line, _jsonl_row(out, number, json_or_none(line), columns)))
    tail = data[end:]
    if tail:
        parsed = json_or_none(tail)
        if parsed is not None:
            _jsonl_row(out, text.count("\n") + 1, parsed, columns)
        elif not lines and not tail.startswith(_JSONL_START):
            raise ScoreError(
                f"{out} is not a score JSONL (no complete line, and it does not begin as one): "
                "it was left as it is. Give another --out."
            )
        drop_torn_tail(out)
    return lines


def json_or_none(text: str | bytes) -> Any:
    """``text`` parsed as JSON, or None where it is not JSON (JSON null is never a row)."""
    try:
        return json.loads(text)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes
        return None


def _jsonl_row(out: Path, number: int, row: Any, columns: list[str]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ScoreError(
            f"{out} is not a score JSONL (line {number} is not a JSON object): it was left as "
            "it is. Give another --out."
        )
    if list(row) != columns:
        raise ScoreError(
            f"{out} has rows with keys {list(row)[:12]} (line {number}), but this model writes "
            f"{columns}: it is not this model's score JSONL (another model's, or another file) "
            "and was left as it is. Give another --out, or delete the file to rescore "
            "everything."
        )
    return row


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of the complete lines of a score JSONL (a torn last line is not a row)."""
    data = path.read_bytes()
    text = data[: data.rfind(b"\n") + 1].decode("utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


# -- Parquet ------------------------------------------------------------------------------
def _parquet_schema(pa, columns: list[str]):
    """Text columns as strings, every score float64 (null where the video failed)."""
    labels = set(columns[3:-1])
    return pa.schema([(c, pa.float64() if c in labels else pa.string()) for c in columns])


def _read_parquet(out: Path, columns: list[str] | None = None):
    """The rows of a finished Parquet output as a pyarrow Table; with ``columns``, checks
    it has exactly those first (``ScoreError``, the file untouched, if it has not)."""
    pa, pq = import_pyarrow(out, ScoreError)
    try:
        schema = pq.read_schema(out)
        if columns is None or schema.names == columns:
            return pq.read_table(out)
    except (pa.ArrowInvalid, OSError) as err:
        raise ScoreError(
            f"{out} is not a score Parquet file, or a damaged one ({err}): it was left as it "
            "is. Give another --out, or delete the file to rescore everything."
        ) from None
    raise ScoreError(
        f"{out} has columns {schema.names[:12]}, but this model writes {columns}: it is not "
        "this model's score Parquet file (another model's, or another file) and was left as "
        "it is. Give another --out, or delete the file to rescore everything."
    )


def _has_rows_file(path: Path) -> bool:
    """Whether there is a Parquet output to read (an empty file, as ``touch`` makes, holds
    no rows, as an empty CSV does)."""
    if not path.exists():
        return False
    if not path.is_file():
        raise ScoreError(f"{path} is not a regular file: give another --out")
    return path.stat().st_size > 0


def _read_scored_parquet(out: Path, columns: list[str], retry_failed: bool) -> dict[str, str]:
    done: dict[str, str] = {}
    if _has_rows_file(out):
        table = _read_parquet(out, columns)
        done = dict(zip(table.column("video_id").to_pylist(), table.column("status").to_pylist()))
        if retry_failed and any(s != STATUS_OK for s in done.values()):
            rows = [r for r in table.to_pylist() if r["status"] == STATUS_OK]
            _write_parquet_atomically(out, columns, rows)
            done = {r["video_id"]: STATUS_OK for r in rows}
    journal = journal_path(out)
    if journal.exists() and journal.stat().st_size:
        done.update(_read_scored_jsonl(journal, columns, retry_failed))
    return done


def _write_parquet_atomically(out: Path, columns: list[str], rows: list[dict[str, Any]]):
    """``rows`` as the Parquet file ``out`` (its real path, so that a link stays a link),
    written beside it and renamed over it: a reader, or a crash, sees the old file or the
    new one, never half of one."""
    pa, pq = import_pyarrow(out, ScoreError)
    real = Path(os.path.realpath(out))
    tmp = real.with_name(f".{real.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_parquet_schema(pa, columns)), tmp)
    publish(tmp, real)


def finish_output(out: Path, columns: list[str]) -> None:
    """End a run that has written every row: a Parquet output gets its journal's rows
    (after those it held) and the journal is deleted; nothing to do for CSV and JSONL.

    A crash between the rename and the deletion leaves rows in both: the journal's win
    (they are the newer) and each video keeps one row."""
    if _kind(out) != "parquet":
        return
    journal = journal_path(out)
    if not journal.exists():
        return
    old = _read_parquet(out, columns).to_pylist() if _has_rows_file(out) else []
    rows = {r["video_id"]: r for r in [*old, *_jsonl_rows(journal)]}
    _write_parquet_atomically(out, columns, list(rows.values()))
    journal.unlink()


# -- appending rows -----------------------------------------------------------------------
def _one_line(value: Any) -> Any:
    """Text on one line (an error with newlines becomes "a | b"): every format writes the
    same values, and a CSV row must stay one line (``drop_torn_tail``)."""
    return " | ".join(str(value).splitlines()) if isinstance(value, str) else value


class _Appender:
    """Appends rows to the output CSV, flushed and fsynced after every batch.

    Each row is one line (newlines in error texts are flattened), and a batch goes out in a
    single write, so an interruption leaves at most one torn last line, which
    ``drop_torn_tail`` removes on resume."""

    def __init__(self, out: Path, columns: list[str]):
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.exists() or out.stat().st_size == 0
        self.fh = open(out, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, fieldnames=columns)
        if new:
            self.writer.writeheader()
            self.flush()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.writer.fieldnames)
        for row in rows:
            writer.writerow({k: _one_line(v) for k, v in row.items()})
        self.fh.write(buffer.getvalue())
        self.flush()

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


class _JsonlAppender(_Appender):
    """Appends rows to a JSONL output (or a Parquet output's journal) as ``_Appender`` does
    to a CSV: one JSON object per row on one line, a batch in a single write, flushed and
    fsynced, so that an interruption leaves at most one torn last line."""

    def __init__(self, out: Path, columns: list[str]):
        out.parent.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        self.fh = open(out, "a", newline="", encoding="utf-8")

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self.fh.write("".join(json_line(_typed(row, self.columns)) for row in rows))
        self.flush()


def _typed(row: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    """A row as ``_row`` makes it (scores as text, absent where the video failed) with the
    scores as floats and None where there is none: what JSONL and Parquet store."""
    labels = set(columns[3:-1])
    return {c: _score(row.get(c)) if c in labels else _one_line(row.get(c, "")) for c in columns}


def _score(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) else None  # an ok row's scores are always finite


def open_appender(out: Path, columns: list[str]) -> _Appender:
    """What appends a run's rows to ``out``: the CSV or the JSONL itself, a Parquet output's
    journal (``finish_output`` makes the Parquet file of it)."""
    kind = _kind(out)
    if kind == "parquet":
        return _JsonlAppender(journal_path(out), columns)
    if kind == "jsonl":
        return _JsonlAppender(out, columns)
    return _Appender(out, columns)


def _row(
    record: VideoRecord, status: str, scores: dict[str, float] | None = None, error: str = ""
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "video_id": record.video_id,
        "path": str(record.path),
        "status": status,
        "error": error,
    }
    for name, value in (scores or {}).items():
        row[name] = repr(float(value))
    return row


# -- reading rows back --------------------------------------------------------------------
def read_rows(
    out: str | os.PathLike, label_names: Sequence[str], ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of an output (CSV, JSONL or Parquet, by suffix) with the scores as floats (None
    where the video failed), in the order of ``ids`` when given (only those rows), else in
    file order. A Parquet output's journal, when a run left one, is read too."""
    out = Path(out)
    kind = _kind(out)
    if kind == "jsonl":
        rows = _jsonl_rows(out)
    elif kind == "parquet":
        journal = journal_path(out)
        rows = _read_parquet(out).to_pylist() if _has_rows_file(out) else []
        if journal.exists():
            rows = list({r["video_id"]: r for r in [*rows, *_jsonl_rows(journal)]}.values())
    else:
        with open(out, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    for row in rows:
        for name in label_names:
            row[name] = float(row[name]) if row["status"] == STATUS_OK else None
    if ids is None:
        return rows
    by_id = {r["video_id"]: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]
