"""One chunk's features on a model worker: items of several videos batched together.

``compute_chunk`` reads the events of a source (``sources``: a thread, the consuming
thread, or the decode pool) and feeds each view item to the extractors that asked for its
view. Each extractor has one ``CrossVideoBatcher``: its ``batch_size`` counts items of
*several* videos (8 key frames of each of 8 videos fill a batch of 64), so a GPU gets full
batches even when a video has few items. Videos arrive in record order, so the batches do
not depend on the source; on the CPU the backbones give every row the same bits whatever
else is in its batch (tests/test_extract_pool.py checks it), so features equal
per-video batching.

Failures stay per video:

- the decoder failed (``DecodeError``, a dead or hanging decode process, a truncated
  file): one row for the whole video (extractor ``*``);
- another decoder-side error (a view that cannot be built): with one extractor, its row;
  with several, each extractor runs alone on the video to find which view fails;
- a forward pass raised: the batch's videos lose that extractor's rows of the batch. A
  batch of one video's items names the culprit (its row is written); the other videos of
  a mixed batch re-run that extractor alone, so one bad video costs only its own row.
  A video whose every extractor failed stops being decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aigvqa.extractors.base import Extractor, VideoInfo
from aigvqa.pipeline.extract.failures import (
    ALL_EXTRACTORS,
    error_text,
    truncation,
    truncation_warnings,
)
from aigvqa.pipeline.extract.options import DecodeSettings
from aigvqa.pipeline.extract.sources import SequentialSource, ThreadSource
from aigvqa.pipeline.records import VideoRecord

Outcome = tuple[dict[str, np.ndarray], dict[str, str]]
"""(features per extractor, error text per extractor or ``*``) of one video."""


@dataclass
class _Video:
    record: VideoRecord
    info: VideoInfo | None = None
    rows: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    # extractor -> (error, True when the failing batch held only this video's items)
    broken: dict[str, tuple[BaseException, bool]] = field(default_factory=dict)
    terminal: tuple[str, object] | None = None
    cancelled: bool = False


class CrossVideoBatcher:
    """One extractor's pending items (of any videos) and its forward pass per full batch."""

    def __init__(self, model: Extractor, videos: list[_Video], across: bool) -> None:
        self.model, self.name = model, model.name
        # blip-itm, imagereward: forward(items, prompts=[the prompt of each item's video])
        self.needs_prompt = bool(getattr(model, "needs_prompt", False))
        self.batch_size = max(1, int(model.config().get("batch_size", 16)))
        self.videos, self.across = videos, across
        self.pending: list[tuple[int, int, np.ndarray]] = []

    def add(self, video: int, index: int, item: np.ndarray) -> set[int]:
        """Queue an item; returns the videos a forward pass that raised just broke."""
        broke: set[int] = set()
        if self.needs_prompt and not (self.videos[video].record.prompt or "").strip():
            from aigvqa.extractors.runner import MissingPromptError

            self.videos[video].broken.setdefault(
                self.name,
                (
                    MissingPromptError(
                        f"extractor {self.name!r} scores frames against the video's prompt, "
                        "and this video has none; give the manifest a prompt column"
                    ),
                    True,
                ),
            )
            return {video}
        if not self.across and self.pending and self.pending[-1][0] != video:
            broke = self.flush()
        self.pending.append((video, index, item))
        if len(self.pending) >= self.batch_size:
            broke |= self.flush()
        return broke

    def holds(self, video: int) -> bool:
        return any(v == video for v, _, _ in self.pending)

    def drop(self, video: int) -> None:
        self.pending = [p for p in self.pending if p[0] != video]

    def flush(self) -> set[int]:
        from aigvqa.extractors.runner import run_stats

        if not self.pending:
            return set()
        pending, self.pending = self.pending, []
        try:
            batch = np.stack([p[2] for p in pending])
            if self.needs_prompt:
                output = self.model.forward(
                    batch, prompts=[str(self.videos[v].record.prompt) for v, _, _ in pending]
                )
            else:
                output = self.model.forward(batch)
            features = np.asarray(output, dtype=np.float32)
            if features.ndim != 2 or features.shape[0] != len(pending):
                raise RuntimeError(
                    f"extractor {self.name!r} returned features of shape {features.shape} for "
                    f"a batch of {len(pending)} items; expected [{len(pending)}, D]"
                )
        except Exception as err:  # noqa: BLE001 - the batch's videos lose these rows only
            owners = {v for v, _, _ in pending}
            for v in owners:
                self.videos[v].broken.setdefault(self.name, (err, len(owners) == 1))
            return owners
        run_stats.forward_calls[self.name] += 1
        run_stats.items[self.name] += len(pending)
        for row, (v, index, _) in enumerate(pending):
            self.videos[v].rows.setdefault(self.name, {})[index] = features[row]
        return set()


def video_views(models: Sequence[Extractor]) -> list:
    """The distinct views (by key) the video extractors ask for."""
    views: dict[str, object] = {}
    for model in models:
        view = model.view()
        views.setdefault(view.key, view)
    return list(views.values())


def make_source(records: Sequence[VideoRecord], views, settings: DecodeSettings, pool=None):
    paths = [str(r.path) for r in records]
    threads = int(settings.decode_threads or 0)
    if pool is not None:
        return pool.source(paths, views, threads)
    if settings.videos_in_flight > 1 and len(paths) > 1:
        return ThreadSource(
            paths, views, threads, settings.videos_in_flight, settings.decode_ahead_bytes
        )
    return SequentialSource(paths, views, threads)


