"""Cache integrity (format 2): checksums verified on read, damaged files and refused groups
are CacheErrors naming the file and group, ``verify`` reads everything, old (format 1)
caches still read and are upgraded by the next merge; the layout outside readers rely on
(sorted rows, typed /videos columns, column names, dimension scales)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from aigvqa.cache import FORMAT_VERSION, Failure, FeatureCache, GroupData, merge_shards, write_shard
from aigvqa.cache.schema import strings_digest
from aigvqa.errors import CacheError, ProvenanceMismatchError

SHA = "sha256:" + "ab" * 32
FIXTURE_V1 = Path(__file__).parent / "data" / "cache-format1.h5.gz"


def prov(extractor="clip-frames", weights=SHA, path="/mnt/a/ViT-B-32.pt"):
    return {
        "extractor": extractor,
        "config": {"arch": "ViT-B-32", "weights": path},
        "view": None,
        "weights": weights,
    }


def small_cache(path: Path, seed: int = 0) -> Path:
    """A cache with a float32 video-keyed group with column names, a float16 prompt-keyed
    group with extras, labels, groups, an extra video field and failures."""
    rng = np.random.default_rng(seed)
    ids = [f"v{i:02d}" for i in range(10)]
    hand = GroupData(
        "handcrafted",
        "video",
        ids,
        [rng.standard_normal((int(rng.integers(1, 5)), 6)).astype(np.float32) * 1e3 for _ in ids],
        provenance={
            "extractor": "handcrafted",
            "config": {"max_frames": 64},
            "view": None,
            "weights": None,
        },
        columns=[f"stat{i}" for i in range(6)],
    )
    text = GroupData(
        "clip-text",
        "prompt",
        ["p0", "p1"],
        [rng.standard_normal((5, 4)) for _ in range(2)],
        extras={
            "pooled": [rng.standard_normal(4) for _ in range(2)],
            "mask": [np.arange(5) < 3, np.arange(5) < 4],
        },
        provenance=prov("clip-text"),
    )
    videos = [
        {
            "video_id": v,
            "path": f"/data/{v}.mp4",
            "prompt": f"prompt {i % 2}",
            "prompt_id": f"p{i % 2}",
            "labels": {"mos": 1.0 + i / 4, **({"alignment": float(i)} if i % 3 else {})},
            "groups": {"generator": f"g{i % 3}"},
            "source_order": 9 - i,
        }
        for i, v in enumerate(ids)
    ]
    shard = write_shard(
        path.with_name(path.name + ".shard.h5"),
        [hand, text],
        [Failure("bad", "*", "DecodeError: not a video")],
        videos,
        dtype={"handcrafted": "float32"},
    )
    merge_shards(path, [shard], remove_shards=True)
    return path


def everything(path: Path):
    """All a reader can get from a cache, as comparable plain values."""
    cache = FeatureCache(path)
    groups = cache.groups()
    data = cache.read(groups)
    return (
        groups,
        [cache.group_info(g).to_dict() for g in groups],
        [cache.ids(g) for g in groups],
        cache.failures(),
        cache.videos(),
        data.ids,
        {k: v.tobytes() for k, v in {**data.arrays, **data.extras}.items()},
        {k: v.tobytes() for k, v in data.lengths.items()},
        {k: v.tobytes() for k, v in data.labels.items()},
        {k: list(v) for k, v in data.groups.items()},
    )


def v1_fixture(tmp_path: Path) -> Path:
    out = tmp_path / "old.h5"
    with gzip.open(FIXTURE_V1) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def chunk_spans(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of every stored chunk of every chunked numeric dataset: the raw data."""
    spans = []
    with h5py.File(path, "r") as f:

        def visit(_name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks is not None and obj.dtype.kind != "O":
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    spans.append((info.byte_offset, info.size))

        f.visititems(visit)
    return spans


def flipped(src: Path, dst: Path, position: int, xor: int) -> Path:
    data = bytearray(src.read_bytes())
    data[position] ^= xor
    dst.write_bytes(bytes(data))
    return dst


# -- checksums ----------------------------------------------------------------------------
def test_byte_flips_read_identical_values_or_a_cache_error(tmp_path):
    """Seeded fuzz: every flip, in raw chunks or anywhere in the file, either changes
    nothing a reader sees or raises CacheError (which ``verify`` also reports) -- never a
    raw h5py traceback, never silently changed values. The old format changed values
    silently (47953.27 -> -4.5e-05) or raised raw OSErrors."""
    rng = np.random.default_rng(2024)
    outcomes = {"same": 0, "error": 0}
    for seed in (0, 1):
        cache = small_cache(tmp_path / f"c{seed}.h5", seed)
        reference = everything(cache)
        size = cache.stat().st_size
        spans = chunk_spans(cache)
        positions = [int(rng.integers(0, size)) for _ in range(20)]
        for _ in range(15):  # raw data chunks: values, lengths, extras, label columns
            offset, length = spans[int(rng.integers(0, len(spans)))]
            positions.append(offset + int(rng.integers(0, length)))
        for position in positions:
            damaged = flipped(cache, tmp_path / "damaged.h5", position, int(rng.integers(1, 256)))
            try:
                got = everything(damaged)
            except CacheError as err:
                outcomes["error"] += 1
                assert str(damaged) in str(err)
                assert not FeatureCache(damaged).verify().ok, (
                    f"verify missed the flip at {position}"
                )
                continue
            assert got == reference, f"a flip at byte {position} changed what a reader sees"
            outcomes["same"] += 1
    assert outcomes["error"] >= 20  # the flips really hit data, not only padding


def test_damaged_values_chunk_names_file_and_group_and_verify_names_the_dataset(tmp_path):
    cache = small_cache(tmp_path / "c.h5")
    with h5py.File(cache, "r") as f:
        info = f["handcrafted/values"].id.get_chunk_info(0)
    damaged = flipped(cache, tmp_path / "d.h5", info.byte_offset + 5, 0x40)
    with pytest.raises(CacheError) as err:
        FeatureCache(damaged).read("handcrafted")
    assert str(damaged) in str(err.value) and "'handcrafted'" in str(err.value)
    assert "--verify" in str(err.value)
    report = FeatureCache(damaged).verify()
    assert not report.ok and any("handcrafted/values" in p for p in report.problems)
    assert "DAMAGED" in report.summary()
    # the undamaged group still reads
    assert FeatureCache(damaged).read("clip-text").arrays["clip-text"].shape == (10, 5, 4)


def test_damaged_id_string_and_heap_attribute_are_caught(tmp_path):
    """Variable-length strings live in HDF5's global heap, which has no checksum: the
    sha256 attribute of each utf-8 dataset, and the sealed digest of each object's
    attributes, catch what Fletcher-32 cannot."""
    cache = small_cache(tmp_path / "c.h5")
    raw = cache.read_bytes()
    at = raw.index(b"/data/v03.mp4")  # a path in /videos
    with pytest.raises(CacheError, match="videos"):
        FeatureCache(flipped(cache, tmp_path / "d1.h5", at + 8, 0x01)).videos()
    at = raw.index(b'"max_frames": 64')  # the handcrafted group's provenance attribute
    with pytest.raises(CacheError, match="handcrafted"):
        FeatureCache(flipped(cache, tmp_path / "d2.h5", at + 14, 0x01)).group_info("handcrafted")


def test_verify_passes_a_sound_file(tmp_path):
    report = FeatureCache(small_cache(tmp_path / "c.h5")).verify()
    assert report.ok and report.checksums and report.datasets > 10 and not report.unverified
    assert "OK" in report.summary()


def test_verify_reports_nan_and_inf_values_per_group(tmp_path):
    # review of issue 11 (minor): `info --verify` passed a cache full of NaN / inf
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(4)]
    values[1][2, 0], values[3][0, 1] = np.nan, np.inf
    group = GroupData("handcrafted", "video", ["a", "b", "c", "d"], values, provenance=prov())
    shard = write_shard(tmp_path / "s.h5", [group], [], [], dtype="float32")
    merge_shards(tmp_path / "c.h5", [shard], remove_shards=True)
    report = FeatureCache(tmp_path / "c.h5").verify()
    assert report.nonfinite == ["group 'handcrafted': NaN or inf in 2 of 4 rows (b, d)"]
    assert "NaN or inf" in report.summary() and "(b, d)" in report.summary()
    assert not FeatureCache(small_cache(tmp_path / "ok.h5")).verify().nonfinite


