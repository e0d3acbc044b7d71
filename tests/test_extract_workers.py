"""Stage one and its workers: weights found before any worker starts (and errors in the
words of the interface used), an existing cluster's workers checked up front (aigvqa
missing or another version: one line), their weights errors naming whose environment
was searched, and a run that leaves nothing registered or loaded on a shared cluster.

"Existing cluster" here is a scheduler in this process with worker processes of its own
(a LocalCluster reached by address, or `dask worker` subprocesses), so nothing needs a
second machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from _extract_helpers import moving_clips, two_worker_client

from aigvqa import __version__
from aigvqa.errors import WeightsNotFoundError
from aigvqa.extractors.base import Extractor
from aigvqa.pipeline.extract import extract
from aigvqa.pipeline.extract.cluster import ClusterError
from aigvqa.pipeline.records import VideoRecord

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class NeedsWeights(Extractor):
    """Mean colour of 2 key frames, from a "checkpoint" found the way the torch families
    find theirs (an explicit path, else ``$AIGVQA_WEIGHTS/needs-weights/w.pt``); with
    ``random_init`` none is needed and the banner is announced."""

    name = "needs-weights"

    def __init__(self, weights=None, random_init=False):
        super().__init__(weights=weights, random_init=random_init)

    def output_dims(self):
        return {"values": 3}

    def view(self):
        from aigvqa.extractors.views import KeyFramesView

        return KeyFramesView(n=2, size=16)

    def resolve_weights(self) -> Path:
        from aigvqa.extractors.weights import resolve_weights

        return resolve_weights(self.name, self._config["weights"], filenames=("w.pt",))

    def find_weights(self):
        return [] if self._config["random_init"] else [self.resolve_weights()]

    def load(self, device="cpu"):
        from aigvqa.extractors.weights import announce_random_init

        if self._config["random_init"]:
            self.weights_identity = announce_random_init(self.name)
        else:
            self.weights_identity = f"file:{self.resolve_weights().name}"

    def forward(self, items):
        return items.reshape(len(items), -1, 3).mean(axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes without $AIGVQA_WEIGHTS in their environment,
    reached by address (as an existing cluster is)."""
    saved = os.environ.pop("AIGVQA_WEIGHTS", None)
    try:
        with two_worker_client() as client:
            yield client
    finally:
        if saved is not None:
            os.environ["AIGVQA_WEIGHTS"] = saved


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[VideoRecord]:
    return moving_clips(tmp_path_factory.mktemp("videos"), count=3, n_frames=6)


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if a cluster is started or joined."""
    from aigvqa.pipeline.extract import cluster as cluster_module

    def refuse(spec):
        raise AssertionError("a cluster was started before the weights were checked")

    monkeypatch.setattr(cluster_module, "open_cluster", refuse)


# -- weights, before any worker starts -------------------------------------------------------
@pytest.mark.usefixtures("isolated_weight_caches", "no_cluster")
def test_missing_weights_are_found_on_the_client_in_the_cli_words(tmp_path, records, capsys):
    from aigvqa.pipeline.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "video_id,path,mos\n" + "".join(f"{r.video_id},{r.path},1\n" for r in records)
    )
    code = main(
        ["extract", str(manifest), "--extractors", "slowfast", "--cache", str(tmp_path / "c.h5")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no weights found for extractor 'slowfast'" in err
    assert "--weights PATH" in err and "--random-init" in err  # what a CLI user types
    assert "weights=<path>" not in err and "random_init=True" not in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("isolated_weight_caches", "no_cluster")
def test_missing_weights_are_found_on_the_client_in_the_python_words(tmp_path, records):
    with pytest.raises(WeightsNotFoundError) as caught:
        extract(records, ["slowfast"], tmp_path / "c.h5", progress=False)
    text = str(caught.value)
    assert "weights=<path>" in text and "random_init=True" in text
    assert "--weights" not in text


def test_a_workers_missing_weights_are_one_clean_error_naming_its_environment(
    cluster, records, tmp_path, capfd
):
    # an existing cluster: the client cannot see what the workers see, the workers check
    with pytest.raises(WeightsNotFoundError) as caught:
        extract(
            records,
            [NeedsWeights()],
            tmp_path / "c.h5",
            scheduler=cluster.scheduler.address,
            progress=False,
        )
    text = str(caught.value)
    assert "by Dask worker tcp://" in text and "its own environment" in text
    assert "$AIGVQA_WEIGHTS is not set in its environment" in text
    assert "the environment the workers start with" in text  # the fix is about the workers
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "Traceback" not in err


# -- what a run leaves on a shared cluster --------------------------------------------------
def test_a_run_on_an_existing_cluster_leaves_no_plugin_and_no_loaded_model(
    cluster, records, tmp_path
):
    def plugins(dask_scheduler):
        return sorted(dask_scheduler.worker_plugins)

    def loaded_models():
        from aigvqa.pipeline.extract import worker

        return len(worker._LOADED)

    before = cluster.run_on_scheduler(plugins)
    report = extract(
        records,
        [NeedsWeights(random_init=True)],
        tmp_path / "c.h5",
        scheduler=cluster.scheduler.address,
        progress=False,
    )
    assert report.succeeded == len(records)
    assert cluster.run_on_scheduler(plugins) == before  # aigvqa-torch-threads is gone again
    assert all(
        "aigvqa-torch-threads" not in names
        for names in cluster.run(lambda dask_worker: list(dask_worker.plugins)).values()
    )
    assert set(cluster.run(loaded_models).values()) == {0}  # models released


def test_a_run_with_a_given_client_unregisters_its_plugin_too(cluster, records, tmp_path):
    extract(
        records, [NeedsWeights(random_init=True)], tmp_path / "c.h5", client=cluster, progress=False
    )
    assert "aigvqa-torch-threads" not in cluster.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.worker_plugins)
    )


def test_random_init_is_announced_once_per_extractor_by_the_client(
    cluster, records, tmp_path, capfd
):
    extract(
        records,
        [NeedsWeights(random_init=True)],
        tmp_path / "c.h5",
        client=cluster,
        progress=False,
        chunk_size=1,
    )
    err = capfd.readouterr().err
    assert err.count("RANDOM-INIT: extractor 'needs-weights'") == 1  # 2 workers loaded it


# -- workers that cannot run aigvqa -------------------------------------------------------------
WORKER = textwrap.dedent("""
    import sys, types
    if sys.argv[1] == "missing":
        sys.modules["aigvqa"] = None  # `import aigvqa` fails, as where it is not installed
    else:
        fake = types.ModuleType("aigvqa")
        fake.__version__ = sys.argv[1]
        sys.modules["aigvqa"] = fake
    from distributed.cli.dask_worker import main
    main([sys.argv[2], "--no-nanny", "--nthreads", "1", "--no-dashboard"])
