"""`aigvqa info CACHE`: a readable summary of what a cache holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigvqa.cache import FORMAT_VERSION, Failure, GroupData, merge_shards, write_shard
from aigvqa.pipeline.cli import main

SHA = "sha256:" + "cd" * 32


@pytest.fixture()
def small_cache(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"vid{i}" for i in range(4)]
    frames = GroupData(
        "clip-frames",
        "video",
        ids,
        [rng.standard_normal((t, 16)) for t in (3, 8, 8, 5)],
        provenance={
            "extractor": "clip-frames",
            "config": {"arch": "ViT-B-32"},
            "view": {"n": 8, "size": 224},
            "weights": "RANDOM-INIT",
        },
    )
    text = GroupData(
        "clip-text",
        "prompt",
        ["p0", "p1"],
        [rng.standard_normal((77, 16)) for _ in range(2)],
        extras={"pooled": [rng.standard_normal(16) for _ in range(2)]},
        provenance={
            "extractor": "clip-text",
            "config": {"arch": "ViT-B-32"},
            "view": None,
            "weights": SHA,
        },
    )
    videos = [
        {
            "video_id": v,
            "path": f"{v}.mp4",
            "prompt": "a dog",
            "prompt_id": f"p{i % 2}",
            "labels": {"mos": 1.5 + i},
            "groups": {"generator": "gen-a"},
        }
        for i, v in enumerate(ids)
    ]
    failures = [Failure("vid9", "clip-frames", "DecodeError: moov atom not found\nTraceback ...")]
    shard = write_shard(tmp_path / "shard.h5", [frames, text], failures, videos)
    cache = tmp_path / "cache.h5"
    merge_shards(cache, [shard])
    return cache


def test_info_prints_groups_shapes_and_random_init_warning(small_cache, capsys):
    assert main(["info", str(small_cache)]) == 0
    out = capsys.readouterr().out
    assert str(small_cache) in out and f"format {FORMAT_VERSION}, checksummed" in out
    frames_line = next(
        line
        for line in out.splitlines()
        if line.strip().startswith("clip-frames") and "video" in line
    )
    assert frames_line.split()[:6] == ["clip-frames", "video", "4", "8", "16", "float16"]
    assert "3/6.5/8" in frames_line  # lengths min/median/max
    text_line = next(
        line
        for line in out.splitlines()
        if line.strip().startswith("clip-text") and "prompt" in line
    )
    assert text_line.split()[:6] == ["clip-text", "prompt", "2", "77", "16", "float16"]
    assert "sha256:cdcd" in text_line
    assert "clip-frames: WEIGHTS: RANDOM-INIT (not a real model)" in out
    assert "clip-text: WEIGHTS" not in out
    assert "arch=ViT-B-32" in out and "pooled (16,)" in out
    assert "videos:   4" in out
    assert "mos" in out and "[1.5, 4.5]" in out
    assert "failures: 1" in out and "vid9" in out and "moov atom not found" in out
    assert "Traceback" not in out  # first line of each error only


def test_info_json_is_machine_readable(small_cache, capsys):
    assert main(["info", "--json", str(small_cache)]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {g["name"]: g for g in data["groups"]}
    assert (
        by_name["clip-frames"]["random_init"] is True
        and by_name["clip-text"]["random_init"] is False
    )
    assert (
        by_name["clip-text"]["n"],
        by_name["clip-text"]["t_max"],
        by_name["clip-text"]["dim"],
    ) == (2, 77, 16)
    assert by_name["clip-text"]["provenance"]["weights"] == SHA
    assert data["videos"] == 4 and data["failures"]["count"] == 1
    assert data["labels"]["mos"] == {"count": 4, "min": 1.5, "max": 4.5}


def test_info_on_missing_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "aigvqa info: error:" in err and str(missing) in err and "aigvqa extract" in err


def test_info_verify_passes_a_sound_cache_and_names_what_is_damaged(small_cache, tmp_path, capsys):
    import h5py

    assert main(["info", "--verify", str(small_cache)]) == 0
    assert "OK" in capsys.readouterr().out
    with h5py.File(small_cache, "r") as f:
        offset = f["clip-frames/values"].id.get_chunk_info(0).byte_offset
    data = bytearray(small_cache.read_bytes())
    data[offset + 3] ^= 0x10
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(bytes(data))
    assert main(["info", "--verify", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "clip-frames/values" in out and "Traceback" not in out
    assert main(["info", "--verify", "--json", str(damaged)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and any("clip-frames/values" in p for p in report["problems"])
    assert main(["info", str(damaged)]) == 0  # the summary itself reads no values


def test_info_piped_into_head_ends_quietly(tmp_path):
    """`aigvqa info cache | head -1`: the reader closes the pipe early; no BrokenPipeError
    traceback, exit status 0. (The output is made far longer than a pipe's buffer, so the
    writer meets the closed pipe whatever the timing.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    failures = [
        Failure(f"vid{i:05d}", "clip-frames", "DecodeError: " + "x" * 120) for i in range(3000)
    ]
    shard = write_shard(tmp_path / "shard.h5", [], failures, [])
    cache = tmp_path / "cache.h5"
    merge_shards(cache, [shard])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    writer = subprocess.Popen(
        [sys.executable, "-m", "aigvqa.pipeline.cli", "info", str(cache), "--failures", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    head = subprocess.Popen(["head", "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()  # only head reads it now
    first_line, _ = head.communicate(timeout=120)
    err = writer.stderr.read().decode()
    writer.stderr.close()
    assert writer.wait(timeout=120) == 0, err
    assert first_line.strip()
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
