"""``aigvqa report``: one self-contained HTML page to *look at* a scored dataset.

``write_report(sources, out)`` reads a score CSV of ``aigvqa score`` and / or a feature
cache (``pipeline.html_report.inputs``) and writes one page that opens from disk with no
server and nothing fetched: the agreement of the scores with MOS (table and an inline SVG
scatter, where the cache gives MOS), and a gallery of the ``n`` lowest and ``n`` highest
scored videos, each with a strip of frames decoded by the project's decoder
(``pipeline.html_report.thumbs``), its prompt, generator and score. Without predicted
scores (a cache alone) the gallery ranks by MOS. Every text from the data is escaped and a
Content-Security-Policy lets only the page's own script run (``pipeline.html_report.page``).

A missing or undecodable video gets a placeholder that says why, never an error; the page
is written to a temporary file and renamed over ``out`` (a reader never sees half a page).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aigvqa.pipeline.html_report.inputs import (
    ReportData,
    ReportError,
    ReportVideo,
    read_inputs,
)

__all__ = ["ReportError", "ReportResult", "write_report"]

PREFERRED_LABELS = ("overall", "mos")
"""The dimension shown when none is named, if present (else the first one)."""


@dataclass
class ReportResult:
    """What ``write_report`` wrote."""

    path: Path
    videos: int  # rows of the report's inputs (the score CSV's, else the cache's)
    ranked: int  # of them, those with a value to rank by
    shown: int  # videos in the gallery
    no_thumbnail: int  # of them, those shown with a placeholder (missing / undecodable file)
    label: str | None  # the dimension ranked and plotted
    ranked_by: str  # "predicted" or "mos"
    with_mos: int  # videos with both a score and a MOS on ``label`` (the scatter's points)

    def summary(self) -> str:
        what = "predicted" if self.ranked_by == "predicted" else "MOS"
        text = (
            f"report: {self.path} ({self.videos} videos; gallery: {self.shown} of "
            f"{self.ranked} ranked by {what} {self.label}"
        )
        if self.no_thumbnail:
            text += f", {self.no_thumbnail} without a thumbnail (the page says why)"
        text += ")"
        if self.ranked_by == "predicted":
            text += (
                f"; scatter and table over {self.with_mos} videos with MOS"
                if self.with_mos
                else "; no MOS for these videos: no scatter or table"
            )
        return text


def choose_label(data: ReportData, label: str | None) -> tuple[str, str]:
    """(label, "predicted" or "mos"): the dimension to rank and plot, and by what."""
    by = "predicted" if data.scores_path is not None else "mos"
    have = data.predicted_labels if by == "predicted" else data.mos_labels
    if label is not None:
        if label not in have:
            where = data.scores_path if by == "predicted" else data.cache_path
            kind = "predicted columns" if by == "predicted" else "MOS labels"
            raise ReportError(
                f"no dimension {label!r} in {where} (its {kind}: {', '.join(have) or 'none'}); "
                "name one of those"
            )
        return label, by
    if not have:
        where = data.scores_path if by == "predicted" else data.cache_path
        raise ReportError(
            f"{where} has no {'predicted column' if by == 'predicted' else 'MOS label'}: "
            "nothing to rank the videos by"
        )
    candidates = (data.common_labels or have) if by == "predicted" else have
    return next((c for c in PREFERRED_LABELS if c in candidates), candidates[0]), by


def pick_gallery(
    videos: Sequence[ReportVideo], label: str, by: str, n: int
) -> tuple[list[ReportVideo], list[ReportVideo], int]:
    """(the n lowest, lowest first; the n highest, highest first, none of them among the
    lowest; how many videos were ranked)."""
    ranked = sorted(
        (v for v in videos if v.value(label, by) is not None),
        key=lambda v: (v.value(label, by), v.video_id),
    )
    lowest = ranked[:n]
    highest = ranked[len(lowest) :][-n:][::-1]
    return lowest, highest, len(ranked)


def write_report(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike = "report.html",
    *,
    n: int = 8,
    label: str | None = None,
    title: str | None = None,
    frames: int = 6,
    thumb_height: int = 96,
    results: Sequence = (),
    notes: Sequence[str] = (),
    progress: bool = True,
) -> ReportResult:
    """Write the HTML report of ``sources`` -- a score CSV written by ``aigvqa score``, the
    feature cache of its videos (prompts, generators, MOS), or both in any order -- to
    ``out``.

    ``n``: videos in each half of the gallery (the ``n`` lowest and ``n`` highest);
    ``label``: the dimension to rank and plot (default: ``overall`` / ``mos`` / the first
    predicted column that has a MOS); ``frames`` and ``thumb_height``: the strip of each
    video; ``results``: ``EvaluationResult``s to show as a cross-validated table (the demo
    passes its heads'); ``notes``: sentences shown at the top of the page.
    """
    from tqdm import tqdm

    from aigvqa import __version__
    from aigvqa.pipeline.html_report import page as html
    from aigvqa.pipeline.html_report.thumbs import thumbnail

    if n < 1:
        raise ReportError(f"n must be at least 1 (videos per gallery half), got {n}")
    if not 1 <= frames <= 32:
        raise ReportError(f"frames must be 1..32 (frames per thumbnail strip), got {frames}")
    if not 16 <= thumb_height <= 512:
        raise ReportError(f"thumb_height must be 16..512 pixels, got {thumb_height}")
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out} is a folder: give the path of the .html file to write")
    data = read_inputs(sources)
    label, by = choose_label(data, label)
    lowest, highest, ranked = pick_gallery(data.videos, label, by, n)

    shown = lowest + highest
    thumbs = {}
    with tqdm(
        total=len(shown), desc="thumbnails", unit="video", disable=not progress, dynamic_ncols=True
    ) as bar:
        for video in shown:
            thumbs[video.video_id] = thumbnail(video.video_file(), frames, thumb_height)
            bar.update()

    page_notes = list(notes) + _notes(data, label, by, ranked, shown, thumbs)
    agreement = [html.agreement(data.videos, lab) for lab in data.common_labels]
    agreement = [row for row in agreement if row["n"]]
    scatter = html.scatter_for(data.videos, label) if by == "predicted" else ""
    what = f"predicted {label}" if by == "predicted" else f"MOS {label}"
    galleries = [
        (f"Lowest {what}: {len(lowest)} of {ranked}", [(v, thumbs[v.video_id]) for v in lowest])
    ]
    if highest:
        galleries.append(
            (
                f"Highest {what}: {len(highest)} of {ranked}",
                [(v, thumbs[v.video_id]) for v in highest],
            )
        )
    sources_line = (
        "From "
        + " and ".join(f"<code>{html.e(p)}</code>" for p in data.sources)
        + f": {len(data.videos)} videos."
    )
    text = html.page(
        title=title or f"aigvqa report: {data.sources[0].name}",
        sources_line=sources_line,
        notes=page_notes,
        agreement_rows=agreement,
        results=list(results),
        scatter=scatter,
        label=label,
        by=by,
        galleries=galleries,
        footer=f"Written by aigvqa {html.e(__version__)}; one file, nothing loaded from "
        "elsewhere (thumbnails are inline JPEG, the scatter inline SVG).",
    )
    _write_atomically(out, text)
    return ReportResult(
        path=out,
        videos=len(data.videos),
        ranked=ranked,
        shown=len(shown),
        no_thumbnail=sum(thumbs[v.video_id].uri is None for v in shown),
        label=label,
        ranked_by=by,
        with_mos=len(html.paired(data.videos, label)) if by == "predicted" else 0,
    )


def _notes(data: ReportData, label: str, by: str, ranked: int, shown, thumbs) -> list[str]:
    notes = []
    if by == "mos":
        notes.append(
            "No predicted scores: the gallery ranks the videos by their MOS. Give the score CSV "
            "of `aigvqa score` as well (`aigvqa report SCORES.csv CACHE.h5`) to compare "
            "predictions with MOS."
        )
    elif data.cache_path is None:
        notes.append(
            "No MOS: a score CSV holds predictions only, so there is no evaluation table and no "
            "scatter, and no prompts or generators. Give the feature cache of these videos as "
            "well (`aigvqa report SCORES.csv CACHE.h5`): its videos table has them."
        )
    elif not data.common_labels:
        notes.append(
            f"No MOS to compare with: the scores predict {', '.join(data.predicted_labels)}, "
            f"the cache's videos have MOS labels {', '.join(data.mos_labels) or 'none'}; no "
            "evaluation table or scatter."
        )
    elif not any(v.value(label, "mos") is not None for v in data.videos):
        notes.append(f"No video has a MOS on {label}: no scatter.")
    failed = [v for v in data.videos if by == "predicted" and v.status != "ok"]
    if failed:
        listed = "; ".join(f"{v.video_id}: {v.error or v.status}" for v in failed[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        notes.append(
            f"{len(failed)} video(s) failed scoring and are not ranked ({listed}{more}); "
            "`aigvqa score ... --retry-failed` tries them again."
        )
    elif by == "mos" and ranked < len(data.videos):
        notes.append(f"{len(data.videos) - ranked} video(s) have no MOS on {label}: not ranked.")
    if data.only_in_cache:
        notes.append(
            f"{data.only_in_cache} video(s) of the cache have no row in the score CSV: not shown."
        )
    missing = sum(thumbs[v.video_id].uri is None for v in shown)
    if missing:
        notes.append(
            f"{missing} of the {len(shown)} videos shown have no thumbnail (missing or "
            "undecodable file): each card says why."
        )
    return notes


def _write_atomically(out: Path, text: str) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ReportError(
            f"cannot write the report to {out} ({err.strerror or err}); choose another output path"
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
