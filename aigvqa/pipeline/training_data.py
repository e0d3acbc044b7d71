"""Training data: the rows of a feature cache as heads take them, shared by the model
lifecycle (``pipeline.model``) and evaluation (``pipeline.evaluation``), which import each
other only through this module.

``load_training_data`` turns cache groups into the ``FeatureSet`` every head takes. Names of
the feature arrays (what heads' ``features`` parameters refer to):

- a group's values are named after the group (``handcrafted``, ``clip-frames``, ``videval``;
  for ``clip-text`` they are the token sequence, its lengths the valid tokens);
- every floating-point extra ``e`` of group ``g`` becomes ``g-e`` (``clip-text-pooled``,
  one vector per video); boolean extras (token masks) are not features: the lengths
  already carry them;
- every named column range ``c`` a group's provenance records (``"columns"``, from
  ``Extractor.output_columns``) becomes ``g-c``, a view of those columns with the group's
  lengths: blip-itm's [T, 2 + E] values give ``blip-itm-match`` [T, 2] (ITM probability,
  ITC cosine) and ``blip-itm-image`` [T, E].

``build_head`` makes a head from its name, a head TOML file (``pipeline.config``) and
explicit parameters; ``provenance_problems`` compares where two sets of features came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError
from aigvqa.heads.featureset import FeatureSet
from aigvqa.pipeline.config import load_head_config


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
    # each row's 0-based row in the file it was imported from (-1: unknown); None: no row has one
    source_order: np.ndarray | None = None

    def take(self, rows: Sequence[int]) -> TrainingData:
        """These rows, in this order (X, y, groups and source order together)."""
        rows = np.asarray(rows, dtype=np.int64)
        return TrainingData(
            self.cache,
            self.X[rows],
            self.y[rows],
            self.label_names,
            {k: np.asarray(v)[rows] for k, v in self.groups.items()},
            self.provenance,
            self.cache_groups,
            self.dropped,
            None if self.source_order is None else self.source_order[rows],
        )

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


def featureset_from_cache(
    data, provenance: Mapping[str, Mapping[str, Any]] | None = None
) -> FeatureSet:
    """A ``CacheData`` (``FeatureCache.read``) as a FeatureSet, named as the module says.

    ``provenance`` (cache group -> its provenance) adds the named column ranges of groups
    that record them; without it only the groups and extras are named.
    """
    arrays: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for group, values in data.arrays.items():
        arrays[group], lengths[group] = values, data.lengths[group]
        columns = ((provenance or {}).get(group) or {}).get("columns") or {}
        for column, (start, stop) in columns.items():
            if not 0 <= start < stop <= values.shape[-1]:
                raise TrainingDataError(
                    f"cache group {group!r} records column range {column!r} = [{start}, {stop}) "
                    f"but its values are {values.shape[-1]} wide; re-extract the group"
                )
            name = f"{group}-{column}"
            arrays[name], lengths[name] = values[..., start:stop], data.lengths[group]
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
            f"cache {cache} has no group(s) {', '.join(missing)} "
            f"(it has {', '.join(available) or 'none'}); pick from those with --features, "
            f"or extract them with `aigvqa extract ... --cache {cache}`"
        )
    if not wanted:
        raise TrainingDataError(
            f"cache {cache} holds no feature groups; run `aigvqa extract` first"
        )
    data = store.read(wanted)
    provenance = {g: store.group_info(g).provenance for g in wanted}
    label_names = _split_names(labels) or sorted(data.labels)
    if require_labels:
        if not label_names:
            raise TrainingDataError(
                f"cache {cache} holds no labels (MOS); extract from a manifest with label columns, "
                "or import them with `aigvqa import-features ... --labels COLUMN`"
            )
        absent = [name for name in label_names if name not in data.labels]
        if absent:
            raise TrainingDataError(
                f"cache {cache} has no label(s) {', '.join(absent)}; "
                f"it has {', '.join(sorted(data.labels)) or 'none'}"
            )
    X = featureset_from_cache(data, provenance)
    y = (
        np.column_stack([data.labels.get(n, np.full(len(X), math.nan)) for n in label_names])
        if label_names
        else np.zeros((len(X), 0))
    )
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
    known = {v["video_id"]: v.get("source_order", -1) for v in store.videos()}
    order = np.array([known.get(i, -1) for i in X.ids], dtype=np.int64)
    return TrainingData(
        cache,
        X,
        y,
        label_names,
        groups,
        provenance,
        wanted,
        dropped,
        order if (order >= 0).any() else None,
    )


def read_row_order(
    path: str | Path, column: str | None = None, ids: Sequence[str] | None = None
) -> list[str]:
    """Video ids in the row order of a CSV (e.g. VIDEVAL's metadata file). ``column`` names
    the id column; without it, the first column holding every id of ``ids`` (or the first
    column) is used."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except FileNotFoundError as err:
        raise TrainingDataError(f"--order-from {path}: no such file") from err
    if len(rows) < 2:
        raise TrainingDataError(f"--order-from {path}: needs a header row and one row per video")
    header = [h.strip() for h in rows[0]]
    if column is not None:
        if column not in header:
            raise TrainingDataError(
                f"--order-from {path}: no column {column!r}; columns are {header}"
            )
        index = header.index(column)
    else:
        wanted = set(ids or ())
        holding = [
            j
            for j in range(len(header))
            if wanted and wanted <= {r[j].strip() for r in rows[1:] if j < len(r)}
        ]
        index = holding[0] if holding else 0
    return [r[index].strip() for r in rows[1:] if index < len(r)]


def order_rows(
    data: TrainingData,
    order_from: str | Path | None = None,
    order_column: str | None = None,
    *,
    source_order: bool = True,
) -> tuple[TrainingData, str]:
    """``data`` with its rows in a file's row order, and a sentence saying which order it is.

    ``order_from``: a CSV listing the videos (its id column: ``order_column`` or found);
    ids it does not list are an error, rows it lists that the cache lacks are skipped.
    Otherwise, with ``source_order``, the imported file's order the cache recorded, when
    every row has one; else the cache's own order (sorted by id)."""
    if order_from is not None:
        listed = read_row_order(order_from, order_column, data.ids)
        position = {vid: i for i, vid in enumerate(listed)}
        missing = [vid for vid in data.ids if vid not in position]
        if missing:
            raise TrainingDataError(
                f"--order-from {order_from}: {len(missing)} video(s) of {data.cache} are not "
                f"listed (first: {missing[:3]}); give the metadata file the features were "
                "imported with (and --order-column if its ids are not in the first column)"
            )
        rows = sorted(range(len(data.ids)), key=lambda r: position[data.ids[r]])
        return data.take(rows), f"rows in the row order of {Path(order_from).name}"
    if source_order and data.source_order is not None and (data.source_order >= 0).all():
        rows = np.argsort(data.source_order, kind="stable")
        return data.take(
            rows
        ), "rows in the imported file's row order (recorded by import-features)"
    return data, (
        "rows in video-id order: the cache records no source row order for every video; "
        "pass --order-from METADATA.csv to split over a metadata file's rows"
    )


def build_head(
    name: str | None,
    config: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    default_name: str | None = None,
    defaults: Callable[[str, dict], dict] | None = None,
    X: FeatureSet | None = None,
):
    """A head from its name, a TOML config and explicit parameters (these win).

    ``default_name``: the head when neither ``name`` nor the config names one;
    ``defaults(name, params)``: fills in defaults under the given parameters (an evaluation
    protocol's, ``pipeline.evaluation.protocols``). A stack's config may give one table per
    base (``StackingHead.from_config``).

    The head is checked here, before any fit (``aigvqa.heads.params.check_head``): its
    parameters, a classical head's ``search`` grid and, given the FeatureSet ``X`` it will
    be fit on, a deep head's feature roles; errors name the config file first."""
    import inspect

    from aigvqa.heads.params import check_head
    from aigvqa.heads.registry import create_head, get_head_class

    config_name, config_params = load_head_config(config)
    if name and config_name and name != config_name:
        raise TrainingDataError(
            f"--head {name} contradicts head = {config_name!r} in {config}; drop one"
        )
    name = name or config_name or default_name
    if not name:
        raise TrainingDataError('name a head with --head (or `head = "..."` in the --config file)')
    merged = {**config_params, **(params or {})}
    if name == "stack" and "estimators" not in merged:
        raise TrainingDataError(
            "head 'stack' needs estimators (its base heads): "
            + (
                'give a stack config, e.g. config="examples/videval-stack.toml"'
                if config is None
                else f"add one [estimators.NAME] table per base to {config}, as "
                "examples/videval-stack.toml does"
            )
        )
    if defaults is not None:
        merged = defaults(name, merged)
    cls = get_head_class(name)
    from_config = getattr(cls, "from_config", None)
    where = f"{config}: " if config is not None else ""
    if from_config is None:
        signature = inspect.signature(cls).parameters
        accepted = set(signature)
        unknown = sorted(set(merged) - accepted)
        open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.values())
        if unknown and not open_ended:
            raise TrainingDataError(
                f"{where}head {name!r} has no parameter(s) {', '.join(unknown)}; "
                f"its parameters are {', '.join(sorted(accepted))}"
            )
    try:
        estimator = from_config(merged) if from_config is not None else create_head(name, **merged)
        check_head(estimator, X)
    except TypeError as err:
        raise TrainingDataError(
            f"{where}head {name!r} does not take these parameters ({err}); "
            f"check {config or 'the parameters'}"
        ) from err
    except AigvqaError as err:
        if not where:
            raise
        # the same error, its message led by the config file it came from (worded when shown)
        text = where + str(err.args[0] if err.args else err)
        try:
            prefixed = type(err)(text)
        except TypeError:  # an error class whose constructor takes more than the message
            prefixed = TrainingDataError(text)
        prefixed.__dict__.update(err.__dict__)
        raise prefixed from err
    return name, estimator


def provenance_problems(
    expected: Mapping[str, Mapping[str, Any]], actual: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """What differs between two {cache group: provenance} maps, one line per group; runtime
    options that change speed, not values (the cache's ``RUNTIME_KEYS``), the weights'
    path and the data file imported rows came from are ignored: both callers (cross-dataset
    evaluation, a model checking the features it scores) compare features of *other*
    videos, so only how the features were made matters. Empty when every expected group
    matches."""
    from aigvqa.cache.schema import RUNTIME_KEYS, describe_differences

    problems = []
    for group, want in expected.items():
        if group not in actual:
            problems.append(f"group {group!r} is missing (have {sorted(actual)})")
            continue
        diffs = describe_differences(want, actual[group], ignore=RUNTIME_KEYS, same_source=False)
        if diffs:
            problems.append(f"group {group!r}: " + "; ".join(diffs))
    return problems
