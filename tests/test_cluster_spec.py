"""One cluster spec: extract, score and ablate take the same ``ClusterSpec`` (Python:
``cluster=``, or flat keywords turned into one at once), and the CLI verbs build it
with one ``cluster_spec(args)`` from the same flags."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from aigvqa.pipeline.cli import main
from aigvqa.pipeline.extract.cluster import ClusterError, ClusterSpec, as_cluster_spec

FLAGS = ["--workers", "3", "--torch-threads", "2", "--scheduler", "tcp://head:8786", "--gpus"]


@pytest.fixture
def received(monkeypatch, tmp_path):
    """Replace the API functions the three verbs call; record the ``cluster`` each gets."""
    import aigvqa.pipeline.evaluation.ablate as ablate
    import aigvqa.pipeline.extract as extract_package
    import aigvqa.pipeline.model.bundle as bundle
    import aigvqa.pipeline.model.score as score

    got: dict[str, ClusterSpec] = {}
    report = SimpleNamespace(failed=0, any_failed=False, summary=lambda: "ok")

    def fake_extract(records, spec, cache, *, cluster, **_):
        got["extract"] = cluster
        return report

    def fake_score_to_rows(source, bundle, *, cluster, **_):
        got["score"] = cluster
        return report, []

    def fake_run_ablation(grid, *, cluster, **_):
        got["ablate"] = cluster
        return report

    monkeypatch.setattr(extract_package, "extract", fake_extract)
    monkeypatch.setattr(
        extract_package, "extractor_options", lambda path, names: {"handcrafted": {}}
    )
    monkeypatch.setattr("aigvqa.pipeline.manifest.read_manifest", lambda *a, **k: [])
    monkeypatch.setattr(score, "score_to_rows", fake_score_to_rows)
    monkeypatch.setattr(bundle, "load_bundle", lambda path: SimpleNamespace(label_names=["mos"]))
    monkeypatch.setattr(ablate, "run_ablation", fake_run_ablation)
    monkeypatch.setattr(ablate, "load_grid", lambda path: SimpleNamespace(cluster={}, source=path))
    (tmp_path / "m.csv").write_text("video_id,path\n")
    return got


def test_every_verb_receives_the_same_spec_from_the_same_flags(received, tmp_path):
    manifest = str(tmp_path / "m.csv")
    assert (
        main(
            [
                "extract",
                manifest,
                "--extractors",
                "handcrafted",
                "--cache",
                str(tmp_path / "c.h5"),
                *FLAGS,
            ]
        )
        == 0
    )
    assert (
        main(
            ["score", manifest, "--model", str(tmp_path), "--out", str(tmp_path / "s.csv"), *FLAGS]
        )
        == 0
    )
    assert main(["ablate", str(tmp_path / "grid.toml"), *FLAGS]) == 0
    want = ClusterSpec(scheduler="tcp://head:8786", gpus=True, n_workers=3, torch_threads=2)
    assert received == {"extract": want, "score": want, "ablate": want}


def test_without_flags_every_verb_receives_the_default_spec(received, tmp_path):
    manifest = str(tmp_path / "m.csv")
    main(["extract", manifest, "--extractors", "handcrafted", "--cache", str(tmp_path / "c.h5")])
    main(["score", manifest, "--model", str(tmp_path), "--out", str(tmp_path / "s.csv")])
    main(["ablate", str(tmp_path / "grid.toml")])
    assert received == {"extract": ClusterSpec(), "score": ClusterSpec(), "ablate": ClusterSpec()}


def test_ablate_flags_override_the_grids_cluster_table_and_fall_back_to_it(
    received, tmp_path, monkeypatch
):
    import aigvqa.pipeline.evaluation.ablate as ablate

    monkeypatch.setattr(
        ablate,
        "load_grid",
        lambda path: SimpleNamespace(cluster={"workers": 2, "torch_threads": 4}, source=path),
    )
    main(["ablate", str(tmp_path / "grid.toml"), "--workers", "5"])
    assert received["ablate"] == ClusterSpec(n_workers=5, torch_threads=4)


def test_flat_keywords_become_a_spec_and_cannot_contradict_one():
    assert as_cluster_spec(n_workers=2, torch_threads=3) == ClusterSpec(
        n_workers=2, torch_threads=3
    )
    spec = ClusterSpec(n_workers=4)
    assert as_cluster_spec(spec, n_workers=None, torch_threads=1) is spec  # defaults: no clash
    with pytest.raises(ClusterError, match="not both"):
        as_cluster_spec(spec, torch_threads=2)


def test_score_and_ablate_take_a_cluster_spec(tmp_path):
    from aigvqa.pipeline.evaluation.ablate import GridError, grid_cluster_spec
    from aigvqa.pipeline.model.score import score

    assert grid_cluster_spec(
        {"workers": 2, "scheduler": None}, {"torch_threads": 3}
    ) == ClusterSpec(n_workers=2, torch_threads=3)
    with pytest.raises(GridError, match="unknown keys"):
        grid_cluster_spec({"nworkers": 2})
    with pytest.raises(ClusterError, match="not both"):  # checked at the edge, before any work
        score([], tmp_path / "no-model", tmp_path / "s.csv", cluster=ClusterSpec(), n_workers=2)


def _heartbeat_running(dask_worker) -> bool:
    return dask_worker.periodic_callbacks["heartbeat"].is_running()


def test_a_cluster_we_started_stops_its_workers_heartbeats_before_it_closes(monkeypatch):
    """A heartbeat in flight while the scheduler drops a closing worker's connections is
    logged at ERROR with tracebacks (a race seen under load); open_cluster stops them first."""
    import aigvqa.pipeline.extract.cluster as cluster_module

    seen: dict[str, dict] = {}
    real_stop = cluster_module.stop_heartbeats

    def recording_stop(client):
        seen["before"] = client.run(_heartbeat_running)
        real_stop(client)
        seen["after"] = client.run(_heartbeat_running)

    monkeypatch.setattr(cluster_module, "stop_heartbeats", recording_stop)
    spec = ClusterSpec(n_workers=1, dashboard_address=None)
    with cluster_module.open_cluster(spec) as client:
        assert client.submit(sum, [1, 2]).result() == 3
    assert list(seen["before"].values()) == [True]
    assert list(seen["after"].values()) == [False]