# -- groups a writer never produces ----------------------------------------------------------
def test_duplicate_ids_and_zero_lengths_are_refused_on_read(tmp_path):
    old = v1_fixture(tmp_path)  # format 1: no checksums, so another tool may have edited it
    with h5py.File(old, "r+") as f:
        ids = f["clip-frames/ids"]
        ids[1] = ids.asstr()[0]
    with pytest.raises(CacheError) as err:
        FeatureCache(old).read("clip-frames")
    message = str(err.value)
    assert str(old) in message and "'clip-frames'" in message and "duplicate ids v3" in message

    old = v1_fixture(tmp_path)
    with h5py.File(old, "r+") as f:
        f["handcrafted/lengths"][2] = 0
        bad = f["handcrafted/ids"].asstr()[2]
    with pytest.raises(CacheError) as err:
        FeatureCache(old).read("handcrafted")
    message = str(err.value)
    assert str(old) in message and "'handcrafted'" in message and f"{bad} (0)" in message
    assert not FeatureCache(old).verify().ok
    provenance = {"extractor": "handcrafted", "config": {}, "view": None, "weights": None}
    more = GroupData("handcrafted", "video", ["v7"], [np.ones((2, 14))], provenance=provenance)
    with pytest.raises(CacheError, match="handcrafted"):  # a merge refuses it as well
        merge_shards(old, [write_shard(tmp_path / "s.h5", [more], dtype="float32")])


