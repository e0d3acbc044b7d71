"""The output CSV of ``aigvqa score`` (``pipeline.model.score``): its columns, the lock that
keeps one run per output, resuming from what it holds, appending rows that survive an
interruption, and reading them back; ``ScoreReport``, what a run did.

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
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigvqa.errors import AigvqaError
from aigvqa.pipeline.records import VideoRecord

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class ScoreError(AigvqaError, ValueError):
    """Scoring cannot start: the output CSV belongs to another model or is being written by
    another run, features cannot be made, a needed prompt is missing."""


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


# -- the output CSV -----------------------------------------------------------------------
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


def read_scored(out: Path, columns: list[str], retry_failed: bool) -> dict[str, str]:
    """{video id: status} of the rows already in ``out``; checks it was written for the same
    labels. With ``retry_failed`` the failed rows are removed from the file (atomically) first.

    Nothing is changed in a file that is not a score CSV of these columns: the header is
    decoded and checked before a torn last row is cut (``drop_torn_tail``)."""
    if not out.exists():
        return {}
    if not out.is_file():  # a folder, or a FIFO that appending would block on
        raise ScoreError(f"{out} is not a regular file: give another --out")
    if out.stat().st_size == 0:
        return {}
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
            writer.writerow(
                {
                    k: " | ".join(str(v).splitlines()) if isinstance(v, str) else v
                    for k, v in row.items()
                }
            )
        self.fh.write(buffer.getvalue())
        self.flush()

    def flush(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


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


def read_rows(
    out: str | os.PathLike, label_names: Sequence[str], ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of an output CSV with the scores as floats (None where the video failed), in the
    order of ``ids`` when given (only those rows), else in file order."""
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for name in label_names:
            row[name] = float(row[name]) if row["status"] == STATUS_OK else None
    if ids is None:
        return rows
    by_id = {r["video_id"]: r for r in rows}
    return [by_id[i] for i in ids if i in by_id]
