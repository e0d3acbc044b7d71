"""The HDF5 feature cache: round trips, prompt-keyed expansion, atomicity, provenance, resume."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from aigvqa.cache import (
    ALL_EXTRACTORS,
    RANDOM_INIT,
    Failure,
    FeatureCache,
    GroupData,
    merge,
    merge_shards,
    store,
    write_shard,
)
from aigvqa.errors import CacheError, ProvenanceMismatchError

SHA = "sha256:" + "ab" * 32


def prov(arch="ViT-B-32", weights=SHA, batch_size=4, extractor="clip-frames"):
    return {
        "extractor": extractor,
        "config": {"arch": arch, "batch_size": batch_size},
        "view": {"kind": "keyframes", "n": 8, "size": 224},
        "weights": weights,
    }


def ragged(rng, ids, dim=6, t_max=7):
    return [
        rng.standard_normal((int(rng.integers(1, t_max + 1)), dim)).astype(np.float32) * 3
        for _ in ids
    ]


def video_rows(ids, prompt_of=lambda v: f"p-{v}"):
    return [
        {
            "video_id": v,
            "path": f"{v}.mp4",
            "prompt": f"text of {prompt_of(v)}",
            "prompt_id": prompt_of(v),
            "labels": {"mos": float(i) / 2},
            "groups": {"prompt": prompt_of(v), "generator": f"g{i % 3}"},
        }
        for i, v in enumerate(ids)
    ]


def frames_shard(path, ids, values, provenance=None, failures=(), videos=None, dtype="float16"):
    group = GroupData("clip-frames", "video", ids, values, provenance=provenance or prov())
    return write_shard(
        path, [group], failures, video_rows(ids) if videos is None else videos, dtype=dtype
    )


def snapshot(cache_path):
    """Everything a reader sees, for before/after comparisons."""
    cache = FeatureCache(cache_path)
    groups = cache.groups()
    data = cache.read(groups) if groups else None
    return {
        "groups": groups,
        "ids": {g: cache.ids(g) for g in groups},
        "arrays": {} if data is None else {k: v.copy() for k, v in data.arrays.items()},
        "failures": cache.failures(),
        "videos": cache.videos(),
    }


def assert_same_snapshot(a, b):
    assert a["groups"] == b["groups"] and a["ids"] == b["ids"]
    assert a["failures"] == b["failures"] and a["videos"] == b["videos"]
    for k in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][k], b["arrays"][k])


def no_partials(directory):
    return not list(directory.glob(".*.partial"))


# -- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_ragged_round_trip_exact_up_to_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    ids = [f"v{i:02d}" for i in range(12)]
    values = ragged(rng, ids)
    shard_a = frames_shard(tmp_path / "a.h5", ids[:7], values[:7], dtype=dtype)
    shard_b = frames_shard(tmp_path / "b.h5", ids[7:], values[7:], dtype=dtype)
    report = merge_shards(tmp_path / "cache.h5", [shard_b, shard_a])
    assert report.added == {"clip-frames": 12} and report.rewritten

    data = FeatureCache(tmp_path / "cache.h5").read("clip-frames")
    assert data.ids == sorted(ids)  # ids=None: sorted, whatever the merge order
    t_max = max(len(v) for v in values)
    arr = data.arrays["clip-frames"]
    assert arr.dtype == np.float32 and arr.shape == (12, t_max, 6)
    for row, vid in enumerate(data.ids):
        v = values[ids.index(vid)]
        expected = v.astype(np.float16).astype(np.float32) if dtype == "float16" else v
        assert data.lengths["clip-frames"][row] == len(v)
        np.testing.assert_array_equal(arr[row, : len(v)], expected)
        assert not arr[row, len(v) :].any()  # zero padding after the length
    if dtype == "float16":  # float16 really rounds: the test above can fail
        assert any(not np.array_equal(v, v.astype(np.float16).astype(np.float32)) for v in values)
    assert FeatureCache(tmp_path / "cache.h5").group_info("clip-frames").dtype == dtype


def test_read_given_ids_keeps_their_order_and_repeats(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"v{i}" for i in range(6)]
    values = ragged(rng, ids)
    merge_shards(tmp_path / "c.h5", [frames_shard(tmp_path / "s.h5", ids, values, dtype="float32")])
    data = FeatureCache(tmp_path / "c.h5").read(["clip-frames"], ids=["v4", "v0", "v4"])
    assert data.ids == ["v4", "v0", "v4"]
    np.testing.assert_array_equal(data.arrays["clip-frames"][0, : len(values[4])], values[4])
    np.testing.assert_array_equal(data.arrays["clip-frames"][1, : len(values[0])], values[0])
    np.testing.assert_array_equal(data.arrays["clip-frames"][2], data.arrays["clip-frames"][0])
    np.testing.assert_array_equal(data.labels["mos"], [2.0, 0.0, 2.0])
    assert list(data.groups["generator"]) == ["g1", "g0", "g1"]


def test_vector_rows_are_sequences_of_length_one(tmp_path):
    ids = ["a", "b"]
    write_shard(
        tmp_path / "s.h5",
        [GroupData("pooled", "video", ids, [np.ones(4), np.zeros(4)], provenance=prov())],
    )
    data = FeatureCache(tmp_path / "s.h5").read("pooled")  # a shard is a readable cache too
    assert data.arrays["pooled"].shape == (2, 1, 4)
    np.testing.assert_array_equal(data.lengths["pooled"], [1, 1])


def test_prompt_keyed_text_features_stored_once_and_expanded(tmp_path):
    rng = np.random.default_rng(2)
    ids = [f"v{i}" for i in range(10)]
    videos = video_rows(ids, prompt_of=lambda v: "prompt-0")
    tokens, pooled = rng.standard_normal((77, 8)), rng.standard_normal(8)
    mask = np.arange(77) < 12
    text = GroupData(
        "clip-text",
        "prompt",
        ["prompt-0"],
        [tokens],
        extras={"pooled": [pooled], "mask": [mask]},
        provenance=prov(extractor="clip-text"),
    )
    frames = GroupData("clip-frames", "video", ids, ragged(rng, ids), provenance=prov())
    shard = write_shard(tmp_path / "s.h5", [text, frames], [], videos)
    merge_shards(tmp_path / "c.h5", [shard])
    cache = FeatureCache(tmp_path / "c.h5")
    info = cache.group_info("clip-text")
    assert (info.n, info.t_max, info.dim, info.keyed_by) == (1, 77, 8, "prompt")
    assert info.extras == {"mask": [77], "pooled": [8]}
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["clip-text/values"].shape[0] == 1  # stored once, not 10 times

    data = cache.read(["clip-frames", "clip-text"])
    assert data.ids == sorted(ids)
    assert data.arrays["clip-text"].shape == (10, 77, 8)
    expected = tokens.astype(np.float16).astype(np.float32)
    for row in range(10):
        np.testing.assert_array_equal(data.arrays["clip-text"][row], expected)
    np.testing.assert_array_equal(
        data.extras["clip-text/pooled"],
        np.tile(pooled.astype(np.float16).astype(np.float32), (10, 1)),
    )
    assert (
        data.extras["clip-text/mask"].dtype == bool and data.extras["clip-text/mask"].sum() == 120
    )


def test_labels_missing_are_nan(tmp_path):
    ids = ["a", "b"]
    videos = [
        {"video_id": "a", "path": "a.mp4", "labels": {"mos": 3.0, "alignment": 1.0}},
        {"video_id": "b", "path": "b.mp4", "labels": {"mos": 4.0}},
    ]
    merge_shards(
        tmp_path / "c.h5",
        [frames_shard(tmp_path / "s.h5", ids, [np.ones((2, 3))] * 2, videos=videos)],
    )
    data = FeatureCache(tmp_path / "c.h5").read("clip-frames")
    np.testing.assert_array_equal(data.labels["mos"], [3.0, 4.0])
    assert data.labels["alignment"][0] == 1.0 and np.isnan(data.labels["alignment"][1])


# -- atomicity ----------------------------------------------------------------------------
def test_crash_mid_shard_leaves_previous_shard_and_no_partial(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    path = frames_shard(tmp_path / "s.h5", ["a"], ragged(rng, ["a"]))
    before = snapshot(path)
    real = store._write_group
    calls = []

    def crash_after_first_group(f, prepared, compression):
        calls.append(prepared.name)
        real(f, prepared, compression)
        raise KeyboardInterrupt("killed mid-shard")

    monkeypatch.setattr(store, "_write_group", crash_after_first_group)
    groups = [
        GroupData("clip-frames", "video", ["b"], ragged(rng, ["b"]), provenance=prov()),
        GroupData("other", "video", ["b"], ragged(rng, ["b"]), provenance=prov()),
    ]
    with pytest.raises(KeyboardInterrupt):
        write_shard(path, groups, [], video_rows(["b"]))
    with pytest.raises(KeyboardInterrupt):
        write_shard(tmp_path / "new.h5", groups, [], video_rows(["b"]))
    assert calls == ["clip-frames", "clip-frames"]
    assert_same_snapshot(before, snapshot(path))
    assert not (tmp_path / "new.h5").exists()
    assert no_partials(tmp_path)


def test_crash_mid_merge_keeps_previous_cache_and_remerge_succeeds(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    ids = [f"v{i}" for i in range(9)]
    values = ragged(rng, ids)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ids[:3], values[:3])])
    before = snapshot(cache)
    shards = [
        frames_shard(tmp_path / "s1.h5", ids[3:6], values[3:6]),
        frames_shard(tmp_path / "s2.h5", ids[6:], values[6:]),
    ]

    real = merge._write_videos
    calls = []

    class Killed(BaseException):
        """Stands for a kill: not an error a damaged file raises."""

    def crash_half_way(*args):  # the groups are written, the videos table not yet
        calls.append(1)
        raise Killed("simulated kill half-way through the merge")

    monkeypatch.setattr(merge, "_write_videos", crash_half_way)
    with pytest.raises(Killed, match="half-way"):
        merge_shards(cache, shards)
    assert len(calls) == 1
    assert_same_snapshot(before, snapshot(cache))
    assert no_partials(tmp_path)

    monkeypatch.setattr(merge, "_write_videos", real)
    report = merge_shards(cache, shards)
    assert report.added == {"clip-frames": 6}
    assert FeatureCache(cache).ids("clip-frames") == ids


def test_leftover_partial_from_killed_merge_is_ignored_then_removed(tmp_path):
    rng = np.random.default_rng(5)
    ids = ["a", "b", "c", "d"]
    values = ragged(rng, ids)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ids[:2], values[:2])])
    # a kill after the temp file was half written: a truncated copy of an HDF5 file
    leftover = tmp_path / ".c.h5.4242-deadbeef.partial"
    leftover.write_bytes(cache.read_bytes()[:1000])
    assert FeatureCache(cache).ids("clip-frames") == ["a", "b"]  # readers never see it

    report = merge_shards(cache, [frames_shard(tmp_path / "s1.h5", ids[2:], values[2:])])
    assert report.stale_temps_removed == 1 and not leftover.exists()
    assert FeatureCache(cache).ids("clip-frames") == ids


def test_reader_holding_the_file_open_does_not_block_a_merge(tmp_path):
    rng = np.random.default_rng(6)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ["a"], ragged(rng, ["a"]))])
    with h5py.File(cache, "r") as reader:  # default HDF5 locking, as another tool would open it
        merge_shards(cache, [frames_shard(tmp_path / "s1.h5", ["b"], ragged(rng, ["b"]))])
        assert reader["clip-frames/values"].shape[0] == 1  # still the file it opened
    assert FeatureCache(cache).ids("clip-frames") == ["a", "b"]


# -- merge semantics ----------------------------------------------------------------------
def test_resume_skips_ids_already_cached(tmp_path):
    rng = np.random.default_rng(7)
    ids = [f"v{i}" for i in range(8)]
    first, second = ragged(rng, ids), ragged(rng, ids)
    cache = tmp_path / "c.h5"
    rows = video_rows(ids)
    shard0 = frames_shard(tmp_path / "s0.h5", ids[:5], first[:5], dtype="float32", videos=rows[:5])
    merge_shards(cache, [shard0])
    # a re-run recomputed v3, v4 (different numbers) together with new ids
    shard1 = frames_shard(tmp_path / "s1.h5", ids[3:], second[3:], dtype="float32", videos=rows[3:])
    report = merge_shards(cache, [shard1])
    assert report.added == {"clip-frames": 3} and report.skipped == {"clip-frames": 2}
    data = FeatureCache(cache).read("clip-frames", ids=["v3", "v7"])
    np.testing.assert_array_equal(
        data.arrays["clip-frames"][0, : len(first[3])], first[3]
    )  # kept the first
    np.testing.assert_array_equal(data.arrays["clip-frames"][1, : len(second[7])], second[7])

    again = merge_shards(cache, [shard0])  # killed after the rename, before shards were deleted
    assert again.added == {"clip-frames": 0} and again.skipped == {"clip-frames": 5}
    assert not again.rewritten


def test_overwrite_replaces_rows_and_mismatched_groups(tmp_path):
    rng = np.random.default_rng(8)
    ids = ["a", "b", "c"]
    first, second = ragged(rng, ids), ragged(rng, ids)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ids, first, dtype="float32")])
    report = merge_shards(
        cache,
        [frames_shard(tmp_path / "s1.h5", ["b"], second[1:2], dtype="float32")],
        overwrite=True,
    )
    assert report.replaced == {"clip-frames": 1} and report.added == {"clip-frames": 0}
    data = FeatureCache(cache).read("clip-frames")
    np.testing.assert_array_equal(data.arrays["clip-frames"][1, : len(second[1])], second[1])
    assert not data.arrays["clip-frames"][1, len(second[1]) :].any()
    assert data.lengths["clip-frames"][1] == len(second[1])

    other = frames_shard(
        tmp_path / "s2.h5", ["z"], second[:1], provenance=prov(arch="ViT-L-14"), dtype="float32"
    )
    report = merge_shards(cache, [other], overwrite=True)
    assert report.groups_replaced == ["clip-frames"]
    cache_view = FeatureCache(cache)
    assert cache_view.ids("clip-frames") == ["z"]
    assert cache_view.group_info("clip-frames").provenance["config"]["arch"] == "ViT-L-14"


def test_mixing_configs_or_weights_is_refused_naming_the_keys(tmp_path):
    rng = np.random.default_rng(9)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ["a"], ragged(rng, ["a"]))])
    before = snapshot(cache)
    bad = frames_shard(
        tmp_path / "s1.h5",
        ["b"],
        ragged(rng, ["b"]),
        provenance=prov(arch="ViT-L-14", weights=RANDOM_INIT),
    )
    with pytest.raises(ProvenanceMismatchError) as err:
        merge_shards(cache, [bad])
    msg = str(err.value)
    assert "config.arch: 'ViT-B-32' vs 'ViT-L-14'" in msg
    assert f"weights: '{SHA}' vs 'RANDOM-INIT'" in msg
    assert "batch_size" not in msg and "view" not in msg  # only what differs
    assert (
        str(cache) in msg
        and str(bad) in msg
        and "--overwrite" in msg
        and "another cache file" in msg
    )
    assert_same_snapshot(before, snapshot(cache))

    f32 = frames_shard(tmp_path / "s2.h5", ["c"], ragged(rng, ["c"]), dtype="float32")
    with pytest.raises(ProvenanceMismatchError, match=r"stored\.dtype: 'float16' vs 'float32'"):
        merge_shards(cache, [f32])


def test_shards_of_one_batch_must_agree(tmp_path):
    rng = np.random.default_rng(10)
    a = frames_shard(tmp_path / "a.h5", ["a"], ragged(rng, ["a"]))
    b = frames_shard(tmp_path / "b.h5", ["b"], ragged(rng, ["b"]), provenance=prov(arch="RN50"))
    with pytest.raises(ProvenanceMismatchError) as err:
        merge_shards(tmp_path / "c.h5", [a, b])
    assert (
        "config.arch: 'ViT-B-32' vs 'RN50'" in str(err.value)
        and str(a) in str(err.value)
        and str(b) in str(err.value)
    )
    assert not (tmp_path / "c.h5").exists()


def test_resume_with_another_batch_size_is_allowed(tmp_path):
    rng = np.random.default_rng(14)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "a.h5", ["a"], ragged(rng, ["a"]))])
    report = merge_shards(
        cache,
        [
            frames_shard(
                tmp_path / "b.h5", ["b"], ragged(rng, ["b"]), provenance=prov(batch_size=64)
            )
        ],
    )
    assert report.added == {"clip-frames": 1}
    assert (
        FeatureCache(cache).group_info("clip-frames").provenance["config"]["batch_size"] == 4
    )  # first rows' record


def test_batch_merge_rewrites_the_cache_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    shards = [frames_shard(tmp_path / f"s{i}.h5", [f"v{i}"], ragged(rng, ["x"])) for i in range(6)]
    published = []
    real = merge.publish
    monkeypatch.setattr(
        merge, "publish", lambda tmp, final: (published.append(final), real(tmp, final))
    )
    report = merge_shards(tmp_path / "c.h5", shards, remove_shards=True)
    assert published == [tmp_path / "c.h5"]
    assert report.added == {"clip-frames": 6}
    assert not any(s.exists() for s in shards)


def test_later_longer_sequences_grow_t_max_and_keep_earlier_rows(tmp_path):
    short = [np.full((2, 3), 1.0), np.full((1, 3), 2.0)]
    long = [np.full((9, 3), 3.0)]
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ["a", "b"], short)])
    merge_shards(cache, [frames_shard(tmp_path / "s1.h5", ["c"], long)])
    data = FeatureCache(cache).read("clip-frames")
    assert data.arrays["clip-frames"].shape == (3, 9, 3)
    np.testing.assert_array_equal(data.lengths["clip-frames"], [2, 1, 9])
    assert (data.arrays["clip-frames"][0, :2] == 1).all() and not data.arrays["clip-frames"][
        0, 2:
    ].any()
    assert (data.arrays["clip-frames"][2] == 3).all()


def test_videos_table_latest_row_wins(tmp_path):
    cache = tmp_path / "c.h5"
    rows = video_rows(["a"])
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ["a"], [np.ones((1, 2))], videos=rows)])
    fixed = [dict(rows[0], labels={"mos": 4.5})]
    report = merge_shards(cache, [write_shard(tmp_path / "s1.h5", [], [], fixed)])
    assert report.videos_updated == 1
    assert FeatureCache(cache).read("clip-frames").labels["mos"][0] == 4.5


# -- failures -----------------------------------------------------------------------------
def test_source_order_is_an_optional_videos_column_that_later_rows_keep(tmp_path):
    rng = np.random.default_rng(0)
    cache = tmp_path / "c.h5"
    rows = video_rows(["b", "a", "c"])
    for i, row in enumerate(rows):
        row["source_order"] = i  # the order of an imported file, not the ids' order
    merge_shards(
        cache, [frames_shard(tmp_path / "s1.h5", ["b", "a", "c"], ragged(rng, "bac"), videos=rows)]
    )
    videos = FeatureCache(cache).videos()
    assert {v["video_id"]: v["source_order"] for v in videos} == {"b": 0, "a": 1, "c": 2}
    with h5py.File(cache) as f:
        assert f["videos/source_order"].dtype == np.int64
    # a later row for "a" without a source order (e.g. from extract) keeps the known one
    later = video_rows(["a", "d"])
    merge_shards(
        cache, [frames_shard(tmp_path / "s2.h5", ["a", "d"], ragged(rng, "ad"), videos=later)]
    )
    orders = {v["video_id"]: v.get("source_order") for v in FeatureCache(cache).videos()}
    assert orders == {"b": 0, "a": 1, "c": 2, "d": None}
    # a cache that never had the column reads as before: no key at all
    plain = tmp_path / "plain.h5"
    merge_shards(plain, [frames_shard(tmp_path / "s3.h5", ["x"], ragged(rng, "x"))])
    assert "source_order" not in FeatureCache(plain).videos()[0]
    with h5py.File(plain) as f:
        assert "source_order" not in f["videos"]


def test_failures_round_trip_latest_wins_and_success_clears(tmp_path):
    rng = np.random.default_rng(12)
    cache = tmp_path / "c.h5"
    fails = [
        Failure("x", "clip-frames", "DecodeError: truncated"),
        ("y", ALL_EXTRACTORS, "cannot open"),
        {"id": "z", "extractor": "clip-frames", "error": "OOM"},
    ]
    merge_shards(
        cache, [frames_shard(tmp_path / "s0.h5", ["a"], ragged(rng, ["a"]), failures=fails)]
    )
    assert FeatureCache(cache).failures() == [
        Failure("x", "clip-frames", "DecodeError: truncated"),
        Failure("y", "*", "cannot open"),
        Failure("z", "clip-frames", "OOM"),
    ]
    # later: x fails again with another error, y and z succeed
    report = merge_shards(
        cache,
        [
            frames_shard(
                tmp_path / "s1.h5",
                ["y", "z"],
                ragged(rng, ["y", "z"]),
                failures=[Failure("x", "clip-frames", "DecodeError: second try")],
            )
        ],
    )
    assert FeatureCache(cache).failures() == [
        Failure("x", "clip-frames", "DecodeError: second try")
    ]
    assert report.failures_cleared == 2 and report.failures_added == 0
    # a failure reported for something already cached does not hide it
    merge_shards(
        cache, [write_shard(tmp_path / "s2.h5", [], [Failure("a", "clip-frames", "flaky")])]
    )
    assert [f.id for f in FeatureCache(cache).failures()] == ["x"]


def test_text_features_of_its_prompt_do_not_hide_a_video_that_failed_to_decode(tmp_path):
    # stage one encodes prompts in their own tasks, so the prompt of an undecodable video
    # lands in the prompt-keyed group; the video's "*" failure row must survive that
    rng = np.random.default_rng(14)
    cache = tmp_path / "c.h5"
    good_and_bad = video_rows(["good", "bad"])
    merge_shards(
        cache,
        [
            frames_shard(
                tmp_path / "v.h5",
                ["good"],
                ragged(rng, ["good"]),
                videos=good_and_bad,
                failures=[Failure("bad", ALL_EXTRACTORS, "DecodeError: not a video")],
            )
        ],
    )
    text = GroupData(
        "clip-text",
        "prompt",
        ["p-good", "p-bad"],
        ragged(rng, ["p-good", "p-bad"]),
        provenance=prov(extractor="clip-text"),
    )
    merge_shards(cache, [write_shard(tmp_path / "t.h5", [text], [], good_and_bad)])
    assert FeatureCache(cache).failures() == [Failure("bad", "*", "DecodeError: not a video")]


# -- errors -------------------------------------------------------------------------------
def test_missing_group_and_ids_name_the_cache_and_the_fix(tmp_path):
    rng = np.random.default_rng(13)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [frames_shard(tmp_path / "s0.h5", ["a", "b"], ragged(rng, ["a", "b"]))])
    with pytest.raises(CacheError) as err:
        FeatureCache(cache).read(["clip-frames", "slowfast"])
    msg = str(err.value)
    assert (
        str(cache) in msg and "slowfast" in msg and "aigvqa extract" in msg and "clip-frames" in msg
    )
    with pytest.raises(CacheError) as err:
        FeatureCache(cache).read("clip-frames", ids=["a", "ghost"])
    assert (
        "ghost" in str(err.value)
        and "1 of 2" in str(err.value)
        and "aigvqa extract" in str(err.value)
    )
    with pytest.raises(CacheError, match="slowfast"):
        FeatureCache(cache).group_info("slowfast")


def test_missing_or_foreign_file_is_a_cache_error(tmp_path):
    with pytest.raises(CacheError, match="does not exist"):
        FeatureCache(tmp_path / "none.h5").groups()
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        FeatureCache(tmp_path / "text.h5").groups()
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(CacheError, match="not an aigvqa cache"):
        FeatureCache(tmp_path / "foreign.h5").groups()


def test_float16_overflow_is_refused_float32_accepted(tmp_path):
    big = [np.array([[1e6, 0.5]])]
    with pytest.raises(CacheError, match="float32"):
        write_shard(
            tmp_path / "s.h5",
            [GroupData("handcrafted", "video", ["a"], big, provenance={"weights": None})],
        )
    assert not (tmp_path / "s.h5").exists()
    write_shard(
        tmp_path / "s.h5",
        [GroupData("handcrafted", "video", ["a"], big, provenance={"weights": None})],
        dtype={"handcrafted": "float32"},
    )
    assert FeatureCache(tmp_path / "s.h5").read("handcrafted").arrays["handcrafted"][0, 0, 0] == 1e6


@pytest.mark.parametrize(
    "group, message",
    [
        (GroupData("videos", "video", ["a"], [np.ones((1, 2))]), "invalid group name"),
        (GroupData("g", "video", ["a", "a"], [np.ones((1, 2))] * 2), "duplicate ids"),
        (GroupData("g", "clip", ["a"], [np.ones((1, 2))]), "keyed_by"),
        (GroupData("g", "video", ["a", "b"], [np.ones((1, 2)), np.ones((1, 3))]), "feature widths"),
        (
            GroupData(
                "g",
                "video",
                ["a", "b"],
                [np.ones((1, 2))] * 2,
                extras={"m": [np.ones(2), np.ones(3)]},
            ),
            "one shape",
        ),
    ],
)
def test_bad_group_data_is_rejected_before_writing(tmp_path, group, message):
    with pytest.raises(ValueError, match=message):
        write_shard(tmp_path / "s.h5", [group])
    assert not (tmp_path / "s.h5").exists() and no_partials(tmp_path)


def test_random_init_constant_matches_extractors():
    from aigvqa.extractors.base import RANDOM_INIT as EXTRACTOR_RANDOM_INIT

    assert RANDOM_INIT == EXTRACTOR_RANDOM_INIT


def test_cache_package_does_not_import_torch():
    code = "import sys, aigvqa.cache; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
