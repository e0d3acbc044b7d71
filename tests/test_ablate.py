"""`aigvqa ablate`: the grid file format, a grid run on Dask writing results.csv / markdown /
PNG plots, and a re-run that loads finished cells instead of recomputing them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_cli_train_evaluate import make_cache

from aigvqa.pipeline.evaluation import ablate
from aigvqa.pipeline.evaluation.ablate import GridError, load_grid, run_ablation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ablate-demo.toml"

GRID = """
cache = "feats.h5"
out = "ablation"
labels = ["mos", "alignment"]
split = "prompt-disjoint"
trials = 2
seeds = [0]
features = [["a"], ["a", "b"]]

[[head]]
name = "svr"
params = { scaler = "standard" }
grid = { C = [0.5, 4.0] }

[[head]]
name = "elasticnet"
features = [["b"]]
"""


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
        yield c


class CallLog:
    """Counts run_cell calls through a file: Dask serialises the task function, so an
    in-memory list in a closure would be a copy."""

    def __init__(self, path: Path):
        self.path = path

    def wrap(self, run_cell):
        path = self.path

        def counting(cell, spec):
            with open(path, "a") as fh:
                fh.write(json.dumps(cell) + "\n")
            return run_cell(cell, spec)

        return counting

    def cells(self) -> list[dict]:
        return (
            [json.loads(line) for line in self.path.read_text().splitlines()]
            if self.path.exists()
            else []
        )

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _write_grid(folder: Path, text: str = GRID) -> Path:
    path = folder / "grid.toml"
    path.write_text(text)
    return path


def test_grid_lists_every_combination(tmp_path):
    grid = load_grid(_write_grid(tmp_path))
    cells = grid.cells()
    assert len(cells) == 2 * 2 + 1  # svr: 2 C values x 2 subsets; elasticnet: its own subset
    assert {c.params["C"] for c in cells if c.head == "svr"} == {0.5, 4.0}
    assert all(c.params["scaler"] == "standard" for c in cells if c.head == "svr")
    assert [c.features for c in cells if c.head == "elasticnet"] == [("b",)]
    assert grid.cache == tmp_path / "feats.h5"  # relative to the grid file


def test_example_grid_parses():
    grid = load_grid(EXAMPLE)
    assert len(grid.cells()) == (4 * 2 + 2 * 2 + 2 * 1) * 2
    assert grid.cluster == {"workers": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GRID.replace('name = "elasticnet"', ""), "needs a `name`"),
        (GRID + "\nsplitt = 1\n", "unknown keys \\['splitt'\\]"),
        (GRID.replace("C = [0.5, 4.0]", "C = 0.5"), "grid.C must be a non-empty list"),
        (GRID.replace('features = [["a"], ["a", "b"]]', 'features = ["a"]'), "list of lists"),
        (GRID.replace('cache = "feats.h5"', ""), "missing top-level key `cache`"),
        ("cache = [", "not valid TOML"),
    ],
)
def test_malformed_grids_are_refused_naming_the_file(tmp_path, text, message):
    path = _write_grid(tmp_path, text)
    with pytest.raises(GridError, match=message) as err:
        load_grid(path)
    assert str(path) in str(err.value)


def test_run_ablation_takes_the_grid_file_path(tmp_path):
    """The API reads the TOML itself: a path is parsed (here it names a cache that does not
    exist, so the run stops before any cluster starts)."""
    path = _write_grid(tmp_path)
    with pytest.raises(GridError, match="feats.h5 does not exist") as err:
        run_ablation(str(path), progress=False, echo=lambda *a: None)
    assert str(path) in str(err.value)


def test_grid_runs_writes_results_and_does_not_recompute_finished_cells(
    tmp_path, client, monkeypatch
):
    make_cache(tmp_path / "feats.h5")
    grid = load_grid(_write_grid(tmp_path))
    calls = CallLog(tmp_path / "calls.jsonl")
    monkeypatch.setattr(ablate, "run_cell", calls.wrap(ablate.run_cell))
    first = run_ablation(grid, client=client, progress=False, echo=lambda *a: None)
    assert len(calls.cells()) == 5 and (first.computed, first.loaded) == (5, 0)

    out = tmp_path / "ablation"
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * 2  # one row per cell and MOS dimension
    assert {r["head"] for r in rows} == {"svr", "elasticnet"}
    assert {r["features"] for r in rows} == {"a", "a+b", "b"}
    assert all(r["srcc_median"] and r["plcc_logistic_std"] for r in rows)
    # the cache has prompt and generator groups: the ranking metrics come along
    assert all(
        r["pair_acc_median"] and r["prompt_srcc_std"] and r["model_pair_acc_median"] for r in rows
    )
    markdown = (out / "results.md").read_text()
    assert (
        "## mos" in markdown
        and "## alignment" in markdown
        and '`{"C": 4.0, "scaler": "standard"}`' in markdown
    )
    assert "| pair acc (in prompt) | SRCC (in prompt) | model pair acc |" in markdown
    assert (
        "What the columns mean:" in markdown
        and "RMSE: " in markdown
        and "LOWER is better" in markdown
    )
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == [
        "best-alignment.png",
        "best-mos.png",
        "srcc-plcc-alignment.png",
        "srcc-plcc-mos.png",
    ]
    for name in pngs:
        assert (out / "plots" / name).read_bytes().startswith(PNG_MAGIC)
        assert f"(plots/{name})" in markdown
    stored = sorted((out / "cells").glob("*.json"))
    assert len(stored) == 5

    calls.clear()
    again = run_ablation(grid, client=client, progress=False, echo=lambda *a: None)
    assert calls.cells() == [] and (again.computed, again.loaded) == (0, 5)
    assert again.rows() == first.rows()

    grid.seeds = [0, 1]  # a grown grid runs only its new cells
    grown = run_ablation(grid, client=client, progress=False, echo=lambda *a: None)
    assert len(calls.cells()) == 5 and all(c["seed"] == 1 for c in calls.cells())
    assert (grown.computed, grown.loaded) == (5, 5)


def test_changed_cache_contents_recompute_the_cells_that_read_them(tmp_path, client, monkeypatch):
    make_cache(tmp_path / "feats.h5")
    grid = load_grid(
        _write_grid(tmp_path, GRID.replace('features = [["a"], ["a", "b"]]', 'features = [["a"]]'))
    )
    run_ablation(grid, client=client, progress=False, echo=lambda *a: None)
    (tmp_path / "feats.h5").unlink()
    make_cache(tmp_path / "feats.h5", seed=5)  # same groups and provenance, other videos' values
    calls = CallLog(tmp_path / "calls.jsonl")
    monkeypatch.setattr(ablate, "run_cell", calls.wrap(ablate.run_cell))
    run_ablation(grid, client=client, progress=False, echo=lambda *a: None)
    assert len(calls.cells()) == 3


def test_cli_ablate_starts_its_own_cluster_from_the_grid(tmp_path, capsys):
    # the path a user takes: no client given, `[cluster]` in the file sizes a LocalCluster
    from aigvqa.pipeline.cli import main

    make_cache(tmp_path / "feats.h5")
    text = (
        GRID.replace("grid = { C = [0.5, 4.0] }", "grid = { C = [4.0] }")
        + "\n[cluster]\nworkers = 1\n"
    )
    assert main(["ablate", str(_write_grid(tmp_path, text)), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "running on LocalCluster of 1 worker(s)" in out
    with open(tmp_path / "ablation" / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3 * 2


def test_a_deep_cell_trains_its_trials_together_unless_told_not_to(tmp_path, monkeypatch):
    import numpy as np

    import aigvqa.heads.trials as trials
    from aigvqa.pipeline.cli.main import build_parser

    make_cache(tmp_path / "feats.h5")
    calls = []
    real = trials.fit_trials
    monkeypatch.setattr(
        trials, "fit_trials", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k)
    )
    cell = {"head": "mlp", "params": {"hidden": 8, "epochs": 2}, "features": ["a"], "seed": 0}
    spec = {
        "cache": str(tmp_path / "feats.h5"),
        "test_cache": None,
        "labels": ["mos"],
        "split": "prompt-disjoint",
        "trials": 2,
    }
    together = ablate.run_cell(cell, {**spec, "batch_trials": True})
    alone = ablate.run_cell(cell, {**spec, "batch_trials": False})
    assert calls == [2]
    np.testing.assert_allclose(
        together["rows"][0]["srcc_median"], alone["rows"][0]["srcc_median"], atol=1e-6
    )
    args = build_parser().parse_args(["ablate", "grid.toml", "--no-batch-trials"])
    assert args.batch_trials is False
    assert build_parser().parse_args(["ablate", "grid.toml"]).batch_trials is True


STACK_GRID = """
cache = "feats.h5"
out = "ablation"
labels = ["mos"]
split = "random-8:2"
trials = 2
seeds = [0]
features = [["a", "b"]]

