"""Stage one with decode processes and batches across videos (issue 10).

- features are bit-identical for 0, 1 or 2 decode processes, and for batches across
  videos vs each video's items batched alone (and vs the per-video runner);
- a decode process that dies is replaced: its video is decoded again once, then fails
  alone; one that hangs is killed after ``decode_timeout`` and its video fails alone;
  every other id is cached exactly once;
- a forward pass that raises on a batch mixing videos costs only the culprit's row;
- the pool works inside a (daemonic) LocalCluster worker; the dashboard serves pages.

The faults are test views: a view's ``prepare`` runs in the decode process, so a view can
kill or hang exactly the process that decodes a black video. Videos are tiny (48x64).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from _extract_helpers import MeanColour, two_worker_client

from aigvqa.cache.store import FeatureCache
from aigvqa.extractors.base import Extractor
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.views import KeyFramesView
from aigvqa.pipeline.extract import ALL_EXTRACTORS, DecodeSettings, extract, run_video_chunk
from aigvqa.pipeline.records import VideoRecord

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KillsOnBlack(KeyFramesView):
    """Key frames whose preparation ends its process on an all-black frame (every time),
    or on an all-white frame the first time a marker file is created."""

    def __init__(self, n=4, size=32, marker=""):
        super().__init__(n=n, size=size)
        self.marker = marker

    def prepare(self, item, frame_index, frame):
        if frame.max() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if frame.min() == 255 and self.marker:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
                os.kill(os.getpid(), signal.SIGKILL)
            except FileExistsError:
                pass
        return super().prepare(item, frame_index, frame)


class HangsOnBlack(KeyFramesView):
    def prepare(self, item, frame_index, frame):
        if frame.max() == 0:
            time.sleep(600)  # FFmpeg stuck on a bad file
        return super().prepare(item, frame_index, frame)


class WithView(MeanColour):
    """MeanColour over a given view object (the fault views above)."""

    name = "with-view"

    def __init__(self, view=None):
        Extractor.__init__(self, view=view)

    def view(self):
        return self._config["view"]

    def config(self):  # what the worker's model cache keys by: one entry per view kind
        view = self._config["view"]
        return {"view": f"{type(view).__name__}:{view.key}"}


class PoisonedByBlack(MeanColour):
    """A backbone whose forward raises on any batch holding an all-black item."""

    name = "poisoned"

    def forward(self, items):
        if any(item.max() == 0 for item in items):
            raise RuntimeError("NaNs from a black frame")
        return super().forward(items)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    paths = {
        f"v{i}": write_video(folder / f"v{i}.mp4", moving_pattern(10, 48, 64, seed=i), 8)
        for i in range(5)
    }
    paths["black"] = write_video(folder / "black.mp4", np.zeros((6, 48, 64, 3), np.uint8), 8)
    paths["white"] = write_video(folder / "white.mp4", np.full((6, 48, 64, 3), 255, np.uint8), 8)
    paths["empty"] = folder / "empty.mp4"
    paths["empty"].write_bytes(b"")
    return paths


def records(videos, ids):
    return [VideoRecord(i, videos[i]) for i in ids]


def chunk(videos, ids, models, tmp_path, name, **settings):
    shard = tmp_path / f"{name}.h5"
    result = run_video_chunk(records(videos, ids), models, str(shard), **settings)
    return result, shard


# -- features do not depend on who decodes or how items are batched ---------------------------
@pytest.mark.usefixtures("isolated_weight_caches")
def test_features_are_bit_identical_for_0_1_2_decode_processes_and_any_batching(videos):
    """On the CPU in float32 a backbone gives each row the same bits whatever else is in its
    batch: measured for vit-keyframes here (and for convnext-frames and the CLIP image
    tower when this was written: batches of 8, 16 and 24, one torch thread; GEMM kernels
    pick blocking by the batch's row count, yet each output row is reduced in the same
    order). If a backbone ever is not, this test names it."""
    import torch

    from aigvqa.extractors import create_extractor, extract_video
    from aigvqa.pipeline.extract.chunk import compute_chunk
    from aigvqa.pipeline.extract.decode_pool import checkout

    torch.set_num_threads(1)
    vit = create_extractor(
        "vit-keyframes", arch="vit_tiny_patch16_224", random_init=True, n_frames=3, batch_size=8
    )
    vit.load("cpu")
    models = [vit, MeanColour(n=4, batch_size=6)]
    models[1].load()
    ids = ["v0", "v1", "empty", "v2", "v3"]
    recs = records(videos, ids)
    outcomes = {}
    for workers in (0, 1, 2):
        for across in (True, False):
            settings = DecodeSettings(
                decode_workers=workers, decode_threads=1, batch_across_videos=across
            )
            if workers:
                with checkout(settings) as pool:
                    outcomes[workers, across] = compute_chunk(recs, models, settings, pool)
            else:
                outcomes[workers, across] = compute_chunk(recs, models, settings)
    per_video = [extract_video(r.path, models) for r in recs if r.video_id != "empty"]
    reference = outcomes[0, False]
    assert [sorted(errors) for _, errors in reference] == [[], [], [ALL_EXTRACTORS], [], []]
    for key, outcome in outcomes.items():
        assert [errors for _, errors in outcome] == [errors for _, errors in reference], key
        good = [features for features, _ in outcome if features]
        for got, want in zip(good, per_video):
            for name in ("vit-keyframes", "mean-colour"):
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{key} {name}")


def test_one_poisoned_item_in_a_batch_of_several_videos_costs_only_its_video(videos, tmp_path):
    ids = ["v0", "black", "v1", "v2"]
    result, shard = chunk(
        videos, ids, [PoisonedByBlack(n=4, batch_size=16)], tmp_path, "mixed", decode_workers=0
    )
    assert result.done["poisoned"] == ["v0", "v1", "v2"]
    assert [(v, name) for v, name, _ in result.failures] == [("black", "poisoned")]
    assert "NaNs from a black frame" in result.failures[0][2]
    clean, clean_shard = chunk(
        videos,
        ["v0", "v1", "v2"],
        [PoisonedByBlack(n=4, batch_size=16)],
        tmp_path,
        "clean",
        decode_workers=0,
    )
    got = FeatureCache(shard).read("poisoned").arrays["poisoned"]
    want = FeatureCache(clean_shard).read("poisoned").arrays["poisoned"]
    np.testing.assert_array_equal(got, want)


def test_items_larger_than_the_ring_and_a_ring_full_of_later_videos_keep_every_item(
    videos, tmp_path, monkeypatch
):
    """A 4 KiB ring: each 3 KiB key frame waits for the previous one to be copied out (the
    ring wraps around all the time), and 12 KiB frames go through the pipe one at a time."""
    from aigvqa.pipeline.extract import decode_pool

    monkeypatch.setattr(decode_pool, "MIN_RING_BYTES", 4096)
    ids = ["v0", "v1", "v2", "v3", "v4"]
    small, big = MeanColour(n=5, batch_size=3), WithView(KeyFramesView(n=3, size=64))
    want, want_shard = chunk(videos, ids, [small, big], tmp_path, "in-process", decode_workers=0)
    got, got_shard = chunk(
        videos, ids, [small, big], tmp_path, "tiny-ring", decode_workers=2, decode_ahead_bytes=1
    )
    assert got.done == want.done and got.failures == want.failures == []
    for name in ("mean-colour", "with-view"):
        np.testing.assert_array_equal(
            FeatureCache(got_shard).read(name).arrays[name],
            FeatureCache(want_shard).read(name).arrays[name],
        )


# -- faults -----------------------------------------------------------------------------------
def test_a_hanging_decoder_is_killed_after_the_timeout_and_only_its_video_fails(videos, tmp_path):
    ids = ["v0", "black", "v1", "v2"]
    started = time.monotonic()
    result, shard = chunk(
        videos,
        ids,
        [WithView(HangsOnBlack(n=4, size=32))],
        tmp_path,
        "hang",
        decode_workers=2,
        decode_timeout=1.5,
    )
    assert time.monotonic() - started < 60
    assert result.done["with-view"] == ["v0", "v1", "v2"]
    [(video, name, error)] = result.failures
    assert (video, name) == ("black", ALL_EXTRACTORS)
    assert "decoding stalled" in error and "--decode-timeout" in error
    assert sorted(FeatureCache(shard).ids("with-view")) == ["v0", "v1", "v2"]
    # the pool replaced the killed process: the next chunk of this process runs on it
    again, _ = chunk(
        videos,
        ["v3", "v4"],
        [WithView(HangsOnBlack(n=4, size=32))],
        tmp_path,
        "after",
        decode_workers=2,
        decode_timeout=1.5,
    )
    assert again.done["with-view"] == ["v3", "v4"] and again.failures == []


@pytest.fixture(scope="module")
def client():
    with two_worker_client() as c:
        yield c


def test_decode_processes_work_inside_dask_workers_and_give_the_same_cache(
    client, videos, tmp_path
):
    ids = ["v0", "v1", "v2", "v3", "v4", "empty"]
    caches = {}
    for workers in (0, 2):
        caches[workers] = tmp_path / f"feats-{workers}.h5"
        report = extract(
            records(videos, ids),
            [MeanColour(n=4, batch_size=6)],
            caches[workers],
            client=client,
            decode_workers=workers,
            chunk_size=3,
            progress=False,
        )
        assert (report.succeeded, report.failed, report.decode_workers) == (5, 1, workers)
        assert ("2 decode process(es) per worker" in report.summary()) == (workers == 2)
    pids = client.run(
        lambda: sorted(
            p.proc.pid
            for group in __import__(
                "aigvqa.pipeline.extract.decode_pool", fromlist=["_IDLE"]
            )._IDLE.values()
            for pool in group
            for p in pool.slots
        )
    )
    assert any(len(found) == 2 for found in pids.values())  # 2 processes beside a worker
    a, b = FeatureCache(caches[0]).read("mean-colour"), FeatureCache(caches[2]).read("mean-colour")
    assert a.ids == b.ids and len(a.ids) == 5
    np.testing.assert_array_equal(a.arrays["mean-colour"], b.arrays["mean-colour"])
    assert FeatureCache(caches[2]).failures()[0].id == "empty"


def test_a_dying_decode_process_is_retried_once_then_its_video_fails_alone(
    client, videos, tmp_path
):
    marker = tmp_path / "white-killed-once"
    ids = ["v0", "black", "v1", "white", "v2"]
    cache = tmp_path / "feats.h5"
    report = extract(
        records(videos, ids),
        [WithView(KillsOnBlack(marker=str(marker)))],
        cache,
        client=client,
        decode_workers=1,
        chunk_size=5,
        progress=False,
    )
    assert marker.exists()  # the white video's first decode process really died
    reader = FeatureCache(cache)
    stored = reader.ids("with-view")
    assert sorted(stored) == ["v0", "v1", "v2", "white"] and len(stored) == len(set(stored))
    [failure] = reader.failures()
    assert (failure.id, failure.extractor) == ("black", ALL_EXTRACTORS)
    assert "decode process died twice" in failure.error and "-9" in failure.error
    assert (report.succeeded, report.failed) == (4, 1)  # no worker died: no KilledWorker row


def test_default_decode_workers_are_the_cores_a_model_worker_can_spare():
    from aigvqa.pipeline.extract import default_decode_workers

    one_node = {"w1": ("gpu-node", 16)}
    assert default_decode_workers(one_node, 1) == 15
    two = {"w1": ("n", 2), "w2": ("n", 2)}
    assert default_decode_workers(two, 1) == 0  # this machine with its default 2 workers
    assert default_decode_workers({"w1": ("n", 2)}, 1) == 1
    assert default_decode_workers({"w1": ("n", 8), "w2": ("n", 8)}, 2) == 2
    mixed = {"a": ("big", 32), "b": ("small", 4)}
    assert default_decode_workers(mixed, 1) == 3  # one setting for every task: the smallest


def test_the_dashboard_serves_pages(client):
    import urllib.request

    from aigvqa.pipeline.extract.cluster import dashboard_message

    message = dashboard_message(client)
    assert "install bokeh" not in message
    with urllib.request.urlopen(client.dashboard_link, timeout=30) as response:
        assert response.status == 200
        assert b"<html" in response.read().lower()


def test_two_task_threads_share_the_decode_processes_and_give_the_same_features(videos, tmp_path):
    """A worker running 2 chunk tasks at once (a GPU worker overlapping one chunk's tail
    with the next chunk's decoding) gives each task half of its decode processes."""
    from distributed import Client

    from aigvqa.pipeline.extract.cluster import local_cluster

    ids = ["v0", "v1", "v2", "v3", "v4"]
    with (
        local_cluster(1, threads_per_worker=2, dashboard_address=":0") as cluster,
        Client(cluster) as c,
    ):
        report = extract(
            records(videos, ids),
            [MeanColour(n=4, batch_size=6)],
            tmp_path / "two.h5",
            client=c,
            decode_workers=2,
            chunk_size=2,
            progress=False,
        )
        sizes = c.run(
            lambda: sorted(
                pool.n
                for group in __import__(
                    "aigvqa.pipeline.extract.decode_pool", fromlist=["_IDLE"]
                )._IDLE.values()
                for pool in group
            )
        )
    assert report.succeeded == 5
    assert list(sizes.values())[0] in ([1], [1, 1])  # 1 process per task thread, never 2
    reference = run_video_chunk(
        records(videos, ids),
        [MeanColour(n=4, batch_size=6)],
        str(tmp_path / "ref.h5"),
        decode_workers=0,
    )
    assert reference.done["mean-colour"] == ids
    np.testing.assert_array_equal(
        FeatureCache(tmp_path / "two.h5").read("mean-colour").arrays["mean-colour"],
        FeatureCache(tmp_path / "ref.h5").read("mean-colour").arrays["mean-colour"],
    )


class MarksOneVideo(KeyFramesView):
    """Key frames; touches ``marker`` when the decode process starts on the video ``stem``."""

    def __init__(self, marker="", stem=""):
        super().__init__(n=2, size=32)
        self.marker, self.stem = marker, stem

    def items(self, info):
        if Path(info.path).stem == self.stem:
            Path(self.marker).touch()
        return super().items(info)


class WaitsForTheMarker(WithView):
    """Its first forward pass (batch of 1) waits up to 10 s for the view's marker file."""

    name = "waits"
    saw: list = []

    def config(self):
        return {**super().config(), "batch_size": 1}

    def forward(self, items):
        if not self.saw:
            marker, deadline = Path(self._config["view"].marker), time.monotonic() + 10
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.saw.append(marker.exists())
        return super().forward(items)


def test_a_decode_process_starts_the_next_video_while_the_forward_passes_run(videos, tmp_path):
    WaitsForTheMarker.saw = []
    marker = tmp_path / "v1-started"
    result, _ = chunk(
        videos,
        ["v0", "v1"],
        [WaitsForTheMarker(MarksOneVideo(str(marker), "v1"))],
        tmp_path,
        "ahead",
        decode_workers=1,
    )
    assert result.done["waits"] == ["v0", "v1"]
    assert WaitsForTheMarker.saw == [True]