def test_duplicate_ids_with_a_matching_checksum_are_refused_too(tmp_path):
    cache = small_cache(tmp_path / "c.h5")
    with h5py.File(cache, "r+") as f:  # a tool that rewrites ids and their checksum
        ids = f["handcrafted/ids"]
        values = list(ids.asstr()[()])
        values[4] = values[3]
        ids[...] = np.array(values, dtype=object)
        ids.attrs["sha256"] = strings_digest(values)
    with pytest.raises(CacheError, match="duplicate ids v03"):
        FeatureCache(cache).ids("handcrafted")


def test_zero_length_rows_are_refused_on_write(tmp_path):
    group = GroupData("g", "video", ["a", "b"], [np.ones((2, 3)), np.ones((0, 3))])
    with pytest.raises(ValueError, match=r"\['b'\] have no time steps"):
        write_shard(tmp_path / "s.h5", [group])
    assert not (tmp_path / "s.h5").exists()


# -- format 1 caches ---------------------------------------------------------------------------
def test_format_1_cache_still_reads_is_marked_unverified_and_is_upgraded_by_a_merge(tmp_path):
    old = v1_fixture(tmp_path)
    cache = FeatureCache(old)
    before = everything(old)
    assert cache.describe()["format_version"] == 1 and not cache.describe()["checksums"]
    assert "UNVERIFIED" in cache.summary()
    report = cache.verify()
    assert report.ok and not report.checksums and "UNVERIFIED" in report.summary()
    videos = {v["video_id"]: v for v in cache.videos()}
    assert (
        videos["v1"]["labels"] == {"mos": 4.0, "alignment": 1.5}
        and videos["v1"]["groups"]["generator"] == "g0"
    )

    rng = np.random.default_rng(5)  # a new video whose id sorts between the old ones
    new = GroupData(
        "clip-frames",
        "video",
        ["v25"],
        [rng.standard_normal((2, 8)).astype(np.float32)],
        provenance=cache.group_info("clip-frames").provenance,
    )
    merged = merge_shards(
        old, [write_shard(tmp_path / "s.h5", [new], videos=[{"video_id": "v25"}])]
    )
    assert merged.upgraded_from == 1 and "checksums added" in str(merged)
    after = FeatureCache(old)
    assert after.describe()["format_version"] == FORMAT_VERSION and after.describe()["checksums"]
    assert after.verify().ok
    assert after.ids("clip-frames") == ["v0", "v1", "v2", "v25", "v3", "v4"]  # now sorted
    assert after.failures() == sorted(before[3], key=lambda f: (f.id, f.extractor))
    assert {v["video_id"]: v for v in after.videos()}["v1"] == videos["v1"]
    reread = after.read(["clip-frames", "clip-text", "handcrafted"], ids=["v0", "v1", "v2", "v3"])
    (tmp_path / "pristine").mkdir()
    pristine = FeatureCache(v1_fixture(tmp_path / "pristine"))
    expected = pristine.read(
        ["clip-frames", "clip-text", "handcrafted"], ids=["v0", "v1", "v2", "v3"]
    )
    for key in expected.arrays:
        np.testing.assert_array_equal(reread.arrays[key], expected.arrays[key])
    for key in expected.extras:
        np.testing.assert_array_equal(reread.extras[key], expected.extras[key])


