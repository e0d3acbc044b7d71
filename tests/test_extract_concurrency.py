"""Two stage-one runs on one cache: the second waits for the first (it says for whom), then
finds everything cached. Nothing aborts, nothing is computed twice, every id lands once.

The runs share one LocalCluster of 2 workers (threads of this process, each calling
``extract(client=...)``), which makes a trial cost about a second; one more test runs two
CLI processes with their own clusters, as a user would (about 7 s on 2 cores).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _extract_helpers import MeanColour, moving_clips, two_worker_client

from aigvqa.cache.store import FeatureCache
from aigvqa.pipeline.extract import extract, shard_dir_for
from aigvqa.pipeline.records import VideoRecord


@pytest.fixture(scope="module")
def client():
    with two_worker_client() as c:
        yield c


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[VideoRecord]:
    return moving_clips(tmp_path_factory.mktemp("videos"), count=6, n_frames=8)


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("trial", range(3))
def test_a_second_run_on_one_cache_waits_for_the_first_and_finds_everything_cached(
    client, records, tmp_path, capfd, trial
):
    cache, log = tmp_path / "feats.h5", tmp_path / "calls.log"
    reports, errors = {}, []

    def run(name):
        try:
            # chunks of one video, merged only at the end: while the first run goes, its
            # landed shards lie in the shard folder, where the second run would find them
            reports[name] = extract(
                records,
                [MeanColour(log=str(log), sleep=0.15)],
                cache,
                client=client,
                chunk_size=1,
                merge_every=1000,
                progress=False,
                decode_workers=0,
            )
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append((name, err))

    first = threading.Thread(target=run, args=("first",))
    first.start()
    deadline = time.monotonic() + 60
    # the second starts once the first has shards on disk and more videos to go
    while not list(shard_dir_for(cache).glob("shard-video-*.h5")) and time.monotonic() < deadline:
        time.sleep(0.02)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(120)
    second.join(120)

    assert not errors, errors
    assert reports["first"].succeeded == len(records)
    assert reports["second"].skipped == len(records)  # it waited, then had nothing to do
    assert reports["second"].succeeded == reports["second"].resumed == 0
    assert calls(log) == len(records)  # every video computed once, by the first run
    ids = FeatureCache(cache).ids("mean-colour")
    assert sorted(ids) == sorted(r.video_id for r in records)  # each exactly once
    assert not shard_dir_for(cache).exists()
    err = capfd.readouterr().err
    assert f"pid {os.getpid()} on {socket.gethostname()}" in err
    assert "waiting" in err


def run_cli_pair(tmp_path: Path, records) -> list[subprocess.CompletedProcess]:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "video_id,path,mos\n" + "".join(f"{r.video_id},{r.path},1\n" for r in records)
    )
    cache = tmp_path / "feats.h5"
    command = [
        sys.executable,
        "-m",
        "aigvqa.pipeline.cli",
        "extract",
        str(manifest),
        "--cache",
        str(cache),
        "--extractors",
        "handcrafted",
        "--workers",
        "1",
        "--chunk-size",
        "1",
        "--no-progress",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    procs = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return done


def test_two_cli_runs_on_one_cache_both_exit_cleanly_and_every_id_lands_once(records, tmp_path):
    done = run_cli_pair(tmp_path, records)
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    ids = FeatureCache(tmp_path / "feats.h5").ids("handcrafted")
    assert sorted(ids) == sorted(r.video_id for r in records)
    assert sum("waiting" in proc.stderr for proc in done) <= 1
