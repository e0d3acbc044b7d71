"""Shared fixtures: small synthetic video files made on the fly (no network, no ../shared).

    def test_something(video_factory):
        path = video_factory("clip", n_frames=24, fps=8, size=(48, 64), fmt="mp4")

``video_factory`` writes ``aigvqa.extractors.synthetic.moving_pattern`` frames (moving
shapes over a drifting texture, so consecutive frames differ) with
``aigvqa.extractors.decode.write_video`` into the test's ``tmp_path`` and returns the
file's Path. Formats: mp4 (H.264), avi (MPEG-4), webm (VP9) and gif; mp4, avi and webm
need an even height and width. Same arguments + seed = same pixels.

``isolated_weight_caches`` points $AIGVQA_WEIGHTS, the Hugging Face hub cache and the
torch hub dir at empty places, so extractor tests never pick up real weights (modules use
it with ``pytestmark = pytest.mark.usefixtures("isolated_weight_caches")``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern

VideoFactory = Callable[..., Path]


@pytest.fixture
def video_factory(tmp_path: Path) -> VideoFactory:
    """A function ``(name="clip", n_frames=16, fps=8.0, size=(48, 64), fmt="mp4", seed=0)
    -> Path``."""

    def make(
        name: str = "clip",
        n_frames: int = 16,
        fps: float = 8.0,
        size: tuple[int, int] = (48, 64),
        fmt: str = "mp4",
        seed: int = 0,
    ) -> Path:
        height, width = size
        path = tmp_path / f"{name}.{fmt.lstrip('.')}"
        return write_video(path, moving_pattern(n_frames, height, width, seed=seed), fps=fps)

    return make


@pytest.fixture
def isolated_weight_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real weights leak in: empty $AIGVQA_WEIGHTS, HF hub cache and torch hub dir."""
    import huggingface_hub.constants
    import torch

    monkeypatch.delenv("AIGVQA_WEIGHTS", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