# -- layout for outside readers ----------------------------------------------------------------
def test_rows_are_sorted_by_id_across_interleaving_merges(tmp_path):
    rng = np.random.default_rng(3)
    cache = tmp_path / "c.h5"
    batches = [["m", "c", "x"], ["a", "n"], ["z", "b"]]
    values = {}
    for i, ids in enumerate(batches):
        rows = [rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in ids]
        values.update(zip(ids, rows))
        shard = write_shard(
            tmp_path / f"s{i}.h5",
            [GroupData("g", "video", ids, rows, provenance=prov())],
            videos=[{"video_id": v} for v in ids],
            dtype="float32",
        )
        with h5py.File(shard, "r") as f:
            assert list(f["g/ids"].asstr()[()]) == sorted(ids)  # a shard too
        merge_shards(cache, [shard])
    with h5py.File(cache, "r") as f:
        ids = list(f["g/ids"].asstr()[()])
        assert ids == sorted(values) and list(f["videos/video_id"].asstr()[()]) == sorted(values)
        for row, vid in enumerate(ids):  # row i of values is ids[i]
            n = f["g/lengths"][row]
            np.testing.assert_array_equal(f["g/values"][row, :n], values[vid])
        assert "sorted" in f.attrs["row_order"] and "video_id" in f.attrs["join"]


def test_labels_groups_and_extra_fields_are_typed_columns_and_round_trip(tmp_path):
    rows = [
        {
            "video_id": "b",
            "labels": {"mos": 2.5},
            "groups": {"generator": "g1"},
            "source_order": 1,
            "fps": 8.0,
            "split": "test",
            "real": True,
        },
        {
            "video_id": "a",
            "labels": {"mos": 1.5, "alignment": 3.0},
            "source_order": 0,
            "split": "train",
            "real": False,
        },
        {"video_id": "c", "labels": {}, "groups": {"generator": "g2"}},
    ]
    group = GroupData("g", "video", ["a", "b", "c"], [np.ones((1, 2))] * 3, provenance=prov())
    shard = write_shard(tmp_path / "s.h5", [group], videos=rows)
    cache = tmp_path / "c.h5"
    merge_shards(cache, [shard])
    merge_shards(
        cache, [write_shard(tmp_path / "s2.h5", [], videos=[{"video_id": "d", "source_order": 7}])]
    )
    with h5py.File(cache, "r") as f:
        v = f["videos"]
        np.testing.assert_array_equal(v["label.mos"][()], [1.5, 2.5, np.nan, np.nan])
        assert v["label.mos"].dtype == np.float64 and list(v["group.generator"].asstr()[()]) == [
            "",
            "g1",
            "g2",
            "",
        ]
        assert v["source_order"].dtype == np.float64  # c lacks it: NaN marks the gap
        assert list(v["split"].asstr()[()]) == ["train", "test", "", ""]
    got = {r["video_id"]: r for r in FeatureCache(cache).videos()}
    assert got["a"]["source_order"] == 0 and isinstance(got["a"]["source_order"], int)
    assert got["d"]["source_order"] == 7 and "source_order" not in got["c"]
    assert got["b"]["fps"] == 8.0 and got["b"]["split"] == "test" and got["b"]["real"] is True
    assert got["a"]["real"] is False and got["a"]["labels"] == {"mos": 1.5, "alignment": 3.0}
    assert got["c"]["labels"] == {} and got["c"]["groups"] == {"generator": "g2"}
    with pytest.raises(ValueError, match="mixes strings and numbers"):
        write_shard(
            tmp_path / "bad.h5",
            [],
            videos=[{"video_id": "x", "k": 1}, {"video_id": "y", "k": "one"}],
        )
    with pytest.raises(ValueError, match="not a number or a string"):
        write_shard(tmp_path / "bad.h5", [], videos=[{"video_id": "x", "k": [1, 2]}])


def test_columns_and_dimension_scales_name_every_axis(tmp_path):
    cache = small_cache(tmp_path / "c.h5")
    assert FeatureCache(cache).group_info("handcrafted").columns == [f"stat{i}" for i in range(6)]
    assert FeatureCache(cache).group_info("clip-text").columns is None
    with h5py.File(cache, "r") as f:
        values = f["handcrafted/values"]
        assert [values.dims[i][0].name.rsplit("/", 1)[1] for i in range(3)] == [
            "ids",
            "step",
            "feature",
        ]
        assert list(f["handcrafted/feature"].asstr()[()]) == [f"stat{i}" for i in range(6)]
        assert f["clip-text/mask"].dims[1][0].name.endswith("mask_dim1")
        assert f["videos/label.mos"].dims[0][0].name == "/videos/video_id"
    with pytest.raises(ValueError, match="columns must be 3 distinct"):
        write_shard(
            tmp_path / "s.h5",
            [GroupData("g", "video", ["a"], [np.ones((1, 3))], columns=["x", "y"])],
        )


