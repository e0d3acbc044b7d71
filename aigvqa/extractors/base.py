"""Shared types of the extractor component: video metadata, views, extractors.

The data flow inside one video (see ``views.stream_views``):

    decoder yields (frame_index, RGB frame) once, in order
      -> every View knows in advance which frames each of its *items* needs
         (an item is one key frame, one SlowFast clip, one fragment clip, ...)
      -> ``View.prepare`` turns a raw frame into what the item keeps (resized, cropped)
      -> when an item's last frame has arrived, ``View.assemble`` stacks it and the
         item is handed to the extractors that asked for that view, which batch items
         and run their forward pass.

So a video is decoded once whatever the number of extractors, and memory holds only
the frames of items still being assembled plus one batch per extractor: peak memory
does not grow with video length.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

RANDOM_INIT = "RANDOM-INIT"
"""Weights identity stamped into the cache when a model was randomly initialised."""


class SharedModels:
    """Models built once per process, under a key (weights, architecture, device), so the
    extractors of one family whose keys match share one model (clip-frames and clip-text
    on one checkpoint). Every instance is listed, so ``clear_shared_models`` frees them all
    whatever family built them."""

    instances: ClassVar[list[SharedModels]] = []

    def __init__(self) -> None:
        self._models: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        SharedModels.instances.append(self)

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The model under ``key``; ``build()`` makes it the first time (under the lock, so
        two threads never build the same model twice)."""
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = build()
            return model

    def clear(self) -> int:
        """Forget this cache's models (tests; freeing memory between runs)."""
        with self._lock:
            count = len(self._models)
            self._models.clear()
            return count


def clear_shared_models() -> int:
    """Forget the models of every ``SharedModels`` of this process; how many there were."""
    return sum(cache.clear() for cache in SharedModels.instances)


@dataclass(frozen=True)
class VideoInfo:
    """Metadata read before decoding (``decode.probe``)."""

    path: str
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


class View(ABC):
    """A deterministic way of turning a decoded video into a list of items.

    Subclasses store their parameters in ``__init__`` and expose them via ``config()``;
    ``key`` is a stable string built from them, used to share one view between
    extractors that ask for the same thing.
    """

    kind: ClassVar[str] = ""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable parameters (recorded in the cache provenance)."""

    @property
    def key(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in sorted(self.config().items()))
        return f"{self.kind}({params})"

    @abstractmethod
    def items(self, info: VideoInfo) -> list[np.ndarray]:
        """Frame indices (int64, in [0, info.num_frames)) used by each item, in item order."""

    def prepare(self, item: int, frame_index: int, frame: np.ndarray) -> np.ndarray:
        """Per-frame work done as soon as the frame is decoded (e.g. resize). Default: copy."""
        return frame

    def assemble(self, item: int, frames: list[np.ndarray]) -> np.ndarray:
        """Build the item array from its prepared frames (in the order ``items`` listed them)."""
        return np.stack(frames)


class Extractor(ABC):
    """A frozen backbone producing features for one cache group.

    ``__init__`` stores configuration only (like an sklearn estimator); ``load`` builds
    the model and resolves weights. Video extractors declare a ``view()`` and implement
    ``forward`` on a batch of view items; text extractors implement ``encode_text``.
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = "video"  # "video" or "text"
    needs_prompt: ClassVar[bool] = False
    """A video extractor that scores frames *against the video's prompt* (BLIP ITM,
    ImageReward) sets this: the runner then calls ``forward(items, prompts=[...])`` with
    one prompt per item (the prompt of the video the item came from), and a video without
    a prompt is a failure for this extractor alone."""
    cache_dtype: ClassVar[str] = "float16"
    """How the cache stores this extractor's values: float16 halves the file for network
    embeddings; extractors whose outputs can exceed float16's range (+-65504) say float32."""

    def __init__(self, **config: Any) -> None:
        self._config = dict(config)
        self.weights_identity: str | None = None  # sha256 of the checkpoint, or RANDOM_INIT

    # -- description --------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Full JSON-serialisable configuration (defaults filled in)."""
        return dict(self._config)

    @abstractmethod
    def output_dims(self) -> dict[str, int]:
        """Feature width per output dataset, e.g. ``{"values": 512}``."""

    def view(self) -> View | None:
        """The view this extractor consumes (None for text extractors)."""
        return None

    def feature_names(self) -> list[str] | None:
        """Names of the D columns of ``values`` when they mean something on their own
        (handcrafted statistics); None for embeddings. The cache stores them as the
        group's ``columns`` and ``dump`` writes them as CSV headers."""
        return None

    def output_columns(self) -> dict[str, tuple[int, int]]:
        """Named column ranges ``[start, stop)`` of ``values`` when one row packs several
        outputs (blip-itm: ``{"match": (0, 2), "image": (2, 258)}``); {} when it does not.

        Recorded in the provenance, so the cache itself says how to split the values:
        stage two exposes each range as a feature of its own (``<group>-<column>``).
        """
        return {}

    def provenance(self) -> dict[str, Any]:
        """What the cache stores to refuse mixing features of different origins."""
        provenance = {
            "extractor": self.name,
            "config": self.config(),
            "view": self.view().config() if self.view() is not None else None,
            "weights": self.weights_identity,
        }
        columns = self.output_columns()
        if columns:  # absent otherwise: older caches' provenance stays comparable
            provenance["columns"] = {k: [int(a), int(b)] for k, (a, b) in columns.items()}
        return provenance

    # -- running --------------------------------------------------------------------
    def find_weights(self) -> list[Path]:
        """The files ``load`` would read its weights from, found without loading anything
        (so a missing checkpoint is reported before any worker starts); raises
        ``WeightsNotFoundError`` naming every place searched. [] when the extractor needs
        no weights files, or cannot tell before loading (``load`` checks then)."""
        return []

    @abstractmethod
    def load(self, device: str = "cpu") -> None:
        """Build the model and load weights (sets ``weights_identity``)."""

    def forward(self, items: np.ndarray) -> np.ndarray:
        """Video extractors: a batch of view items [B, ...] -> features [B, D] float32.

        An extractor with ``needs_prompt = True`` takes ``forward(items, prompts)`` instead:
        ``prompts`` is a list of B strings, the prompt of each item's video.
        """
        raise NotImplementedError(f"{self.name} is not a video extractor")

    def encode_text(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """Text extractors: prompts -> {"pooled": [n, D], "tokens": [n, L, D], "mask": [n, L]}."""
        raise NotImplementedError(f"{self.name} is not a text extractor")
