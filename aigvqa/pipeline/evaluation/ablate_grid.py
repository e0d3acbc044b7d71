"""The grid file of ``aigvqa ablate`` (``pipeline.evaluation.ablate``): reading it, checking
it, and the cells it describes.

The grid file (TOML; relative paths are relative to the file; ``examples/ablate-demo.toml``
is a commented example)::

    cache = "features.h5"              # the feature cache every cell reads
    out = "ablate"                     # results.csv, results.md, plots/*.png, cells/*.json
    labels = ["mos"]                   # label columns; default: every label in the cache
    split = "prompt-disjoint"          # prompt-disjoint | random-8:2 | random-7:1:2 |
                                       # leave-one-generator-out
    trials = 10                        # splits per cell (median and std are reported)
    seeds = [0]                        # every cell is run once per seed
    features = [["handcrafted"], ["handcrafted", "clip-frames"]]   # default subsets
    # test_cache = "other.h5"          # cross-dataset: train on all of cache, test on this
                                       # one (then split, trials and seeds' splits do not apply)

    [cluster]                          # the options of `aigvqa extract`: workers,
    workers = 2                        # scheduler = "tcp://host:8786", torch_threads = 1

    [[head]]                           # one table per head family
    name = "svr"
    params = { scaler = "minmax" }     # fixed hyper-parameters
    grid = { C = [1.0, 10.0] }         # every combination of these lists is a cell
    # features = [["handcrafted"]]     # overrides the default subsets for this head
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aigvqa.errors import AigvqaError
from aigvqa.pipeline.config import TOMLDecodeError, load_toml


class GridError(AigvqaError, ValueError):
    """An ablation grid file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Cell:
    """One unit of work: a head with fixed hyper-parameters on a feature subset and a seed."""

    head: str
    params: dict[str, Any]
    features: tuple[str, ...]
    seed: int

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.head}({params}) on {'+'.join(self.features)} seed {self.seed}"

    def label(self, keys: list[str] | None = None) -> str:
        """Short text for plot axes: head, the values of ``keys`` (default: all params),
        features."""
        shown = self.params if keys is None else {k: self.params.get(k) for k in keys}
        params = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
        return (
            f"{self.head}[{params}] {'+'.join(self.features)}"
            if params
            else f"{self.head} {'+'.join(self.features)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "params": self.params,
            "features": list(self.features),
            "seed": self.seed,
        }


@dataclass
class AblationGrid:
    """A parsed grid file; ``cells()`` lists the work."""

    cache: Path
    out: Path
    heads: list[dict[str, Any]]
    features: list[tuple[str, ...]] | None = None
    labels: list[str] | None = None
    split: str = "prompt-disjoint"
    trials: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    test_cache: Path | None = None
    cluster: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def cells(self, available_features: list[str] | None = None) -> list[Cell]:
        """Every (head, params, features, seed) combination, in grid order.

        Without any ``features`` in the file, each head uses all ``available_features``.
        """
        cells = []
        for head in self.heads:
            subsets = head.get("features") or self.features
            if not subsets:
                if not available_features:
                    raise GridError(f"{self.source}: no `features` given and the cache lists none")
                subsets = [tuple(available_features)]
            grid = head.get("grid", {})
            names = sorted(grid)
            for values in itertools.product(*(grid[n] for n in names)):
                params = {**head.get("params", {}), **dict(zip(names, values))}
                for subset in subsets:
                    for seed in self.seeds:
                        cells.append(Cell(head["name"], params, tuple(subset), int(seed)))
        return cells


def load_grid(path: str | Path) -> AblationGrid:
    """Parse and check a grid file (see the module docstring for its format)."""
    path = Path(path)
    try:
        raw = load_toml(path)
    except FileNotFoundError as err:
        raise GridError(
            f"{path}: no such grid file; see examples/ablate-demo.toml for one"
        ) from err
    except TOMLDecodeError as err:
        raise GridError(f"{path}: not valid TOML ({err}); fix the syntax") from err
    base = path.resolve().parent

    def need(key: str, kind: type | tuple[type, ...]):
        if key not in raw:
            raise GridError(f"{path}: missing top-level key `{key}`; see examples/ablate-demo.toml")
        if not isinstance(raw[key], kind):
            raise GridError(
                f"{path}: `{key}` must be a {getattr(kind, '__name__', kind)}, got {raw[key]!r}"
            )
        return raw[key]

    known = {
        "cache",
        "out",
        "labels",
        "split",
        "trials",
        "seeds",
        "features",
        "test_cache",
        "cluster",
        "head",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise GridError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
    heads = need("head", list)
    if not heads:
        raise GridError(f"{path}: add at least one [[head]] table")
    for i, head in enumerate(heads):
        where = f"{path}: [[head]] #{i + 1}"
        if not isinstance(head, dict) or not isinstance(head.get("name"), str):
            raise GridError(f"{where} needs a `name` (one of `aigvqa train --help`'s heads)")
        bad = sorted(set(head) - {"name", "params", "grid", "features"})
        if bad:
            raise GridError(
                f"{where} has unknown keys {bad}; allowed: name, params, grid, features"
            )
        for key, values in head.get("grid", {}).items():
            if not isinstance(values, list) or not values:
                raise GridError(
                    f"{where}: grid.{key} must be a non-empty list of values, got {values!r}"
                )
        if "features" in head:
            head["features"] = _feature_subsets(head["features"], where)
    split = raw.get("split", "prompt-disjoint")
    if not isinstance(split, str):
        raise GridError(
            f'{path}: `split` must be a split name such as "prompt-disjoint", got {split!r}'
        )
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds:
        raise GridError(f"{path}: `seeds` must be a non-empty list of integers, got {seeds!r}")
    trials = raw.get("trials", 10)
    if not isinstance(trials, int) or trials < 1:
        raise GridError(f"{path}: `trials` must be a positive integer, got {trials!r}")
    labels = raw.get("labels")
    if labels is not None and (
        not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
    ):
        raise GridError(f"{path}: `labels` must be a list of label names, got {labels!r}")
    return AblationGrid(
        cache=_under(base, need("cache", str)),
        out=_under(base, raw.get("out", path.stem)),
        heads=heads,
        features=_feature_subsets(raw["features"], str(path)) if "features" in raw else None,
        labels=labels,
        split=split,
        trials=trials,
        seeds=seeds,
        test_cache=_under(base, raw["test_cache"]) if "test_cache" in raw else None,
        cluster=dict(raw.get("cluster", {})),
        source=path,
    )


def _under(base: Path, relative: str) -> Path:
    """``relative`` against the grid file's folder, with ``..`` folded (paths users read)."""
    return Path(os.path.normpath(base / relative))


def _feature_subsets(value: Any, where: str) -> list[tuple[str, ...]]:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(s, list) and s and all(isinstance(x, str) for x in s) for s in value)
    )
    if not ok:
        raise GridError(
            f"{where}: `features` must be a list of lists of cache group names, "
            'e.g. [["handcrafted"]]'
        )
    return [tuple(s) for s in value]
