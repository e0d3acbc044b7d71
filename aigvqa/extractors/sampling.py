"""Where views sample a video: which frames (index formulas) and how a frame is resized.

Pure functions of a frame count, a frame rate or one frame; ``aigvqa.extractors.views``
builds its views on them (and re-exports them). The index conventions each view follows
are listed in that module's docstring.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

RESIZE_MODES = ("crop", "squash")


# -- image operations ---------------------------------------------------------------------


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to height x width: area averaging when shrinking, bilinear when growing.

    A large shrink first averages k x k blocks (k = the integer part of the ratio; OpenCV's
    fast path, after dropping the < k edge rows / columns that do not fill a block), then
    area-resamples the rest of the way: 3-5x faster than one INTER_AREA pass at 1080p ->
    224, within half a grey level on average.
    """
    src_h, src_w = frame.shape[:2]
    if (src_h, src_w) == (height, width):
        return frame
    if height > src_h or width > src_w:
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
    block = min(src_h // height, src_w // width)
    if block >= 2:
        kept_h, kept_w = src_h - src_h % block, src_w - src_w % block
        frame = cv2.resize(
            frame[:kept_h, :kept_w],
            (kept_w // block, kept_h // block),
            interpolation=cv2.INTER_AREA,
        )
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def resize_short_side(frame: np.ndarray, size: int, *, enlarge: bool = True) -> np.ndarray:
    """Resize keeping the aspect ratio so that the short side is ``size`` pixels.

    With ``enlarge=False`` a frame already smaller than ``size`` is returned unchanged.
    """
    height, width = frame.shape[:2]
    short = min(height, width)
    if short == size or (short < size and not enlarge):
        return frame
    scale = size / short
    new_h = size if height == short else max(size, round(height * scale))
    new_w = size if width == short else max(size, round(width * scale))
    return _resize(frame, new_h, new_w)


def center_square(frame: np.ndarray, size: int, mode: str = "crop") -> np.ndarray:
    """A ``size`` x ``size`` frame.

    ``crop``: the central square of the frame, resized (same pixels as a short-side resize
    followed by a centre crop, but only the kept square is resampled); ``squash``: the
    whole frame resized to a square, aspect ratio not kept.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {mode!r}")
    if mode == "crop":
        height, width = frame.shape[:2]
        short = min(height, width)
        top, left = (height - short) // 2, (width - short) // 2
        frame = frame[top : top + short, left : left + short]
    return np.ascontiguousarray(_resize(frame, size, size))


# -- index formulas -------------------------------------------------------------------------


def _check_count(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a view needs at least one frame, got num_frames={num_frames}")


def keyframe_indices(num_frames: int, n: int = 8) -> np.ndarray:
    """UGVQ key frames: ``floor(N / n * i)`` for i = 0..n-1 (integer arithmetic, no rounding
    error). Shorter videos than n repeat frames: N = 4, n = 8 gives 0, 0, 1, 1, 2, 2, 3, 3."""
    _check_count(num_frames)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return (np.arange(n, dtype=np.int64) * num_frames) // n


def uniform_indices(num_frames: int, n: int) -> np.ndarray:
    """Centres of n equal segments: ``floor((2i + 1) * N / (2n))`` for i = 0..n-1."""
    _check_count(num_frames)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return ((2 * np.arange(n, dtype=np.int64) + 1) * num_frames) // (2 * n)


def resampled_indices(num_frames: int, fps: float, target_fps: float) -> np.ndarray:
    """Every frame of the video re-timed to ``target_fps``: frame ``floor(k * fps / target_fps)``
    for k = 0, 1, ... while inside the video (frames repeat when target_fps > fps)."""
    _check_count(num_frames)
    if fps <= 0 or target_fps <= 0:
        raise ValueError(f"frame rates must be positive, got fps={fps}, target_fps={target_fps}")
    count = max(1, math.ceil(num_frames * target_fps / fps - 1e-9))
    indices = np.floor(np.arange(count) * (fps / target_fps) + 1e-9).astype(np.int64)
    return indices[indices < num_frames]


def slowfast_clip_indices(num_frames: int, fps: float, clip_len: int = 32) -> list[np.ndarray]:
    """SimpleVQA's per-second clips (see the module docstring): a 96-frame 24 fps video
    gives 4 clips, [0..31], [24..55], [48..79], [72..95 then 95 repeated 8 times]."""
    _check_count(num_frames)
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")
    rate = max(1, int(round(fps)))
    num_clips = max(1, num_frames // rate)
    offsets = np.arange(clip_len, dtype=np.int64)
    return [np.minimum(i * rate + offsets, num_frames - 1) for i in range(num_clips)]


def fragment_clip_indices(
    num_frames: int, clip_len: int = 32, num_clips: int = 1, frame_interval: int = 2
) -> list[np.ndarray]:
    """FAST-VQA's test-time temporal sampling (mmaction ``SampleFrames``, test mode).

    A clip spans ``clip_len * frame_interval`` frames and takes every ``frame_interval``-th;
    the video is cut into ``num_clips`` equal segments and clip i starts at
    ``int(i * a + a / 2)`` with ``a = (N - span + 1) / num_clips`` (start 0 when the video
    is shorter than the span). Indices past the end wrap around (``mod N``), as FAST-VQA's
    ``out_of_bound_opt="loop"``: a 16-frame video read at interval 2 for 32 frames loops
    four times.
    """
    _check_count(num_frames)
    if clip_len < 1 or num_clips < 1 or frame_interval < 1:
        raise ValueError("clip_len, num_clips and frame_interval must be >= 1")
    span = clip_len * frame_interval
    average = (num_frames - span + 1) / num_clips
    if num_frames > span - 1:
        starts = (np.arange(num_clips) * average + average / 2.0).astype(np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    steps = np.arange(clip_len, dtype=np.int64) * frame_interval
    return [(start + steps) % num_frames for start in starts]


def frame_pair_starts(num_frames: int, max_frames: int = 64) -> np.ndarray:
    """First frames t of the (t, t+1) pairs: every t when the video has at most
    ``max_frames + 1`` frames, else the centres of ``max_frames`` equal segments of
    [0, N - 1). A one-frame video gives the single pair (0, 0)."""
    _check_count(num_frames)
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if num_frames == 1:
        return np.zeros(1, dtype=np.int64)
    return uniform_indices(num_frames - 1, min(max_frames, num_frames - 1))


def slow_fast_split(
    clip: np.ndarray, alpha: int = 4, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(slow, fast) pathways of a clip: fast = the whole clip; slow = T // alpha frames
    picked by ``linspace(0, T - 1, T // alpha)`` truncated to integers, exactly as
    SimpleVQA's and PySlowFast's ``pack_pathway_output`` (for T = 32, alpha = 4:
    0, 4, 8, 13, 17, 22, 26, 31: first and last frame included)."""
    length = clip.shape[axis]
    if alpha < 1 or length < alpha:
        raise ValueError(f"need 1 <= alpha <= T, got alpha={alpha}, T={length}")
    picks = np.linspace(0, length - 1, length // alpha).astype(np.int64)
    return np.take(clip, picks, axis=axis), clip