def test_xarray_sees_named_dimensions(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    cache = small_cache(tmp_path / "c.h5")
    with xr.open_dataset(cache, group="handcrafted", engine="h5netcdf") as ds:
        assert ds["values"].dims == ("ids", "step", "feature")
        assert list(ds["feature"].values) == [f"stat{i}" for i in range(6)]
        assert ds["ids"].values[0] == "v00"
    with xr.open_dataset(cache, group="videos", engine="h5netcdf") as ds:
        assert ds["label.mos"].dims == ("video_id",) and not any(
            d.startswith("phony") for d in ds.dims
        )


# -- provenance: paths are information ---------------------------------------------------------
def test_same_weights_at_another_path_may_join_a_group_other_weights_may_not(tmp_path):
    rng = np.random.default_rng(4)
    cache = tmp_path / "c.h5"

    def shard(name, ids, provenance):
        rows = [rng.standard_normal((2, 3)) for _ in ids]
        return write_shard(
            tmp_path / name, [GroupData("clip-frames", "video", ids, rows, provenance=provenance)]
        )

    merge_shards(cache, [shard("sa.h5", ["a"], prov(path="/mnt/a/ViT-B-32.pt"))])
    report = merge_shards(
        cache, [shard("sb.h5", ["b"], prov(path="/scratch/other/mount/ViT-B-32.pt"))]
    )
    assert report.added == {"clip-frames": 1}
    assert (
        FeatureCache(cache).group_info("clip-frames").provenance["config"]["weights"]
        == "/mnt/a/ViT-B-32.pt"
    )
    with pytest.raises(ProvenanceMismatchError, match="weights: 'sha256:abab"):
        merge_shards(cache, [shard("sc.h5", ["c"], prov(weights="sha256:" + "cd" * 32))])


def test_every_provenance_check_ignores_the_weights_path_but_not_the_weights(tmp_path):
    """extract's up-front check, a bundle's / cross-dataset check: the same checkpoint at
    another path (another mount, --weights vs $AIGVQA_WEIGHTS) is the same features."""
    from aigvqa.pipeline.extract import check_provenance
    from aigvqa.pipeline.training_data import provenance_problems

    cache = tmp_path / "c.h5"
    rows = [np.ones((2, 3))]
    merge_shards(
        cache,
        [
            write_shard(
                tmp_path / "s.h5",
                [
                    GroupData(
                        "clip-frames", "video", ["a"], rows, provenance=prov(path="/mnt/a/w.pt")
                    )
                ],
            )
        ],
    )
    check_provenance(cache, {"clip-frames": prov(path="/home/me/weights/clip-frames/w.pt")})
    with pytest.raises(ProvenanceMismatchError, match="weights"):
        check_provenance(cache, {"clip-frames": prov(weights="sha256:" + "cd" * 32)})
    trained = {"clip-frames": prov(path="/mnt/a/w.pt")}
    assert provenance_problems(trained, {"clip-frames": prov(path=None)}) == []
    assert provenance_problems(trained, {"clip-frames": prov(weights="RANDOM-INIT", path=None)})


def test_the_cache_format_snippets_for_outside_readers_run(tmp_path, monkeypatch):
    """docs/cache-format.md's h5py / xarray snippets, run as written on a cache named feats.h5."""
    import re

    pytest.importorskip("pandas")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cache-format.md").read_text()
    section = doc[doc.index("## For outside readers") :]
    snippets = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:2]
    assert len(snippets) == 2 and "h5py" in snippets[0] and "xarray" in snippets[1]
    cache = small_cache(tmp_path / "feats.h5")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippets[0], "cache-format.md", "exec"), scope)  # noqa: S102 - our own documentation
    table = scope["table"]
    assert list(table.index) == [f"v{i:02d}" for i in range(10)]
    assert (
        "stat0" in table.columns
        and "label.mos" in table.columns
        and table["source_order"].iloc[0] == 9
    )
    expected = FeatureCache(cache).read("handcrafted")
    pooled = [
        expected.arrays["handcrafted"][i, :n].mean(0)
        for i, n in enumerate(expected.lengths["handcrafted"])
    ]
    np.testing.assert_allclose(table[[f"stat{i}" for i in range(6)]].to_numpy(), pooled, rtol=1e-5)
    if all(__import__("importlib").util.find_spec(m) for m in ("xarray", "h5netcdf")):
        exec(compile(snippets[1], "cache-format.md", "exec"), scope)  # noqa: S102
        assert scope["ds"]["values"].dims == ("ids", "step", "feature")
        scope["ds"].close()
