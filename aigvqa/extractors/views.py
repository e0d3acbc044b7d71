"""Views: deterministic ways of cutting a decoded video into the items extractors consume.

Every view is pure: its items depend only on the video's metadata (``VideoInfo``) and its
parameters (plus ``seed`` where it draws random offsets), so two runs give identical
arrays. ``stream_views`` decodes a file once for any number of views and holds only the
prepared frames of items still being assembled (see ``aigvqa.extractors.base``).

Index conventions (each follows the method its extractor reproduces):

- key frames (UGVQ): ``floor(N / n * i)``, i = 0..n-1; a 33-frame clip gives 0, 4, ..., 28.
- uniform frames: the centre of each of n equal segments, ``floor((2i + 1) * N / (2n))``
  (TSN test-time sampling); or every frame, or every frame resampled to a target fps.
- SlowFast clips (SimpleVQA): the frame rate is rounded to an integer r; there are
  ``max(1, floor(N / r))`` clips; clip i holds the 32 consecutive frames starting at
  ``i * r``; indices past the end repeat the last frame. (SimpleVQA also repeats the last
  clip until there are 8; that is a head-side choice and is not done here: the cache keeps
  the true clip count in ``lengths``.) Frames are squashed to S x S as SimpleVQA does
  (``Resize([224, 224])``), or short-side resized and centre-cropped with ``resize_mode="crop"``.
- fragments (FAST-VQA / DOVER technical view): see ``FragmentsView``.
- frame pairs (handcrafted features): see ``FramePairsView``.

Those formulas and the frame resizing live in ``aigvqa.extractors.sampling`` (re-exported
here); this module holds the views and the streaming that feeds them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.errors import DecodeError
from aigvqa.extractors.base import VideoInfo, View
from aigvqa.extractors.decode import iter_frames, probe
from aigvqa.extractors.sampling import (
    RESIZE_MODES,
    center_square,
    fragment_clip_indices,
    frame_pair_starts,
    keyframe_indices,
    resampled_indices,
    resize_short_side,
    slow_fast_split,
    slowfast_clip_indices,
    uniform_indices,
)

__all__ = [
    "RESIZE_MODES",
    "FragmentsView",
    "FramePairsView",
    "KeyFramesView",
    "SlowFastClipsView",
    "UniformFramesView",
    "build_views",
    "center_square",
    "fragment_clip_indices",
    "frame_pair_starts",
    "keyframe_indices",
    "resampled_indices",
    "resize_short_side",
    "slow_fast_split",
    "slowfast_clip_indices",
    "stream_views",
    "stream_views_from_frames",
    "uniform_indices",
    "views_from_array",
]


# -- views ----------------------------------------------------------------------------------


class _SquareFramesView(View):
    """Shared parts of the views whose frames are resized to ``size`` x ``size``."""

    shares_prepared_frames: ClassVar[bool] = True
    """``prepare`` ignores ``item``: one prepared copy of a frame serves every item."""

    size: int | None
    resize_mode: str

    def prepare(self, item: int, frame_index: int, frame: np.ndarray) -> np.ndarray:
        if self.size is None:
            return frame
        return center_square(frame, self.size, self.resize_mode)


class KeyFramesView(_SquareFramesView):
    """UGVQ key frames: n frames at ``floor(N / n * i)``; item = one frame [S, S, 3]
    (short-side resize + centre crop by default)."""

    kind = "keyframes"

    def __init__(self, n: int = 8, size: int | None = 224, resize_mode: str = "crop") -> None:
        self.n = n
        self.size = size
        self.resize_mode = resize_mode

    def config(self) -> dict[str, Any]:
        return {"n": self.n, "size": self.size, "resize_mode": self.resize_mode}

    def items(self, info: VideoInfo) -> list[np.ndarray]:
        return [np.array([i]) for i in keyframe_indices(info.num_frames, self.n)]

    def assemble(self, item: int, frames: list[np.ndarray]) -> np.ndarray:
        return frames[0]


class UniformFramesView(_SquareFramesView):
    """Frames spread over the video, each resized to S x S (224, 336, 448, ...).

    ``n``: that many frames at the centres of n equal segments; ``n=None``: every frame,
    or with ``fps`` every frame re-timed to that rate. ``size=None`` keeps the native
    resolution. Item = one frame [S, S, 3], or with ``as_clip=True`` a single item
    holding all of them [T, S, S, 3].
    """

    kind = "uniform-frames"

    def __init__(
        self,
        n: int | None = 16,
        size: int | None = 224,
        fps: float | None = None,
        resize_mode: str = "crop",
        as_clip: bool = False,
    ) -> None:
        self.n = n
        self.size = size
        self.fps = fps
        self.resize_mode = resize_mode
        self.as_clip = as_clip

    def config(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "size": self.size,
            "fps": self.fps,
            "resize_mode": self.resize_mode,
            "as_clip": self.as_clip,
        }

    def frame_indices(self, info: VideoInfo) -> np.ndarray:
        if self.n is not None and self.fps is not None:
            raise ValueError("UniformFramesView takes n (a frame count) or fps (a rate), not both")
        if self.n is not None:
            return uniform_indices(info.num_frames, self.n)
        if self.fps is not None:
            return resampled_indices(info.num_frames, info.fps, self.fps)
        return np.arange(info.num_frames, dtype=np.int64)

    def items(self, info: VideoInfo) -> list[np.ndarray]:
        indices = self.frame_indices(info)
        if self.as_clip:
            return [indices]
        return [indices[i : i + 1] for i in range(indices.size)]

    def assemble(self, item: int, frames: list[np.ndarray]) -> np.ndarray:
        return np.stack(frames) if self.as_clip else frames[0]


class SlowFastClipsView(_SquareFramesView):
    """SimpleVQA per-second clips: item = [clip_len, S, S, 3] (see ``slowfast_clip_indices``);
    split each into pathways with ``slow_fast_split``."""

    kind = "slowfast-clips"

    def __init__(self, clip_len: int = 32, size: int = 224, resize_mode: str = "squash") -> None:
        self.clip_len = clip_len
        self.size = size
        self.resize_mode = resize_mode

    def config(self) -> dict[str, Any]:
        return {"clip_len": self.clip_len, "size": self.size, "resize_mode": self.resize_mode}

    def items(self, info: VideoInfo) -> list[np.ndarray]:
        return slowfast_clip_indices(info.num_frames, info.fps, self.clip_len)


class FragmentsView(View):
    """FAST-VQA / DOVER technical view: grid x grid patches of patch x patch pixels.

    Temporal: ``num_clips`` clips of ``clip_len`` frames, ``frame_interval`` apart
    (``fragment_clip_indices``). Spatial, per frame: a frame whose short side is below
    ``grid * patch`` (224) is first enlarged (bilinear) so its short side is 224; the
    frame is cut into a grid x grid lattice of cells (cell (i, j) starts at
    ``min(H // grid * i, H - patch)``) and one patch is taken from each cell at a random
    offset inside the cell (uniform in [0, H // grid - patch), 0 when the cell is no
    larger than the patch), then the patches are spliced in grid order into a 224 x 224
    frame. The offsets are drawn once per clip from ``seed`` and the clip number, so they
    are the SAME in every frame of a clip (temporally aligned fragments, FAST-VQA's
    ``aligned=32``) and identical across runs.

    Crops happen in ``prepare``: a 1080p frame is reduced to its 224 x 224 mosaic as
    soon as it is decoded. Item = [clip_len, 224, 224, 3].
    """

    kind = "fragments"

    def __init__(
        self,
        grid: int = 7,
        patch: int = 32,
        clip_len: int = 32,
        num_clips: int = 1,
        frame_interval: int = 2,
        seed: int = 0,
    ) -> None:
        self.grid = grid
        self.patch = patch
        self.clip_len = clip_len
        self.num_clips = num_clips
        self.frame_interval = frame_interval
        self.seed = seed

    def config(self) -> dict[str, Any]:
        return {
            "grid": self.grid,
            "patch": self.patch,
            "clip_len": self.clip_len,
            "num_clips": self.num_clips,
            "frame_interval": self.frame_interval,
            "seed": self.seed,
        }

    @property
    def output_size(self) -> int:
        return self.grid * self.patch

    def items(self, info: VideoInfo) -> list[np.ndarray]:
        return fragment_clip_indices(
            info.num_frames, self.clip_len, self.num_clips, self.frame_interval
        )

    def patch_origins(self, clip: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corners (rows [grid, grid], cols [grid, grid]) of the patches of ``clip``
        in a frame of ``height`` x ``width`` (after any enlargement)."""
        return _patch_origins(self.grid, self.patch, self.seed, clip, height, width)

    def prepare(self, item: int, frame_index: int, frame: np.ndarray) -> np.ndarray:
        if min(frame.shape[:2]) < self.output_size:
            frame = resize_short_side(frame, self.output_size)
        rows, cols = _mosaic_gather(self.grid, self.patch, self.seed, item, *frame.shape[:2])
        return frame[rows, cols]


def _patch_origins(
    grid: int, patch: int, seed: int, clip: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    if min(height, width) < patch:
        raise ValueError(f"frame {height}x{width} is smaller than a {patch}x{patch} patch")
    cell_h, cell_w = height // grid, width // grid
    starts_h = np.minimum(cell_h * np.arange(grid), height - patch)
    starts_w = np.minimum(cell_w * np.arange(grid), width - patch)
    rng = np.random.default_rng([seed, clip])
    shape = (grid, grid)
    jitter_h = (
        rng.integers(0, cell_h - patch, size=shape) if cell_h > patch else np.zeros(shape, int)
    )
    jitter_w = (
        rng.integers(0, cell_w - patch, size=shape) if cell_w > patch else np.zeros(shape, int)
    )
    return starts_h[:, None] + jitter_h, starts_w[None, :] + jitter_w


@functools.lru_cache(maxsize=64)
def _mosaic_gather(
    grid: int, patch: int, seed: int, clip: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column index arrays [S, S] mapping each mosaic pixel to its source pixel
    (computed once per clip and frame size, then one fancy-indexing gather per frame)."""
    tops, lefts = _patch_origins(grid, patch, seed, clip, height, width)
    offsets = np.arange(patch)
    # rows[i, a, j, b] = tops[i, j] + a ; cols[i, a, j, b] = lefts[i, j] + b
    rows = tops[:, None, :, None] + offsets[None, :, None, None]
    cols = lefts[:, None, :, None] + offsets[None, None, None, :]
    shape = (grid, patch, grid, patch)
    size = grid * patch
    return (
        np.broadcast_to(rows, shape).reshape(size, size),
        np.broadcast_to(cols, shape).reshape(size, size),
    )


class FramePairsView(View):
    """Consecutive frame pairs for handcrafted features (sharpness, noise, flicker, flow).

    Pairs (t, t+1) at up to ``max_frames`` starts t spread uniformly (``frame_pair_starts``);
    item = [2, H', W', 3]. Frames are shrunk keeping their aspect ratio so the short side
    is ``size`` (``None``: native size); smaller frames are never enlarged, since
    upsampling would invent the sharpness and noise statistics these features measure.
    """

    kind = "frame-pairs"
    shares_prepared_frames: ClassVar[bool] = True

    def __init__(self, max_frames: int = 64, size: int | None = 256) -> None:
        self.max_frames = max_frames
        self.size = size

    def config(self) -> dict[str, Any]:
        return {"max_frames": self.max_frames, "size": self.size}

    def items(self, info: VideoInfo) -> list[np.ndarray]:
        last = info.num_frames - 1
        return [
            np.array([t, min(t + 1, last)])
            for t in frame_pair_starts(info.num_frames, self.max_frames)
        ]

    def prepare(self, item: int, frame_index: int, frame: np.ndarray) -> np.ndarray:
        if self.size is None:
            return frame
        return resize_short_side(frame, self.size, enlarge=False)


# -- streaming ------------------------------------------------------------------------------


def _unique_views(views: Sequence[View]) -> list[View]:
    seen: dict[str, View] = {}
    for view in views:
        seen.setdefault(view.key, view)
    return list(seen.values())


class _Plan:
    """Bookkeeping of one view while a video streams through it."""

    def __init__(self, view: View, info: VideoInfo) -> None:
        self.view = view
        self.shares = bool(getattr(view, "shares_prepared_frames", False))
        self.slots: list[list[np.ndarray | None] | None] = []
        self.remaining: list[int] = []
        self.ready: set[int] = set()
        self.next_item = 0
        # frame index -> [(item, positions of that frame in the item)]
        self.uses: dict[int, list[tuple[int, list[int]]]] = {}
        for item, indices in enumerate(view.items(info)):
            indices = np.asarray(indices, dtype=np.int64).ravel()
            if indices.size == 0:
                raise ValueError(f"view {view.key} gave item {item} no frames")
            if indices.min() < 0 or indices.max() >= info.num_frames:
                raise ValueError(
                    f"view {view.key} item {item} asks for frames outside [0, {info.num_frames})"
                )
            self.slots.append([None] * indices.size)
            self.remaining.append(indices.size)
            positions: dict[int, list[int]] = {}
            for position, index in enumerate(indices.tolist()):
                positions.setdefault(index, []).append(position)
            for index, where in positions.items():
                self.uses.setdefault(index, []).append((item, where))

    @property
    def pending(self) -> bool:
        return self.next_item < len(self.slots)

    def feed(self, frame_index: int, frame: np.ndarray) -> None:
        shared: np.ndarray | None = None
        for item, where in self.uses.pop(frame_index, ()):
            if self.shares:
                if shared is None:
                    shared = self.view.prepare(item, frame_index, frame)
                prepared = shared
            else:
                prepared = self.view.prepare(item, frame_index, frame)
            slots = self.slots[item]
            for position in where:
                slots[position] = prepared
            self.remaining[item] -= len(where)
            if self.remaining[item] == 0:
                self.ready.add(item)

    def completed(self) -> Iterator[tuple[int, np.ndarray]]:
        """Items whose frames are all in, in item order (a later item waits for earlier ones)."""
        while self.next_item in self.ready:
            item = self.next_item
            self.ready.discard(item)
            frames = self.slots[item]
            self.slots[item] = None  # drop the prepared frames before the consumer runs
            self.next_item += 1
            yield item, self.view.assemble(item, frames)


def stream_views_from_frames(
    frames: Iterable[tuple[int, np.ndarray]],
    info: VideoInfo,
    views: Sequence[View],
    *,
    source: str | None = None,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Run views over ``(index, frame)`` pairs arriving in increasing index order.

    Yields ``(view.key, item_index, item_array)`` as soon as an item's last frame has been
    prepared; items of one view come in item order. Frames nobody needs are ignored,
    prepared frames are dropped the moment their item is assembled. If the frames stop
    before ``info.num_frames`` (a truncated file), the missing ones are taken to be the last
    frame seen, so every item is still produced. Views with equal keys run once.
    """
    plans = [_Plan(view, info) for view in _unique_views(views)]
    return _run(plans, frames, source or info.path)


def _run(
    plans: list[_Plan], frames: Iterable[tuple[int, np.ndarray]], name: str
) -> Iterator[tuple[str, int, np.ndarray]]:
    last: tuple[int, np.ndarray] | None = None
    for index, frame in frames:
        last = (index, frame)
        for plan in plans:
            if index in plan.uses:
                plan.feed(index, frame)
        for plan in plans:
            for item, array in plan.completed():
                yield plan.view.key, item, array
        if not any(plan.pending for plan in plans):
            return
    if any(plan.pending for plan in plans):
        if last is None:
            raise DecodeError(f"{name}: no frame could be decoded; the file is empty or corrupt")
        _, frame = last
        for plan in plans:
            for index in sorted(plan.uses):
                plan.feed(index, frame)
            for item, array in plan.completed():
                yield plan.view.key, item, array


def stream_views(
    path: str | Path, views: Sequence[View], info: VideoInfo | None = None, *, threads: int = 0
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Decode ``path`` once and yield ``(view.key, item_index, item_array)`` for every view.

    Only the union of the frames the views need is converted to RGB, decoding stops after
    the last one, and memory holds the prepared frames of incomplete items only (bounded by
    the views' item spans, not by the video's length). Frames missing from a truncated file
    are replaced by the last decoded frame (with a ``TruncatedVideoWarning``); a file with no
    decodable frame raises DecodeError. ``threads``: FFmpeg decoder threads (0 = one per core).
    """
    info = probe(path) if info is None else info
    plans = [_Plan(view, info) for view in _unique_views(views)]
    wanted = set().union(*(plan.uses for plan in plans))
    yield from _run(plans, iter_frames(path, wanted, pad_missing=True, threads=threads), str(path))


def _collect(stream: Iterable[tuple[str, int, np.ndarray]], views: Sequence[View]) -> dict:
    result: dict[str, list[np.ndarray]] = {view.key: [] for view in views}
    for key, _item, array in stream:
        result[key].append(array)
    return result


def build_views(path: str | Path, views: Sequence[View]) -> dict[str, list[np.ndarray]]:
    """Every item of every view, keyed by ``view.key`` (holds them all; for small videos)."""
    return _collect(stream_views(path, views), views)


def views_from_array(
    video: np.ndarray, views: Sequence[View], fps: float = 25.0
) -> dict[str, list[np.ndarray]]:
    """``build_views`` for a clip already in memory ([T, H, W, 3] uint8), e.g. in tests."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise ValueError(f"video must be [T, H, W, 3] with T >= 1, got shape {video.shape}")
    info = VideoInfo(
        path="<array>",
        num_frames=video.shape[0],
        fps=fps,
        width=video.shape[2],
        height=video.shape[1],
    )
    frames = ((i, video[i]) for i in range(video.shape[0]))
    return _collect(stream_views_from_frames(frames, info, views), views)
