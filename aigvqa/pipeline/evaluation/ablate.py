"""``aigvqa ablate grid.toml``: heads x feature subsets x hyper-parameters x seeds, on Dask.

The grid file, its format and the cells it describes: ``pipeline.evaluation.ablate_grid``;
the results files (results.csv, results.md, plots): ``pipeline.evaluation.ablate_report``.
Their names stay importable from here.

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
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigvqa.pipeline.evaluation.ablate_grid import (  # noqa: F401  (re-exported)
    AblationGrid,
    Cell,
    GridError,
    _feature_subsets,
    _under,
    load_grid,
)
from aigvqa.pipeline.evaluation.ablate_report import (  # noqa: F401  (re-exported)
    MD_METRICS,
    MD_RANKING,
    _within_one_std,
    write_ablation_report,
)


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
