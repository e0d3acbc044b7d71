"""Run extractors on one video (decoded once) and on prompts (each distinct one once).

``extract_video`` collects the distinct views the video extractors ask for (shared by
``view.key``), walks ``views.stream_views`` once (one decoder pass whatever the number of
extractors), hands every finished item to each extractor of its view, and runs a forward
pass whenever an extractor's batch is full. Memory holds one batch per extractor plus
the frames of items still being assembled. Extractors sharing a view receive the same
item arrays, so ``forward`` must not modify its input in place.

Extractors that score frames against the video's prompt (``needs_prompt = True``: blip-itm,
imagereward) get it through ``extract_video(..., prompt=...)`` /
``VideoFeatureBuilder(..., prompt=...)``: each item carries its video's prompt, and the
forward pass is ``forward(batch, prompts=[one per item])``. A video without a prompt is a
``MissingPromptError`` for them, raised at their first item (other extractors are not
affected until then; the pipeline plans such videos without them).

``run_stats`` counts videos, forward calls, items and encoded prompts per extractor in
this process: tests (and the pipeline's resume test) assert on it to prove that work
was not redone; ``run_stats.reset()`` clears it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aigvqa.errors import AigvqaError
from aigvqa.extractors.base import Extractor, VideoInfo


class MissingPromptError(AigvqaError, ValueError):
    """A ``needs_prompt`` extractor got a video without a prompt."""


@dataclass
class RunStats:
    """Per-process counters of the work done by the runner."""

    videos: int = 0
    forward_calls: Counter = field(default_factory=Counter)  # extractor name -> batches
    items: Counter = field(default_factory=Counter)  # extractor name -> view items
    prompts_encoded: Counter = field(default_factory=Counter)  # name -> distinct prompts
    text_calls: Counter = field(default_factory=Counter)  # name -> encode_text batches

    def reset(self) -> None:
        self.videos = 0
        for counter in (self.forward_calls, self.items, self.prompts_encoded, self.text_calls):
            counter.clear()


run_stats = RunStats()


def ensure_loaded(extractor: Extractor) -> Extractor:
    """Load ``extractor`` on its configured device unless it was loaded already.

    ``load`` sets ``weights_identity`` (base.Extractor's contract), so that is the flag.
    """
    if extractor.weights_identity is None:
        extractor.load(extractor.config().get("device", "cpu"))
    return extractor


class _Batcher:
    """Accumulates one extractor's items and runs its forward pass per full batch."""

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.needs_prompt = bool(getattr(extractor, "needs_prompt", False))
        self.batch_size = int(extractor.config().get("batch_size", 16))
        self.pending_index: list[int] = []
        self.pending_items: list[np.ndarray] = []
        self.pending_prompts: list[str] = []
        self.results: dict[int, np.ndarray] = {}

    def add(self, index: int, item: np.ndarray, prompt: str | None = None) -> None:
        if self.needs_prompt:
            if prompt is None or not str(prompt).strip():
                raise MissingPromptError(
                    f"extractor {self.extractor.name!r} scores frames against the video's "
                    "prompt, and this video has none; give the manifest a prompt column"
                )
            self.pending_prompts.append(str(prompt))
        self.pending_index.append(index)
        self.pending_items.append(item)
        if len(self.pending_items) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending_items:
            return
        name = self.extractor.name
        batch = np.stack(self.pending_items)
        if self.needs_prompt:
            output = self.extractor.forward(batch, prompts=list(self.pending_prompts))
        else:
            output = self.extractor.forward(batch)
        features = np.asarray(output, dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != len(self.pending_index):
            raise RuntimeError(
                f"extractor {name!r} returned features of shape {features.shape} for a batch "
                f"of {len(self.pending_index)} items; expected [{len(self.pending_index)}, D]"
            )
        run_stats.forward_calls[name] += 1
        run_stats.items[name] += len(self.pending_index)
        for row, index in enumerate(self.pending_index):
            self.results[index] = features[row]
        self.pending_index, self.pending_items, self.pending_prompts = [], [], []

    def output(self) -> np.ndarray:
        self.flush()
        if not self.results:
            width = int(self.extractor.output_dims().get("values", 0))
            return np.zeros((0, width), dtype=np.float32)
        order = sorted(self.results)
        return np.stack([self.results[i] for i in order]).astype(np.float32, copy=False)


class VideoFeatureBuilder:
    """One video's features for several video extractors, built from view items.

    ``views`` are the distinct views the extractors ask for (shared by ``view.key``); feed
    every item ``stream_views`` yields to ``add`` (a forward pass runs whenever an
    extractor's batch is full), then ``outputs`` flushes and returns ``{name: [items, D]}``.
    ``extract_video`` is this plus the decoder; the pipeline uses it directly to decode the
    next video in another thread while this one's forward passes run. ``prompt`` is the
    video's prompt, handed with every item to the extractors that need one.
    """

    def __init__(self, extractors: Sequence[Extractor], prompt: str | None = None) -> None:
        self.prompt = prompt
        video_extractors = [e for e in extractors if e.modality == "video"]
        names = [e.name for e in video_extractors]
        duplicated = sorted(n for n, c in Counter(names).items() if c > 1)
        if duplicated:
            raise ValueError(f"extract_video got several extractors named {', '.join(duplicated)}")
        views = {}
        self._batchers: list[_Batcher] = []
        self._by_view: dict[str, list[_Batcher]] = {}
        for extractor in video_extractors:
            ensure_loaded(extractor)
            view = extractor.view()
            views.setdefault(view.key, view)
            batcher = _Batcher(extractor)
            self._batchers.append(batcher)
            self._by_view.setdefault(view.key, []).append(batcher)
        self.views = list(views.values())

    def add(self, view_key: str, item_index: int, item: np.ndarray) -> None:
        for batcher in self._by_view[view_key]:
            batcher.add(item_index, item, self.prompt)

    def outputs(self) -> dict[str, np.ndarray]:
        result = {b.extractor.name: b.output() for b in self._batchers}
        run_stats.videos += 1
        return result


def extract_video(
    path: str | os.PathLike,
    extractors: Sequence[Extractor],
    info: VideoInfo | None = None,
    *,
    decode_threads: int = 0,
    prompt: str | None = None,
) -> dict[str, np.ndarray]:
    """Features of one video for each video extractor: ``{name: [items, D] float32}``.

    Items are in view order (key frame 0, 1, ...). Extractors are loaded on first use.
    Text extractors in ``extractors`` are ignored (use ``encode_prompts``). Two
    extractors with the same name would overwrite each other and are refused.
    ``decode_threads``: FFmpeg decoder threads (0 = FFmpeg's default, one per core).
    ``prompt``: the video's prompt, which ``needs_prompt`` extractors (blip-itm,
    imagereward) score every frame against; without one they raise MissingPromptError.
    """
    from aigvqa.extractors.views import stream_views  # lazy: decoding stack (PyAV)

    builder = VideoFeatureBuilder(extractors, prompt=prompt)
    if builder.views:
        for view_key, item_index, item in stream_views(
            path, builder.views, info=info, threads=decode_threads
        ):
            builder.add(view_key, item_index, item)
    return builder.outputs()


def encode_prompts(extractor: Extractor, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """Encode ``prompts`` with a text extractor, each distinct prompt once.

    Returns the extractor's outputs aligned with ``prompts`` (duplicates share rows):
    ``{"pooled": [n, D], "tokens": [n, L, D], "mask": [n, L]}`` for clip-text. Distinct
    prompts go through ``encode_text`` in batches of the extractor's ``batch_size``.
    """
    if extractor.modality != "text":
        raise ValueError(f"extractor {extractor.name!r} is not a text extractor")
    ensure_loaded(extractor)
    prompts = list(prompts)
    unique = list(dict.fromkeys(prompts))
    if not unique:
        return {}
    batch_size = int(extractor.config().get("batch_size", 64))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, len(unique), batch_size):
        parts.append(extractor.encode_text(unique[start : start + batch_size]))
        run_stats.text_calls[extractor.name] += 1
    run_stats.prompts_encoded[extractor.name] += len(unique)
    encoded = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    row_of = {prompt: row for row, prompt in enumerate(unique)}
    rows = np.asarray([row_of[p] for p in prompts], dtype=np.int64)
    return {key: value[rows] for key, value in encoded.items()}
