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


class EpochProgress:
    """A deep head's ``verbose`` callback: a progress bar over its epochs whose postfix is
    the last epoch's training and validation loss (``aigvqa train`` shows it)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __call__(self, head, record) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=int(head._hp("epochs")), desc=self.desc, unit="epoch")
        self.bar.update()
        self.bar.set_postfix(
            {k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_loss")}
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fit_head(head, data: TrainingData, progress: bool = False):
    """Fit on every row; y is [N] for one label, [N, k] for several. ``progress``: a deep
    head (one whose ``verbose`` is off) shows its epochs with the validation loss."""
    y = data.y[:, 0] if data.y.shape[1] == 1 else data.y
    params = head.get_params(deep=False)
    if not progress or params.get("verbose", True) is not False or "epochs" not in params:
        return head.fit(data.X, y)
    bar = EpochProgress(f"train {type(head).__name__}")
    head.set_params(verbose=bar)
    try:
        return head.fit(data.X, y)
    finally:
        bar.close()
        head.set_params(verbose=False)  # a parameter: the bundle stores False, not the bar


def train(
    cache: str | Path,
    head: str,
    out: str | Path,
    *,
    config: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    features: str | Sequence[str] | None = None,
    labels: str | Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[Path, TrainingData]:
    """Fit ``head`` on every labelled video of ``cache`` and save a bundle to ``out``.
    ``progress``: show a deep head's epochs (with its validation loss) as they finish."""
    from aigvqa.pipeline.model.bundle import save_bundle

    data = load_training_data(cache, features, labels)
    name, estimator = build_head(head, config, params, X=data.X)
    fit_head(estimator, data, progress=progress)
    path = save_bundle(
        estimator,
        out,
        data.provenance,
        data.X.names,
        data.label_names,
        head_name=name,
        extra={"trained_on": {"cache": str(Path(cache).name), "videos": len(data.X)}},
    )
    return path, data
