"""``aigvqa ablate grid.toml``: heads x feature subsets x hyper-parameters x seeds, on Dask.

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

A *cell* is one (head, params, feature subset, seed). Its result is stored as
``cells/<key>.json`` where ``key`` hashes everything that determines the result: the cell,
labels, split, trials and a fingerprint of the cache (the provenance of the groups it reads
and the ids and labels it holds). Re-running the grid loads finished cells instead of
recomputing them, so an interrupted ablation resumes, and adding a head or a value to the
grid only computes the new cells; changing the features in the cache recomputes everything
that read them.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
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


def cell_key(cell: Cell, context: dict[str, Any]) -> str:
    """Stable hash of a cell and everything else its result depends on."""
    payload = json.dumps({"cell": cell.as_dict(), **context}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


CLUSTER_KEYS = {
    "workers": "n_workers",
    "scheduler": "scheduler",
    "torch_threads": "torch_threads",
    "gpus": "gpus",
}
MAX_STORED_PREDICTIONS = 20000
"""Pooled test predictions kept per cell and dimension (for the best model's scatter plot)."""


# -- one cell, on a worker --------------------------------------------------------------------

_DATA: dict[tuple, Any] = {}  # per worker process: loaded training data, reused across cells


def _training_data(cache: str, features: tuple[str, ...], labels: tuple[str, ...] | None):
    from aigvqa.pipeline.training_data import load_training_data

    key = (cache, os.stat(cache).st_mtime_ns, features, labels)
    if key not in _DATA:
        if len(_DATA) > 8:  # a worker walks through subsets; keep memory bounded
            _DATA.clear()
        _DATA[key] = load_training_data(cache, list(features), list(labels) if labels else None)
    return _DATA[key]


def run_cell(cell: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one cell (a ``Cell.as_dict()``) as the grid says; returns the JSON to store."""
    import time

    from aigvqa.pipeline.evaluation.evaluate import cross_dataset, evaluate
    from aigvqa.pipeline.training_data import build_head

    started = time.perf_counter()
    labels = tuple(spec["labels"]) if spec["labels"] else None
    data = _training_data(spec["cache"], tuple(cell["features"]), labels)
    _, head = build_head(cell["head"], params=cell["params"])
    if spec["test_cache"]:
        test = _training_data(spec["test_cache"], tuple(cell["features"]), tuple(data.label_names))
        result = cross_dataset(
            head,
            data.X,
            data.y,
            test.X,
            test.y,
            test.groups,
            label_names=data.label_names,
            seed=cell["seed"],
        )
    else:
        result = evaluate(
            head,
            data.X,
            data.y,
            data.groups,
            split=spec["split"],
            trials=spec["trials"],
            seed=cell["seed"],
            label_names=data.label_names,
            progress=False,
            batch_trials=spec.get("batch_trials", True),
        )
    predictions = {}
    for label in result.label_names:
        mos, pred = result.predictions(label)
        predictions[label] = {
            "mos": mos[:MAX_STORED_PREDICTIONS].round(6).tolist(),
            "pred": pred[:MAX_STORED_PREDICTIONS].round(6).tolist(),
        }
    return {
        "cell": cell,
        "rows": result.rows(),
        "trials": result.rows(
            per_trial=True
        ),  # per trial: metrics, chosen hyper-parameters, meta weights
        "table": result.table(),
        "predictions": predictions,
        # mapping fits that fell back to raw predictions (evaluate counts them per trial)
        "fit_warnings": sum(sum(result.fallbacks(label).values()) for label in result.label_names),
        "seconds": time.perf_counter() - started,
    }


# -- the grid, on the client ------------------------------------------------------------------


@dataclass
class AblationResults:
    grid: AblationGrid
    cells: list[dict[str, Any]]  # stored cell results, in grid order
    computed: int
    loaded: int
    files: list[Path]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per cell and MOS dimension; ``model`` names the cell by the
        hyper-parameters that vary among that head's cells."""
        cells = [
            Cell(
                s["cell"]["head"],
                s["cell"]["params"],
                tuple(s["cell"]["features"]),
                s["cell"]["seed"],
            )
            for s in self.cells
        ]
        varying: dict[str, list[str]] = {}
        for head in {c.head for c in cells}:
            mine = [c for c in cells if c.head == head]
            keys = sorted({k for c in mine for k in c.params})
            varying[head] = [
                k for k in keys if len({json.dumps(c.params.get(k), default=str) for c in mine}) > 1
            ]
        out = []
        for stored, cell in zip(self.cells, cells):
            for row in stored["rows"]:
                out.append(
                    {
                        "key": stored["key"],
                        "model": cell.label(varying[cell.head]),
                        "head": cell.head,
                        "params": json.dumps(cell.params, sort_keys=True),
                        "features": "+".join(cell.features),
                        "seed": cell.seed,
                        **{k: v for k, v in row.items() if k != "head"},
                    }
                )
        return out

    def summary(self) -> str:
        return (
            f"{len(self.cells)} cells: {self.computed} computed, {self.loaded} loaded from "
            f"{self.grid.out / 'cells'} (finished earlier)\n"
            + "\n".join(f"wrote {p}" for p in self.files)
        )


def _fingerprint(cache: Path, groups: tuple[str, ...], labels: list[str] | None) -> str:
    """Hash of what a cell reads from a cache: group provenance, ids, labels and groups."""
    from aigvqa.cache import FeatureCache

    store = FeatureCache(cache)
    have = store.groups()
    missing = [g for g in groups if g not in have]
    if missing:
        raise GridError(
            f"{cache} has no group(s) {', '.join(missing)} (it has {', '.join(have)}); fix the "
            "grid's `features`"
        )
    digest = hashlib.sha256()
    for g in groups:
        info = store.group_info(g)
        digest.update(
            json.dumps([g, info.provenance, info.n, info.dim], sort_keys=True, default=str).encode()
        )
        digest.update("\n".join(store.ids(g)).encode())
    videos = sorted(store.videos(), key=lambda v: v["video_id"])
    digest.update(
        json.dumps(
            [
                [
                    v["video_id"],
                    v["labels"] if labels is None else {k: v["labels"].get(k) for k in labels},
                    v["groups"],
                    v["prompt_id"],
                ]
                for v in videos
            ],
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()[:20]


def grid_cluster_spec(
    table: dict[str, Any], overrides: dict[str, Any] | None = None, where: str = "[cluster]"
):
    """The ``ClusterSpec`` of a grid's ``[cluster]`` table (keys ``CLUSTER_KEYS``: the CLI's
    words), with ``overrides`` (same keys; None values ignored) on top."""
    from aigvqa.pipeline.extract.cluster import ClusterSpec

    merged = {**table, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = sorted(set(merged) - set(CLUSTER_KEYS))
    if unknown:
        raise GridError(f"{where} has unknown keys {unknown}; allowed: {sorted(CLUSTER_KEYS)}")
    return ClusterSpec(**{CLUSTER_KEYS[k]: v for k, v in merged.items() if v is not None})


def run_ablation(
    grid: AblationGrid | str | Path,
    *,
    client=None,
    cluster=None,
    progress: bool = True,
    echo=print,
    batch_trials: bool = True,
) -> AblationResults:
    """Run every unfinished cell of ``grid`` (an ``AblationGrid`` or the path of its TOML
    file, read by ``load_grid``) on Dask and write the results (module docstring).

    ``client``: an existing ``distributed.Client``; otherwise a cluster is started, only
    if some cell still has to run, as ``cluster`` says: a ``ClusterSpec`` (as ``extract``
    and ``score`` take it), or a dict of ``[cluster]`` keys overriding the grid's table
    (default: the grid's table). ``batch_trials``: a deep-head cell trains its trials
    together as one vectorised model (``evaluate``'s option); results do not depend on it
    beyond float rounding, so it is not part of a cell's key.
    """
    from aigvqa.cache import FeatureCache
    from aigvqa.pipeline.extract.cluster import ClusterSpec

    if not isinstance(grid, AblationGrid):
        grid = load_grid(grid)
    if not isinstance(cluster, ClusterSpec):  # the flat form, turned into a spec at once
        cluster = grid_cluster_spec(grid.cluster, cluster, where=f"{grid.source}: [cluster]")
    if not grid.cache.exists():
        raise GridError(
            f"{grid.source}: cache {grid.cache} does not exist; make it with `aigvqa extract` "
            "(or `aigvqa demo` for the example grid)"
        )
    cells = grid.cells(FeatureCache(grid.cache).groups())
    cell_dir = grid.out / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "cache": str(grid.cache),
        "test_cache": str(grid.test_cache) if grid.test_cache else None,
        "labels": grid.labels,
        "split": grid.split,
        "trials": grid.trials,
        "batch_trials": batch_trials,
    }
    fingerprints: dict[tuple[str, ...], str] = {}
    keyed = []
    for cell in cells:
        if cell.features not in fingerprints:
            fp = _fingerprint(grid.cache, cell.features, grid.labels)
            if grid.test_cache is not None:
                fp += _fingerprint(grid.test_cache, cell.features, grid.labels)
            fingerprints[cell.features] = fp
        context = {
            "features_fingerprint": fingerprints[cell.features],
            "labels": grid.labels,
            "split": None if grid.test_cache else grid.split,
            "trials": None if grid.test_cache else grid.trials,
            "cross_dataset": bool(grid.test_cache),
        }
        keyed.append((cell_key(cell, context), cell))
    stored: dict[str, dict[str, Any]] = {}
    for key, _ in keyed:
        path = cell_dir / f"{key}.json"
        if path.exists():
            stored[key] = json.loads(path.read_text())
    pending = [(k, c) for k, c in keyed if k not in stored]
    pending = list({k: c for k, c in pending}.items())  # a cell listed twice runs once
    echo(f"{len(keyed)} cells: {len(keyed) - len(pending)} already finished, {len(pending)} to run")
    if pending:
        _run_pending(pending, spec, stored, cell_dir, client, cluster, progress, echo)
    results = AblationResults(
        grid, [], computed=len(pending), loaded=len(keyed) - len(pending), files=[]
    )
    results.cells = [{**stored[k], "key": k} for k, _ in keyed]
    results.files = write_ablation_report(results)
    return results


def _run_pending(pending, spec, stored, cell_dir: Path, client, cluster, progress, echo) -> None:
    from tqdm.auto import tqdm

    from aigvqa.pipeline.extract.cluster import (
        check_workers,
        describe_client,
        open_cluster,
        worker_torch_threads,
    )

    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(open_cluster(cluster, say=echo if progress else None))
            check_workers(client)  # an existing cluster's workers must run this aigvqa
            stack.enter_context(worker_torch_threads(client, cluster.torch_threads))
            echo(f"running on {describe_client(client)}")
        from distributed import as_completed

        futures = {
            client.submit(run_cell, cell.as_dict(), spec, key=f"ablate-cell-{key}", pure=False): key
            for key, cell in pending
        }
        bar = tqdm(total=len(futures), desc="ablate", unit="cell", disable=not progress)
        try:
            for future in as_completed(futures):
                key = futures[future]
                result = (
                    future.result()
                )  # a failing cell stops the grid: its error is the user's to fix
                write_json_atomic(cell_dir / f"{key}.json", result)
                stored[key] = result
                bar.update()
        finally:
            bar.close()
            for future in futures:
                future.cancel()


# -- results files ------------------------------------------------------------------------------

MD_METRICS = (
    ("srcc", "SRCC"),
    ("plcc_logistic", "PLCC (logistic)"),
    ("krcc", "KRCC"),
    ("rmse", "RMSE"),
)
# shown when the cache has prompt / generator groups (the AIGC benchmarks' ranking view)
MD_RANKING = (
    ("pair_acc", "pair acc (in prompt)"),
    ("prompt_srcc", "SRCC (in prompt)"),
    ("model_pair_acc", "model pair acc"),
)


def _within_one_std(ranked: list[dict]) -> int:
    """How many rows after the first (sorted by median SRCC) have a median SRCC within one std
    (the larger of the two) of the first's."""
    import numpy as np

    def num(row, key):
        return float(np.nan_to_num(row.get(key, np.nan), nan=0.0))

    if not ranked:
        return 0
    top = ranked[0]
    count = 0
    for row in ranked[1:]:
        gap = num(top, "srcc_median") - num(row, "srcc_median")
        if gap > max(num(top, "srcc_std"), num(row, "srcc_std")):
            break
        count += 1
    return count


def write_ablation_report(results: AblationResults) -> list[Path]:
    """results.csv, results.md and plots/*.png under the grid's ``out`` folder."""
    import numpy as np

    from aigvqa.pipeline.evaluation.metrics import metric_legend
    from aigvqa.pipeline.evaluation.report import metric_bars, scatter_with_fit, write_csv

    out = results.grid.out
    rows = results.rows()
    files = [write_csv(rows, out / "results.csv")]
    labels = list(dict.fromkeys(r["dimension"] for r in rows))
    shown = MD_METRICS + tuple(m for m in MD_RANKING if any(f"{m[0]}_median" in r for r in rows))
    protocol = (
        "cross-dataset"
        if results.grid.test_cache
        else f"{results.grid.split}, {results.grid.trials} trials"
    )
    md = [
        f"# Ablation: {results.grid.source.name if results.grid.source else ''}",
        "",
        f"cache `{results.grid.cache.name}`, {protocol}, seeds {results.grid.seeds}; "
        "median ± std over trials; sorted by median SRCC.",
        "",
    ]
    for label in labels:
        mine = sorted(
            (r for r in rows if r["dimension"] == label),
            key=lambda r: -np.nan_to_num(r.get("srcc_median", np.nan), nan=-9.0),
        )
        md += [
            f"## {label}",
            "",
            "| rank | head | params | features | seed | " + " | ".join(h for _, h in shown) + " |",
            "|---|---|---|---|---|" + "---|" * len(shown),
        ]
        for rank, r in enumerate(mine, 1):
            cells = [
                f"{r.get(f'{m}_median', np.nan):.4f} ± {r.get(f'{m}_std', np.nan):.4f}"
                for m, _ in shown
            ]
            md.append(
                f"| {rank} | {r['head']} | `{r['params']}` | {r['features']} | {r['seed']} | "
                + " | ".join(cells)
                + " |"
            )
        close = _within_one_std(mine)
        if close:
            md += [
                "",
                f"Ranks 2-{close + 1} are within one std of rank 1's median SRCC: these trials do "
                "not tell those cells apart."
                if close > 1
                else (
                    "Rank 2 is within one std of rank 1's median SRCC: these trials do not tell "
                    "the two apart."
                ),
            ]
        stacks = [r for r in mine if r.get("meta_weights_median")]
        if (
            stacks
        ):  # what each stack did: its meta weights (median over trials; per trial in cells/*.json)
            md += ["", "Meta weights of the stacks (median over trials):", ""]
            md += [
                f"- rank {mine.index(r) + 1} ({r['model']}, seed {r['seed']}): "
                + ", ".join(f"{n} {w:.3f}" for n, w in json.loads(r["meta_weights_median"]).items())
                for r in stacks
            ]
        slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        bars = metric_bars(
            [{**r, "model": f"{r['model']} s{r['seed']}"} for r in mine],
            out / "plots" / f"srcc-plcc-{slug}.png",
            title=f"{label}: median over trials (bars: std)",
        )
        best = mine[0]
        stored = next(c for c in results.cells if c["key"] == best["key"])
        pred = stored["predictions"][label]
        scatter = scatter_with_fit(
            np.asarray(pred["mos"]),
            np.asarray(pred["pred"]),
            out / "plots" / f"best-{slug}.png",
            title=f"best for {label}: {best['model']} seed {best['seed']}",
        )
        files += [bars, scatter]
        md += [
            "",
            f"![{bars.stem}](plots/{bars.name})",
            f"![{scatter.stem}](plots/{scatter.name})",
            "",
        ]
    md += ["What the columns mean:", "", metric_legend(m for m, _ in shown), ""]
    path = out / "results.md"
    path.write_text("\n".join(md) + "\n")
    files.append(path)
    return files