def compute_chunk(
    records: Sequence[VideoRecord], models: Sequence[Extractor], settings: DecodeSettings, pool=None
) -> list[Outcome]:
    """(features, errors) of every record for the loaded video extractors ``models``."""
    models = [m for m in models if m.modality == "video"]
    threads = int(settings.decode_threads or 0)
    try:
        views = video_views(models)
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"several extractors share a name: {names}")
    except Exception:  # noqa: BLE001 - the per-video path turns it into failure rows
        return [extract_one(r, models, threads) for r in records]
    if not views:
        return [({}, {}) for _ in records]

    videos = [_Video(r) for r in records]
    batchers = [CrossVideoBatcher(m, videos, settings.batch_across_videos) for m in models]
    by_view: dict[str, list[CrossVideoBatcher]] = {}
    for model, batcher in zip(models, batchers):
        by_view.setdefault(model.view().key, []).append(batcher)
    source = make_source(records, views, settings, pool)

    def broken(owners: set[int]) -> None:
        for v in owners:
            state = videos[v]
            if len(state.broken) == len(models) and not state.cancelled and state.terminal is None:
                state.cancelled = True
                source.cancel(v)

    try:
        for v, kind, payload in source.events():
            state = videos[v]
            if kind == "item":
                if state.cancelled:
                    continue
                key, index, item = payload
                for batcher in by_view.get(key, ()):
                    if batcher.name not in state.broken:
                        broken(batcher.add(v, index, item))
            elif kind == "start":
                state.info = payload
            elif kind == "restart":  # a fresh decode process starts the video over
                state.rows.clear()
                for batcher in batchers:
                    batcher.drop(v)
            else:
                state.terminal = (kind, payload)
                for batcher in batchers:
                    if kind != "end":
                        batcher.drop(v)
                    elif not batcher.across and batcher.holds(v):
                        broken(batcher.flush())
        for batcher in batchers:
            broken(batcher.flush())
    finally:
        source.close()
    return [_finish(state, models, threads) for state in videos]


def _finish(state: _Video, models: list[Extractor], threads: int) -> Outcome:
    from aigvqa.extractors.runner import run_stats

    record = state.record
    kind, payload = state.terminal or (
        "error",
        RuntimeError("the decoder never finished this video"),
    )
    if kind == "error":
        return failed_video(record, models, payload, threads)
    if kind == "end":
        run_stats.videos += 1
        cut = truncation(payload, state.info.num_frames)
        if cut:
            return {}, {ALL_EXTRACTORS: f"TruncatedVideo: {record.path}: {cut}"}
    outputs: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    for model in models:
        if model.name in state.broken:
            err, alone = state.broken[model.name]
            if alone:
                errors[model.name] = error_text(err)
            else:  # a mixed batch raised: is this video the culprit? run it alone
                got, failed = extract_one(record, [model], threads)
                outputs.update(got)
                errors.update(failed)
            continue
        rows = state.rows.get(model.name, {})
        if not rows:
            errors[model.name] = _no_items(model, state.info)
        else:
            outputs[model.name] = np.stack([rows[i] for i in sorted(rows)]).astype(
                np.float32, copy=False
            )
    return outputs, errors


def _no_items(model: Extractor, info: VideoInfo | None) -> str:
    view = model.view()
    frames = info.num_frames if info is not None else "?"
    return (
        f"{model.name} produced no items for this video (view "
        f"{view.key if view is not None else '?'}, {frames} frame(s)): the "
        "video is too short for this extractor"
    )


# -- one video alone, in this process (isolating a failure) ----------------------------------
def extract_one(record: VideoRecord, models: list[Extractor], threads: int = 0) -> Outcome:
    """(outputs, errors) of one video: every model in one decode; isolate failures."""
    from aigvqa.extractors.decode import probe
    from aigvqa.extractors.runner import extract_video

    try:
        info = probe(record.path)
        with truncation_warnings() as caught:
            outputs = extract_video(
                record.path, models, info=info, decode_threads=threads, prompt=record.prompt
            )
    except Exception as err:  # noqa: BLE001 - one bad video must never stop the run
        return failed_video(record, models, err, threads)
    cut = truncation(caught, info.num_frames)
    if cut:
        return {}, {ALL_EXTRACTORS: f"TruncatedVideo: {record.path}: {cut}"}
    errors = {}
    for model in models:
        array = outputs.get(model.name)
        if array is None:
            errors[model.name] = f"extract_video returned no output for {model.name}"
        elif len(array) == 0:
            errors[model.name] = _no_items(model, info)
    return {k: v for k, v in outputs.items() if k not in errors}, errors


def failed_video(
    record: VideoRecord, models: list[Extractor], err: BaseException, threads: int
) -> Outcome:
    """(outputs, errors) of a video whose decoding or extraction raised ``err``."""
    from aigvqa.errors import DecodeError

    if isinstance(err, DecodeError):  # the file itself is bad (or kills / hangs the decoder)
        return {}, {ALL_EXTRACTORS: error_text(err)}
    if len(models) == 1:
        return {}, {models[0].name: error_text(err)}
    # Which extractor failed? Run each alone (re-decodes, but only for this video).
    outputs, errors = {}, {}
    for model in models:
        got, failed = extract_one(record, [model], threads)
        outputs.update(got)
        errors.update(failed)
    return outputs, errors
