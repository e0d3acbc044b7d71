"""Thumbnail strips: a few uniformly spaced frames of a video, decoded with the project's
decoder (``aigvqa.extractors.decode``), side by side in one small JPEG (Pillow)."""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GAP = 2  # pixels between two frames of a strip
BACKGROUND = (17, 17, 17)


@dataclass
class Thumbnail:
    """A strip as a ``data:`` URI (and its size), or None and why there is none."""

    uri: str | None
    width: int = 0
    height: int = 0
    note: str = ""  # why there is no strip, or what went wrong while decoding it


def strip_frames(path: Path, frames: int, height: int) -> tuple[list[np.ndarray], str]:
    """``frames`` uniformly spaced RGB frames of ``path`` (segment centres, as
    ``sampling.uniform_indices``), and a note (e.g. a truncated file); raises DecodeError."""
    from aigvqa.extractors.decode import iter_frames, probe
    from aigvqa.extractors.sampling import uniform_indices

    info = probe(path)
    wanted = uniform_indices(max(info.num_frames, 1), frames)
    note = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = dict(iter_frames(path, wanted, pad_missing=True, threads=1))
    if caught:
        note = str(caught[0].message)
    return [got[int(i)] for i in wanted if int(i) in got], note


def make_strip(frames: list[np.ndarray], height: int, quality: int = 80) -> tuple[bytes, int, int]:
    """JPEG bytes, width and height of ``frames`` resized to ``height`` pixels, side by side."""
    from PIL import Image

    tiles = []
    for frame in frames:
        image = Image.fromarray(np.ascontiguousarray(frame[..., :3]), "RGB")
        width = max(1, round(image.width * height / image.height))
        tiles.append(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))
    total = sum(t.width for t in tiles) + GAP * (len(tiles) - 1)
    strip = Image.new("RGB", (total, height), BACKGROUND)
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + GAP
    buffer = io.BytesIO()
    strip.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue(), total, height


def thumbnail(path: Path | None, frames: int = 6, height: int = 96) -> Thumbnail:
    """The strip of the video at ``path``; a missing or undecodable file gives a Thumbnail
    without a strip whose note says why (never raises for a bad video)."""
    from aigvqa.errors import DecodeError

    if path is None:
        return Thumbnail(None, note="no video file recorded for this video")
    if not path.exists():
        return Thumbnail(None, note=f"video file not found: {path} (moved or deleted?)")
    try:
        images, note = strip_frames(path, frames, height)
        if not images:
            return Thumbnail(None, note=f"{path}: no frame could be decoded")
        data, width, h = make_strip(images, height)
    except DecodeError as err:
        return Thumbnail(None, note=str(err))
    except Exception as err:  # a decoder or Pillow error on a bad file: no strip, no crash
        return Thumbnail(None, note=f"{path}: cannot be decoded ({type(err).__name__}: {err})")
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return Thumbnail(uri, width, h, note)