[[head]]
name = "stack"

[head.params]
cv = 3
estimators = { svr = { search = { C = [1.0, 4.0] } }, en = { head = "elasticnet" } }
"""


def test_a_stack_cell_reports_its_meta_weights(tmp_path, client):
    make_cache(tmp_path / "feats.h5")
    result = run_ablation(
        load_grid(_write_grid(tmp_path, STACK_GRID)),
        client=client,
        progress=False,
        echo=lambda *a: None,
    )
    row = result.rows()[0]
    assert set(json.loads(row["meta_weights_median"])) == {"svr", "en"}
    stored = json.loads(next((tmp_path / "ablation" / "cells").glob("*.json")).read_text())
    assert len(stored["trials"]) == 2 and all(
        set(json.loads(t["meta_weights"])) == {"svr", "en"} for t in stored["trials"]
    )
    assert "meta weights, median over 2 trials" in stored["table"]
    markdown = (tmp_path / "ablation" / "results.md").read_text()
    assert "Meta weights of the stacks (median over trials):" in markdown and "svr 0." in markdown


def test_cells_within_one_std_of_the_first_are_counted_until_the_first_clear_gap():
    rows = [
        {"srcc_median": 0.80, "srcc_std": 0.05},
        {"srcc_median": 0.77, "srcc_std": 0.02},
        {"srcc_median": 0.70, "srcc_std": 0.12},
        {"srcc_median": 0.50, "srcc_std": 0.01},
    ]
    assert ablate._within_one_std(rows) == 2  # 0.03 < 0.05; 0.10 < 0.12; 0.30 > 0.05
    assert ablate._within_one_std(rows[:1]) == 0 and ablate._within_one_std([]) == 0
    assert ablate._within_one_std([rows[0], rows[3]]) == 0
