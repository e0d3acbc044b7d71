"""The unit every manifest reader produces and every stage-one task consumes, and the
identities of inputs: a prompt's key, a file's sha256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset.

    ``labels`` maps a MOS name to its value (``{"mos": 3.2}`` or FETV's
    ``{"static_quality": .., "temporal_quality": .., "alignment": ..}``); ``groups`` holds
    the grouping keys the evaluation protocols split on: ``prompt`` (a prompt id shared by
    every video generated from the same text) and ``generator`` (the T2V model).
    """

    video_id: str
    path: Path
    prompt: str | None = None
    labels: dict[str, float] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    @property
    def prompt_id(self) -> str | None:
        """Key of the prompt's text features in the cache (prompt texts are encoded once)."""
        if "prompt" in self.groups:
            return self.groups["prompt"]
        return None if self.prompt is None else prompt_key(self.prompt)


def prompt_key(text: str) -> str:
    """A stable id for a prompt text when the manifest gives none."""
    return "p-" + hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (bounded memory), computed
    afresh on every call: the identity an imported feature file or a bundle's files are
    recorded under."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


FILE_IDENTITY = "file_identity"
"""The /videos field ``extract`` records for each video it decoded: ``"<size>:<mtime_ns>"``
of the file when it was read (a string: an int column some rows lack would be stored as
float64, which cannot hold nanoseconds). Rows of caches written before it have none."""


def file_identity_text(path: str | Path) -> str | None:
    """``"<size>:<mtime_ns>"`` of ``path`` (the FILE_IDENTITY field), or None when it cannot
    be stat'ed. Content identity without reading the bytes: a file rewritten within one
    mtime tick at the same size is not told apart."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def not_the_cached_file(row: dict, path: str | Path) -> str | None:
    """Why the file at ``path`` is not the one a cache's videos-table ``row`` was made from
    -- ``"moved"`` (the row names another path) or ``"changed"`` (its size or mtime_ns is not
    the recorded FILE_IDENTITY) -- or None: the same file, or nothing to compare (no path or
    identity recorded, or the file cannot be stat'ed here)."""
    stored = row.get("path") or ""
    if not stored:
        return None
    if os.path.realpath(stored) != os.path.realpath(path):
        return "moved"
    recorded = row.get(FILE_IDENTITY)
    now = file_identity_text(path) if recorded else None
    return "changed" if now is not None and now != recorded else None


def identified_row(record: VideoRecord) -> dict:
    """The videos-table row of ``record`` with its file's FILE_IDENTITY, taken now (call it
    before decoding, so that the identity is never newer than the features)."""
    from aigvqa.cache.schema import video_row

    row = video_row(record)
    identity = file_identity_text(record.path)
    if identity is not None:
        row[FILE_IDENTITY] = identity
    return row
