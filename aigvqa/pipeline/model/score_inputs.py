"""What ``aigvqa score`` (``pipeline.model.score``) scores: the records of a manifest, or of
bare video files and folders (ids are the files' stems), and the check that every video
has a prompt when the model reads prompt features."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from aigvqa.pipeline.model.score_features import prompt_groups
from aigvqa.pipeline.model.score_output import ScoreError
from aigvqa.pipeline.records import VideoRecord

VIDEO_SUFFIXES = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".gif",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".ts",
    ".3gp",
)
"""What counts as a video when a folder is given to ``score_videos`` (case-insensitive)."""
MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".txt")
"""Inputs of ``aigvqa score`` read as a manifest rather than as a video."""


def _records(manifest, encoding: str = "utf-8") -> list[VideoRecord]:
    if isinstance(manifest, str | os.PathLike):
        from aigvqa.pipeline.manifest import read_manifest

        # Missing files are not a reason to refuse the whole manifest here: they become
        # failed rows of the output, like any video that cannot be decoded.
        records = read_manifest(manifest, check_files=False, encoding=encoding)
    else:
        records = list(manifest)
    seen: set[str] = set()
    dupes = sorted({r.video_id for r in records if r.video_id in seen or seen.add(r.video_id)})
    if dupes:
        raise ScoreError(
            f"video ids must be unique in the manifest; duplicated: {', '.join(dupes[:10])}"
        )
    return [replace(r, path=Path(os.path.abspath(r.path))) for r in records]


# -- bare videos --------------------------------------------------------------------------
def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``aigvqa score`` reads ``path`` as a manifest (a file with a manifest suffix)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES


def video_records(
    videos: str | os.PathLike | Iterable[str | os.PathLike], prompt: str | None = None
) -> list[VideoRecord]:
    """Records for video files and folders of videos (the files in a folder whose suffix is
    in ``VIDEO_SUFFIXES``, not its sub-folders); the id is the file's stem, ``prompt`` the
    prompt of every video. Two files with one stem are refused: give a manifest instead."""
    if isinstance(videos, str | os.PathLike):
        videos = [videos]
    files: list[Path] = []
    for item in videos:
        item = Path(item)
        if item.is_dir():
            found = sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
            )
            if not found:
                raise ScoreError(
                    f"{item}: a folder without videos (looked for {' '.join(VIDEO_SUFFIXES)})"
                )
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise ScoreError(f"{item}: no such video file or folder")
    by_id: dict[str, list[Path]] = {}
    for f in files:
        by_id.setdefault(f.stem, []).append(f)
    clashes = {k: v for k, v in by_id.items() if len(v) > 1}
    if clashes:
        shown = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in list(clashes.items())[:5])
        raise ScoreError(
            f"videos get their id from the file name, and these share one ({shown}); "
            "score them with a manifest that gives each an id"
        )
    text = prompt.strip() if prompt else None
    return [VideoRecord(video_id=f.stem, path=Path(os.path.abspath(f)), prompt=text) for f in files]


def check_prompts(bundle, records: Sequence[VideoRecord], how: str) -> None:
    """Refuse, before any work, records without a prompt when the model reads prompt
    features; ``how`` says how to give one (``--prompt``, ``prompt=``)."""
    needs = prompt_groups(bundle)
    missing = [r.video_id for r in records if not (r.prompt or "").strip()]
    if needs and missing:
        raise ScoreError(
            f"{bundle.path or 'the model'} reads prompt features ({', '.join(needs)}), and no "
            f"prompt was given for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: "
            f"give the prompt with {how}, or score with a manifest that has a prompt column"
        )
