"""Stage two from a cache: features + labels -> a head -> a model bundle.

The rows come from ``pipeline.training_data`` (``load_training_data``; the names of the
feature arrays are described there) and the head from ``build_head`` (a name, a head TOML
file read by ``pipeline.config`` and explicit parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aigvqa.pipeline.training_data import TrainingData, build_head, load_training_data


def fit_head(head, data: TrainingData):
    """Fit on every row; y is [N] for one label, [N, k] for several."""
    y = data.y[:, 0] if data.y.shape[1] == 1 else data.y
    return head.fit(data.X, y)


def train(
    cache: str | Path,
    head: str,
    out: str | Path,
    *,
    config: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    features: str | Sequence[str] | None = None,
    labels: str | Sequence[str] | None = None,
) -> tuple[Path, TrainingData]:
    """Fit ``head`` on every labelled video of ``cache`` and save a bundle to ``out``."""
    from aigvqa.pipeline.model.bundle import save_bundle

    data = load_training_data(cache, features, labels)
    name, estimator = build_head(head, config, params)
    fit_head(estimator, data)
    path = save_bundle(
        estimator, out, data.provenance, data.X.names, data.label_names, head_name=name,
        extra={"trained_on": {"cache": str(Path(cache).name), "videos": len(data.X)}},
    )
    return path, data
