"""Stage one under faults: dying workers, a video that crashes every worker it meets, a
client killed mid-run (hard, by signal, and by Ctrl-C) and resumed.

The test extractor (``_extract_helpers.MeanColour``) counts its forward calls in a log file
(one line per call, its item count: 4 key frames a video), since the work happens in worker
processes, and dies on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _extract_helpers import MeanColour, moving_clips, two_worker_client

from aigvqa.cache.schema import ALL_EXTRACTORS
from aigvqa.cache.store import FeatureCache
from aigvqa.extractors.decode import write_video
from aigvqa.pipeline.extract import extract, shard_dir_for
from aigvqa.pipeline.extract import run as run_module
from aigvqa.pipeline.records import VideoRecord

TESTS_DIR = Path(__file__).resolve().parent


def calls(log: Path) -> int:
    """Videos computed: forward calls log their item counts, and batches mix videos (a
    call may hold several videos' key frames), so count items, 4 key frames a video."""
    items = sum(int(line) for line in log.read_text().split()) if log.exists() else 0
    assert items % 4 == 0, (
        f"a video's key frames were split between logged and unlogged calls: {items}"
    )
    return items // 4


@pytest.fixture(scope="module")
def client():
    """2 worker processes; a task is given up after its second worker death, so the
    poison-video test needs 4 deaths instead of 8."""
    with two_worker_client({"distributed.scheduler.allowed-failures": 1}) as c:
        yield c


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[VideoRecord]:
    return moving_clips(tmp_path_factory.mktemp("videos"), count=8, n_frames=10)


def test_a_worker_dying_mid_run_is_retried_and_every_id_lands_once(client, records, tmp_path):
    cache, marker = tmp_path / "feats.h5", tmp_path / "killed"
    report = extract(
        records[:6],
        [MeanColour(kill_once=str(marker))],
        cache,
        client=client,
        chunk_size=2,
        progress=False,
    )
    assert marker.exists()  # a worker really died
    ids = FeatureCache(cache).ids("mean-colour")
    assert sorted(ids) == [r.video_id for r in records[:6]] and len(ids) == len(set(ids))
    assert FeatureCache(cache).failures() == []
    assert (report.succeeded, report.failed) == (6, 0)


def test_a_video_that_kills_every_worker_fails_alone(client, records, tmp_path):
    black = write_video(tmp_path / "black.mp4", np.zeros((6, 32, 48, 3), np.uint8), 8)
    recs = records[:3] + [VideoRecord("black", black)]
    cache = tmp_path / "feats.h5"
    report = extract(
        recs, [MeanColour(kill_on_black=True)], cache, client=client, chunk_size=4, progress=False
    )
    reader = FeatureCache(cache)
    assert sorted(reader.ids("mean-colour")) == ["v0", "v1", "v2"]
    [failure] = reader.failures()
    assert (failure.id, failure.extractor) == ("black", ALL_EXTRACTORS)
    assert "KilledWorker" in failure.error
    assert (report.succeeded, report.failed) == (3, 1)


def run_until_killed(cache: str, log: str, video_dir: str) -> None:
    """The killed run (in a subprocess): its own 1-worker LocalCluster, slow chunks of 2."""
    recs = [VideoRecord(p.stem, p) for p in sorted(Path(video_dir).glob("v*.mp4"))]
    extract(
        recs,
        [MeanColour(log=log, sleep=0.4)],
        cache,
        n_workers=1,
        chunk_size=2,
        progress=False,
        dashboard_address=":0",
    )


def landed_ids(cache: Path) -> set[str]:
    """Video ids whose features are on disk: merged into the cache or in a finished shard."""
    found: set[str] = set()
    sources = sorted(shard_dir_for(cache).glob("shard-*.h5")) + ([cache] if cache.exists() else [])
    for path in sources:
        reader = FeatureCache(path)
        if "mean-colour" in reader.groups():
            found.update(reader.ids("mean-colour"))
    return found


@pytest.mark.slow  # a subprocess starting its own cluster: 6-12 s
def test_a_killed_run_resumes_without_recomputing_and_gives_identical_features(
    client, records, tmp_path
):
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    video_dir = records[0].path.parent
    script = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "import test_extract_faults as t\n"
        "if __name__ == '__main__':\n"
        f"    t.run_until_killed({str(cache)!r}, {str(log)!r}, {str(video_dir)!r})\n"
    )
    (tmp_path / "killable.py").write_text(script)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "killable.py")],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not landed_ids(cache) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the client, its scheduler and its workers
        _, err = proc.communicate(timeout=30)
    landed = landed_ids(cache)
    assert 0 < len(landed) < len(records), f"the run was not killed mid-way: {err.decode()[-2000:]}"

    log.unlink(missing_ok=True)
    report = extract(records, [MeanColour(log=str(log))], cache, client=client, progress=False)
    assert calls(log) == len(records) - len(landed)  # finished shards were not recomputed
    assert report.resumed + report.skipped == len(landed)
    assert report.succeeded == len(records) - len(landed)

    reference = tmp_path / "reference.h5"
    extract(records, [MeanColour()], reference, client=client, progress=False)
    got, want = FeatureCache(cache).read("mean-colour"), FeatureCache(reference).read("mean-colour")
    assert got.ids == want.ids == sorted(r.video_id for r in records)
    np.testing.assert_array_equal(got.arrays["mean-colour"], want.arrays["mean-colour"])
    np.testing.assert_array_equal(got.labels["mos"], want.labels["mos"])


def test_ctrl_c_in_the_client_keeps_what_landed_and_the_rerun_does_the_rest(
    client, records, tmp_path, monkeypatch
):
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    landed_futures = []
    original = run_module.ExtractRun._merge_due

    def interrupt_after_two(self, merge_every):
        landed_futures.append(1)
        if len(landed_futures) == 2:
            raise KeyboardInterrupt
        return original(self, merge_every)

    monkeypatch.setattr(run_module.ExtractRun, "_merge_due", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract(
            records,
            [MeanColour(log=str(log), sleep=0.2)],
            cache,
            client=client,
            chunk_size=1,
            progress=False,
        )
    monkeypatch.undo()
    kept = set(FeatureCache(cache).ids("mean-colour"))
    assert len(kept) >= 2  # the two landed videos were merged before the interrupt surfaced

    # Cancelled tasks already running finish anyway (their shards are merged as leftovers);
    # let them, so the count below is exact.
    time.sleep(1.0)
    before = calls(log)
    leftovers = landed_ids(cache) - kept
    report = extract(records, [MeanColour(log=str(log))], cache, client=client, progress=False)
    assert calls(log) - before == len(records) - len(kept) - len(leftovers)
    assert sorted(FeatureCache(cache).ids("mean-colour")) == sorted(r.video_id for r in records)
    assert report.skipped == len(kept)
