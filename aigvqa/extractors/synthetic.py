"""Small deterministic synthetic videos for tests, the demo and benchmarks.

Nothing here needs a file or a network: frames are computed from (seed, frame index), so
two calls with the same arguments give the same pixels and every frame differs from its
neighbours (features, flow and flicker statistics are not degenerate).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def moving_pattern_frames(
    n_frames: int, height: int, width: int, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` frames [H, W, 3] uint8 one at a time (for long or large clips).

    Content: a seeded colour texture drifting diagonally, a bright disc moving on a circle
    and a dark square bouncing horizontally, plus mild per-frame noise. Memory use is one
    frame, whatever ``n_frames``.
    """
    if n_frames < 0 or height < 1 or width < 1:
        raise ValueError(
            f"need n_frames >= 0 and a positive size, got {n_frames}, {height}x{width}"
        )
    rng = np.random.default_rng(seed)
    # A coarse random texture, tiled and scrolled: spatial detail that moves between frames.
    tile = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    tile = np.kron(tile, np.ones((8, 8, 1), dtype=np.uint8))  # 128x128, 8-pixel blocks
    phase = rng.uniform(0, 2 * np.pi, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    gradient = (
        (xx / max(width - 1, 1) * 255)[..., None] * np.array([1.0, 0.3, 0.6])
        + (yy / max(height - 1, 1) * 255)[..., None] * np.array([0.2, 1.0, 0.4])
    ) / 1.6
    radius = max(2, min(height, width) // 8)
    side = max(2, min(height, width) // 6)
    for t in range(n_frames):
        shift = 2 * t
        texture = tile[(yy + shift) % tile.shape[0], (xx + shift) % tile.shape[1]]
        frame = 0.55 * gradient + 0.45 * texture
        frame += 20 * np.sin(phase + t / 3.0)  # slow global colour change per channel
        angle = 2 * np.pi * t / max(n_frames, 8)
        cy = height / 2 + height / 4 * np.sin(angle)
        cx = width / 2 + width / 4 * np.cos(angle)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (250, 240, 60)
        period = max(1, 2 * (width - side))
        left = (5 * t) % period
        left = left if left < width - side else period - left
        top = height // 6
        frame[top : top + side, left : left + side] = (20, 30, 120)
        frame += rng.normal(0, 3, size=(height, width, 1))
        yield np.clip(frame, 0, 255).astype(np.uint8)


def moving_pattern(n_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A clip [T, H, W, 3] uint8 of moving shapes over a drifting texture (see
    ``moving_pattern_frames``)."""
    frames = list(moving_pattern_frames(n_frames, height, width, seed))
    if not frames:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack(frames)


def coordinate_frames(n_frames: int, height: int, width: int) -> np.ndarray:
    """A clip whose pixels encode their own position: R = x % 256, G = y % 256,
    B = 16 * (y // 256) + (x // 256) (exact for frames up to 4096 x 4096), identical in
    every frame. ``decode_coordinates`` inverts it; tests use it to check crops and
    patch offsets exactly."""
    if height > 4096 or width > 4096:
        raise ValueError("coordinate_frames encodes positions up to 4096 x 4096")
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.stack([xx % 256, yy % 256, 16 * (yy // 256) + xx // 256], axis=-1).astype(np.uint8)
    return np.repeat(frame[None], n_frames, axis=0)


def decode_coordinates(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) source coordinates of pixels made by ``coordinate_frames``."""
    p = pixels.astype(np.int64)
    x = p[..., 0] + 256 * (p[..., 2] % 16)
    y = p[..., 1] + 256 * (p[..., 2] // 16)
    return y, x
