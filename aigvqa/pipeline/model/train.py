"""Stage two from a cache: features + labels -> a head -> a model bundle.

``load_training_data`` turns cache groups into the ``FeatureSet`` every head takes. Names of
the feature arrays (what heads' ``features`` parameters refer to):

- a group's values are named after the group (``handcrafted``, ``clip-frames``, ``videval``;
  for ``clip-text`` they are the token sequence, its lengths the valid tokens);
- every floating-point extra ``e`` of group ``g`` becomes ``g-e`` (``clip-text-pooled``,
  one vector per video); boolean extras (token masks) are not features: the lengths
  already carry them.

Head hyper-parameters come from a TOML file (``--config head.toml``): top-level keys are
passed to the head's constructor; an optional ``head = "svr"`` names the head::

    head = "svr"
    C = 8.0
    pooling = ["mean", "std"]
    search = { gamma = [0.01, 0.1, 1.0] }
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError
from aigvqa.heads.featureset import FeatureSet
from aigvqa.pipeline.config import TOMLDecodeError, load_toml


class TrainingDataError(AigvqaError, ValueError):
    """The cache lacks the features or labels asked for, or a head config is malformed."""


@dataclass
class TrainingData:
    """Rows of a cache ready for a head: X, y [N, k], grouping keys and provenance."""

    cache: Path
    X: FeatureSet
    y: np.ndarray
    label_names: list[str]
    groups: dict[str, np.ndarray]
    provenance: dict[str, dict[str, Any]]  # cache group -> its provenance
    cache_groups: list[str]
    dropped: list[str] = field(default_factory=list)  # ids without every requested label

    @property
    def ids(self) -> list[str]:
        return list(self.X.ids)

    def describe(self) -> str:
        text = (
            f"{len(self.X)} videos from {self.cache}; features {', '.join(self.X.names)}; "
            f"labels {', '.join(self.label_names)}"
        )
        if self.dropped:
            text += f" ({len(self.dropped)} videos without every label left out)"
        return text


def _split_names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    names = [v.strip() for v in value if v.strip()]
    return names or None


def featureset_from_cache(data) -> FeatureSet:
    """A ``CacheData`` (``FeatureCache.read``) as a FeatureSet, named as the module says."""
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for group, values in data.arrays.items():
        arrays[group], lengths[group] = values, data.lengths[group]
    for key, values in data.extras.items():
        group, _, extra = key.partition("/")
        if not np.issubdtype(values.dtype, np.floating):
            continue
        arrays[f"{group}-{extra}"] = values
    return FeatureSet(arrays, lengths, data.ids)


def load_training_data(
    cache: str | Path,
    features: str | Sequence[str] | None = None,
    labels: str | Sequence[str] | None = None,
    *,
    require_labels: bool = True,
) -> TrainingData:
    """Read cache groups ``features`` (default: all) and labels ``labels`` (default: all).

    Videos missing any requested label are left out (listed in ``dropped``). With
    ``require_labels=False`` (scoring), every video present in all groups is kept.
    """
    from aigvqa.cache import FeatureCache

    cache = Path(cache)
    store = FeatureCache(cache)
    available = store.groups()
    wanted = _split_names(features) or available
    missing = [g for g in wanted if g not in available]
    if missing:
        raise TrainingDataError(
            f"cache {cache} has no group(s) {', '.join(missing)} (it has {', '.join(available) or 'none'}); "
            f"pick from those with --features, or extract them with `aigvqa extract ... --cache {cache}`"
        )
    if not wanted:
        raise TrainingDataError(f"cache {cache} holds no feature groups; run `aigvqa extract` first")
    data = store.read(wanted)
    provenance = {g: store.group_info(g).provenance for g in wanted}
    label_names = _split_names(labels) or sorted(data.labels)
    if require_labels:
        if not label_names:
            raise TrainingDataError(
                f"cache {cache} holds no labels (MOS); extract from a manifest with label columns, "
                "or import them with `aigvqa import-features ... --label-columns`"
            )
        absent = [name for name in label_names if name not in data.labels]
        if absent:
            raise TrainingDataError(
                f"cache {cache} has no label(s) {', '.join(absent)}; it has {', '.join(sorted(data.labels)) or 'none'}"
            )
    X = featureset_from_cache(data)
    y = np.column_stack([data.labels.get(n, np.full(len(X), math.nan)) for n in label_names]) if label_names else np.zeros((len(X), 0))
    dropped: list[str] = []
    if require_labels:
        keep = np.isfinite(y).all(axis=1)
        dropped = [i for i, k in zip(data.ids, keep) if not k]
        if not keep.all():
            X, y = X[np.flatnonzero(keep)], y[keep]
            groups = {k: v[keep] for k, v in data.groups.items()}
        else:
            groups = dict(data.groups)
        if len(X) == 0:
            raise TrainingDataError(f"no video in {cache} has every label of {label_names}")
    else:
        groups = dict(data.groups)
    return TrainingData(cache, X, y, label_names, groups, provenance, wanted, dropped)


def read_head_config(path: str | Path | None) -> tuple[str | None, dict[str, Any]]:
    """(head name or None, parameters) from a head TOML file (module docstring)."""
    if path is None:
        return None, {}
    path = Path(path)
    try:
        params = load_toml(path)
    except FileNotFoundError as err:
        raise TrainingDataError(f"head config {path} does not exist") from err
    except TOMLDecodeError as err:
        raise TrainingDataError(f"head config {path} is not valid TOML ({err})") from err
    name = params.pop("head", None)
    if name is not None and not isinstance(name, str):
        raise TrainingDataError(f"{path}: `head` must be a head name string, got {name!r}")
    return name, params


def build_head(name: str | None, config: str | Path | None = None, params: Mapping[str, Any] | None = None):
    """A head from its name, a TOML config and explicit parameters (these win)."""
    from aigvqa.heads.registry import create_head

    config_name, config_params = read_head_config(config)
    if name and config_name and name != config_name:
        raise TrainingDataError(f"--head {name} contradicts head = {config_name!r} in {config}; drop one")
    name = name or config_name
    if not name:
        raise TrainingDataError("name a head with --head (or `head = \"...\"` in the --config file)")
    merged = {**config_params, **(params or {})}
    try:
        return name, create_head(name, **merged)
    except TypeError as err:
        raise TrainingDataError(
            f"head {name!r} does not take these parameters ({err}); check {config or 'the parameters'}"
        ) from err


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


def evaluate_cache(
    cache: str | Path,
    head: str | None,
    *,
    config: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    features: str | Sequence[str] | None = None,
    labels: str | Sequence[str] | None = None,
    split: str = "random-8:2",
    trials: int = 10,
    seed: int = 0,
    n_jobs: int = 1,
    test_cache: str | Path | None = None,
    progress: bool = True,
):
    """``evaluate`` (or ``cross_dataset`` with ``test_cache``) of a named head on a cache.

    With ``test_cache`` the head trains on every video of ``cache`` and is tested on every
    video of ``test_cache``, whose groups must come from the same extractors and weights.
    """
    from aigvqa.errors import ProvenanceMismatchError
    from aigvqa.pipeline.evaluation.evaluate import cross_dataset, evaluate
    from aigvqa.pipeline.model.bundle import provenance_problems

    data = load_training_data(cache, features, labels)
    name, estimator = build_head(head, config, params)
    if test_cache is None:
        return evaluate(estimator, data.X, data.y, data.groups, split=split, trials=trials, seed=seed,
                        label_names=data.label_names, n_jobs=n_jobs, progress=progress)
    test = load_training_data(test_cache, data.cache_groups, data.label_names)
    problems = provenance_problems(data.provenance, test.provenance)
    if problems:
        raise ProvenanceMismatchError(
            f"{test_cache} holds features of another origin than {cache}: " + " | ".join(problems)
            + f" ({cache} vs {test_cache}); extract both caches with the same extractor configs and weights"
        )
    return cross_dataset(estimator, data.X, data.y, test.X, test.y, test.groups, label_names=data.label_names,
                         seed=seed, name=f"{Path(cache).stem}->{Path(test_cache).stem}")