""")


def test_workers_without_aigvqa_or_with_another_version_are_named_in_one_line(
    records, tmp_path, capfd
):
    from distributed import Client, LocalCluster

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with (
        LocalCluster(
            n_workers=0, processes=False, protocol="tcp", dashboard_address=":0"
        ) as scheduler,
        Client(scheduler) as client,
    ):
        workers = [
            subprocess.Popen(
                [sys.executable, str(script), kind, scheduler.scheduler_address],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for kind in ("missing", "0.0.1")
        ]
        try:
            client.wait_for_workers(2, timeout=120)
            with pytest.raises(ClusterError) as caught:
                extract(
                    records,
                    [NeedsWeights(random_init=True)],
                    tmp_path / "c.h5",
                    scheduler=scheduler.scheduler_address,
                    progress=False,
                )
        finally:
            for proc in workers:
                proc.terminate()
                proc.wait(timeout=30)
    text = str(caught.value)
    assert "\n" not in text
    assert f"2 of 2 Dask worker(s) cannot run this aigvqa {__version__}" in text
    assert "cannot import aigvqa" in text and "(aigvqa 0.0.1)" in text
    assert "shared storage" in text  # and what workers need
    assert "Traceback" not in capfd.readouterr().err


def test_models_load_on_every_worker_with_progress_and_on_one_when_all_is_cached(
    cluster, records, tmp_path, capfd
):
    cache = tmp_path / "c.h5"
    extract(records, [NeedsWeights(random_init=True)], cache, client=cluster)
    first = capfd.readouterr().err
    assert "loading 1 model(s) (needs-weights) on 2 worker(s)" in first
    assert "models loaded in" in first and "merging" in first
    again = extract(records, [NeedsWeights(random_init=True)], cache, client=cluster)
    second = capfd.readouterr().err
    assert again.skipped == len(records)
    assert "on 1 worker(s)" in second  # provenance only: the cache holds everything
