"""Checkpoint surgery the extractor tests share: a saved model made subtly wrong."""

from __future__ import annotations

from pathlib import Path


def drop_tensor(path: Path, key: str) -> None:
    """Rewrite the safetensors file at ``path`` without the tensor ``key``."""
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    del state[key]
    save_file(state, path, metadata={"format": "pt"})
