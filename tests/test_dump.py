"""`aigvqa dump`: npy and csv exports sorted by id, the cache's dtype kept, prompt-keyed
groups once per prompt (or expanded), column names as CSV headers, failures.csv always."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from aigvqa.cache.store import Failure, GroupData, merge_shards, write_shard
from aigvqa.errors import AigvqaError
from aigvqa.pipeline.dump import dump

RNG = np.random.default_rng(0)
VIDEO_IDS = ["b", "a", "c"]  # stored out of order on purpose: exports sort by id
LENGTHS = {"b": 3, "a": 1, "c": 2}
FRAMES = {v: RNG.normal(size=(LENGTHS[v], 4)).astype(np.float32) for v in VIDEO_IDS}
PROMPTS = {
    "p1": RNG.normal(size=(2, 3)).astype(np.float32),
    "p2": RNG.normal(size=(1, 3)).astype(np.float32),
}
POOLED = {"p1": np.array([1.0, 2.0], np.float32), "p2": np.array([3.0, 4.0], np.float32)}
PROMPT_OF = {"a": "p1", "b": "p1", "c": "p2"}


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache with a video group (ragged [T, 4]), a prompt group with a pooled extra, the
    videos table and one failure."""
    shard = write_shard(
        tmp_path / "shard.h5",
        [
            GroupData(
                "frames",
                "video",
                VIDEO_IDS,
                [FRAMES[v] for v in VIDEO_IDS],
                provenance={"extractor": "frames"},
            ),
            GroupData(
                "text",
                "prompt",
                list(PROMPTS),
                list(PROMPTS.values()),
                extras={"pooled": list(POOLED.values())},
                provenance={"extractor": "text"},
            ),
        ],
        [Failure("d", "*", "DecodeError: d.mp4: the file is empty")],
        [
            {
                "video_id": v,
                "path": f"{v}.mp4",
                "prompt": f"text {PROMPT_OF[v]}",
                "prompt_id": PROMPT_OF[v],
                "labels": {"mos": i + 0.5},
                "groups": {"generator": "g"},
            }
            for i, v in enumerate(VIDEO_IDS)
        ],
        dtype="float32",
    )
    path = tmp_path / "feats.h5"
    merge_shards(path, [shard])
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_npy_dump_writes_values_lengths_ids_and_extras_per_group(cache, tmp_path):
    out = tmp_path / "out"
    report = dump(cache, out, format="npy", chunk_rows=2)  # several chunks per group
    assert report.rows == {"frames": 3, "text": 2}

    ids = np.load(out / "frames.ids.npy")
    assert list(ids) == ["a", "b", "c"]
    values, lengths = np.load(out / "frames.values.npy"), np.load(out / "frames.lengths.npy")
    assert values.shape == (3, 3, 4) and values.dtype == np.float32
    for row, video in enumerate(ids):
        assert lengths[row] == LENGTHS[video]
        np.testing.assert_array_equal(values[row, : lengths[row]], FRAMES[video])
        assert not values[row, lengths[row] :].any()  # zero padding

    # prompt-keyed group: one row per prompt, as stored, and a video -> prompt map
    assert list(np.load(out / "text.ids.npy")) == ["p1", "p2"]
    np.testing.assert_array_equal(np.load(out / "text.pooled.npy"), [POOLED["p1"], POOLED["p2"]])
    text_values = np.load(out / "text.values.npy")
    np.testing.assert_array_equal(text_values[1, :1], PROMPTS["p2"])
    assert {r["video_id"]: r["prompt_id"] for r in read_csv(out / "video_prompt.csv")} == PROMPT_OF
    assert report.keyed_by == {"frames": "video", "text": "prompt"} and report.rows["text"] == 2

    videos = read_csv(out / "videos.csv")
    assert [v["video_id"] for v in videos] == ["a", "b", "c"]
    assert videos[0]["label.mos"] == "1.5" and videos[0]["group.generator"] == "g"
    assert read_csv(out / "failures.csv")[0]["id"] == "d"


def test_csv_dump_mean_pools_valid_steps_and_flatten_leaves_padding_empty(cache, tmp_path):
    dump(cache, tmp_path / "mean", format="csv", groups=["frames"])
    rows = read_csv(tmp_path / "mean" / "frames.csv")
    assert [r["video_id"] for r in rows] == ["a", "b", "c"]
    assert list(rows[0]) == ["video_id", "frames.0", "frames.1", "frames.2", "frames.3"]
    for r in rows:
        got = np.array([float(r[f"frames.{d}"]) for d in range(4)], dtype=np.float32)
        np.testing.assert_array_equal(got, FRAMES[r["video_id"]].mean(axis=0))
    assert not (tmp_path / "mean" / "text.csv").exists()  # only the groups asked for

    dump(cache, tmp_path / "flat", format="csv", groups=["frames"], pool="flatten")
    flat = {r["video_id"]: r for r in read_csv(tmp_path / "flat" / "frames.csv")}
    assert len(flat["a"]) == 1 + 3 * 4
    assert float(flat["b"]["frames.t2.3"]) == FRAMES["b"][2, 3]  # exact float32 round trip
    assert flat["a"]["frames.t1.0"] == ""  # past a's length of 1


def test_dump_refuses_unknown_groups_formats_and_file_outputs(cache, tmp_path):
    with pytest.raises(AigvqaError, match="has no group.*nope.*frames, text"):
        dump(cache, tmp_path / "o", groups=["nope"])
    with pytest.raises(AigvqaError, match="unknown dump format"):
        dump(cache, tmp_path / "o", format="xlsx")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(AigvqaError, match="not a folder"):
        dump(cache, a_file)


def test_cli_dump(cache, tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    assert (
        main(
            [
                "dump",
                str(cache),
                "--format",
                "npy",
                "--out",
                str(tmp_path / "o"),
                "--groups",
                "text",
            ]
        )
        == 0
    )
    assert "text (2 prompt rows)" in capsys.readouterr().out
    assert (tmp_path / "o" / "text.values.npy").exists()
    assert not (tmp_path / "o" / "frames.values.npy").exists()
    assert main(["dump", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_expand_prompts_gives_one_row_per_video(cache, tmp_path):
    out = tmp_path / "out"
    report = dump(cache, out, format="npy", groups=["text"], expand_prompts=True)
    assert report.rows == {"text": 3} and not (out / "video_prompt.csv").exists()
    assert list(np.load(out / "text.ids.npy")) == ["a", "b", "c"]
    np.testing.assert_array_equal(
        np.load(out / "text.pooled.npy"), [POOLED[PROMPT_OF[v]] for v in "abc"]
    )
    dump(cache, tmp_path / "csv", format="csv", groups=["text"])
    rows = read_csv(tmp_path / "csv" / "text.csv")
    assert [r["prompt_id"] for r in rows] == ["p1", "p2"]


def _half_cache(tmp_path: Path, failures=()) -> Path:
    rng = np.random.default_rng(1)
    values = [rng.normal(size=(2, 3)).astype(np.float16) for _ in range(2)]
    group = GroupData(
        "stats",
        "video",
        ["x", "y"],
        values,
        provenance={"extractor": "stats"},
        columns=["sharpness", "noise", "flicker"],
    )
    shard = write_shard(
        tmp_path / "half.shard.h5",
        [group],
        failures,
        [{"video_id": v, "labels": {"mos": 1.0}, "source_order": i} for i, v in enumerate("xy")],
    )
    merge_shards(tmp_path / "half.h5", [shard])
    return tmp_path / "half.h5"


def test_float16_stays_float16_unless_widened_and_columns_name_the_csv_header(tmp_path):
    cache = _half_cache(tmp_path)
    dump(cache, tmp_path / "keep")
    kept = np.load(tmp_path / "keep" / "stats.values.npy")
    assert kept.dtype == np.float16  # was doubled to float32
    assert (tmp_path / "keep" / "stats.columns.txt").read_text().split() == [
        "sharpness",
        "noise",
        "flicker",
    ]
    dump(cache, tmp_path / "wide", dtype="float32")
    wide = np.load(tmp_path / "wide" / "stats.values.npy")
    assert wide.dtype == np.float32 and np.array_equal(wide, kept.astype(np.float32))
    dump(cache, tmp_path / "csv", format="csv", pool="flatten")
    rows = read_csv(tmp_path / "csv" / "stats.csv")
    assert list(rows[0])[:3] == ["video_id", "stats.t0.sharpness", "stats.t0.noise"]
    assert np.float16(rows[0]["stats.t1.flicker"]) == kept[0, 1, 2]  # float16 text round trip
    dump(cache, tmp_path / "mean", format="csv")
    assert list(read_csv(tmp_path / "mean" / "stats.csv")[0]) == [
        "video_id",
        "stats.sharpness",
        "stats.noise",
        "stats.flicker",
    ]
    videos = read_csv(tmp_path / "csv" / "videos.csv")
    assert [v["source_order"] for v in videos] == ["0", "1"]  # extra per-video fields travel too
    with pytest.raises(AigvqaError, match="unknown dump dtype"):
        dump(cache, tmp_path / "o", dtype="int8")


def test_failures_csv_is_always_written(tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    cache = _half_cache(tmp_path)
    dump(cache, tmp_path / "o", format="csv")
    assert (tmp_path / "o" / "failures.csv").read_text().strip() == "id,extractor,error"
    with pytest.raises(SystemExit):
        main(["dump", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "failures.csv (only its header when nothing failed)" in help_text


def test_csv_of_a_sequence_group_keeps_its_pooled_extra_and_help_says_what_it_holds(
    cache, tmp_path, capsys
):
    dump(cache, tmp_path / "csv", format="csv", groups=["text"])
    rows = read_csv(tmp_path / "csv" / "text.csv")
    assert list(rows[0]) == [
        "prompt_id",
        "text.0",
        "text.1",
        "text.2",
        "text.pooled.0",
        "text.pooled.1",
    ]
    for r in rows:
        np.testing.assert_array_equal(
            [float(r["text.pooled.0"]), float(r["text.pooled.1"])], POOLED[r["prompt_id"]]
        )
        np.testing.assert_allclose(
            [float(r[f"text.{d}"]) for d in range(3)], PROMPTS[r["prompt_id"]].mean(axis=0)
        )
    from aigvqa.pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["dump", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "sequence group" in help_text and "pooled" in help_text


def test_column_ranges_the_cache_records_name_the_csv_header_and_columns_txt(tmp_path):
    values = [RNG.normal(size=(2, 4)).astype(np.float32) for _ in VIDEO_IDS]
    group = GroupData(
        "itm",
        "video",
        VIDEO_IDS,
        values,
        provenance={"extractor": "itm", "columns": {"match": [0, 2], "image": [2, 4]}},
    )
    shard = write_shard(tmp_path / "s.h5", [group], [], [], dtype="float32")
    merge_shards(tmp_path / "itm.h5", [shard])
    dump(tmp_path / "itm.h5", tmp_path / "csv", format="csv")
    names = ["itm.match.0", "itm.match.1", "itm.image.0", "itm.image.1"]
    assert list(read_csv(tmp_path / "csv" / "itm.csv")[0]) == ["video_id", *names]
    dump(tmp_path / "itm.h5", tmp_path / "npy", format="npy")
    assert (tmp_path / "npy" / "itm.columns.txt").read_text().split() == [
        n.split(".", 1)[1] for n in names
    ]


# -- jsonl and parquet: the CSV's tables, read back by pandas (issue 23) -------------------
TABLES = ["frames", "text", "video_prompt", "videos", "failures"]


def read_table(path: Path):
    import pandas as pd

    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


def assert_same_values(got, want, name: str) -> None:
    """Same columns in the same order and the same values: numbers compared in ``got``'s
    dtype (the CSV's text is the shortest that reads back in the cache's), missing alike."""
    import pandas as pd

    assert list(got.columns) == list(want.columns), name
    assert len(got) == len(want), name
    for column in got.columns:
        mine, theirs = got[column], want[column]
        if pd.api.types.is_float_dtype(mine):
            theirs = theirs.astype(mine.dtype)
        else:
            mine, theirs = mine.astype(object), theirs.astype(object)
        pd.testing.assert_series_equal(mine, theirs, check_dtype=False, obj=f"{name}.{column}")


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_jsonl_and_parquet_dumps_hold_the_csv_tables(cache, tmp_path, pool):
    for fmt in ("csv", "jsonl", "parquet"):
        report = dump(cache, tmp_path / fmt, format=fmt, pool=pool, chunk_rows=2)
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(
            f"{t}.{fmt}" for t in TABLES
        )
        assert report.rows == {"frames": 3, "text": 2}
    for table in TABLES:
        want = read_table(tmp_path / "csv" / f"{table}.csv")
        for fmt in ("jsonl", "parquet"):
            assert_same_values(read_table(tmp_path / fmt / f"{table}.{fmt}"), want, table)
    frames = read_table(tmp_path / "parquet" / "frames.parquet")
    assert frames["video_id"].tolist() == ["a", "b", "c"]
    if pool == "flatten":  # float32 features stay float32, exact, and empty past a's length
        assert frames["frames.t0.3"].dtype == np.float32
        assert frames.loc[1, "frames.t2.3"] == FRAMES["b"][2, 3]
        assert np.isnan(frames.loc[0, "frames.t1.0"])
    else:  # a mean is taken in float64
        assert frames["frames.0"].dtype == np.float64
    lines = (tmp_path / "jsonl" / "text.jsonl").read_text().splitlines()
    assert list(json.loads(lines[0]))[:2] == [
        "prompt_id",
        "text.0" if pool == "mean" else "text.t0.0",
    ]


def test_parquet_dump_types_float16_as_float32_and_fields_as_theirs(tmp_path):
    cache = _half_cache(tmp_path)
    kept = np.load(dump(cache, tmp_path / "npy").files[0])
    dump(cache, tmp_path / "p", format="parquet", pool="flatten")
    frame = read_table(tmp_path / "p" / "stats.parquet")
    assert frame["stats.t1.flicker"].dtype == np.float32  # float16 widened, exactly
    assert frame.loc[0, "stats.t1.flicker"] == kept[0, 1, 2]
    videos = read_table(tmp_path / "p" / "videos.parquet")
    assert videos["source_order"].tolist() == [0, 1] and videos["label.mos"].dtype == np.float64
    failures = read_table(tmp_path / "p" / "failures.parquet")
    assert list(failures.columns) == ["id", "extractor", "error"] and len(failures) == 0


def test_an_interrupted_parquet_dump_leaves_no_half_written_file(cache, tmp_path, monkeypatch):
    from aigvqa.pipeline import dump as dump_module

    out = tmp_path / "p"
    dump(cache, out, format="parquet", groups=["frames"], chunk_rows=1)
    before = (out / "frames.parquet").read_bytes()
    real_read, calls = dump_module._Group.read, []

    def read_then_die(group, ids):
        calls.append(ids)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first row group was written
        return real_read(group, ids)

    monkeypatch.setattr(dump_module._Group, "read", read_then_die)
    with pytest.raises(KeyboardInterrupt):
        dump(cache, out, format="parquet", groups=["frames"], chunk_rows=1)
    assert (out / "frames.parquet").read_bytes() == before  # the old file, whole
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_parquet_dump_without_pyarrow_says_how_to_install_it(cache, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(AigvqaError, match="pip install pyarrow"):
        dump(cache, tmp_path / "p", format="parquet")
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_cli_dump_jsonl(cache, tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    out = tmp_path / "o"
    assert main(["dump", str(cache), "--format", "jsonl", "--out", str(out)]) == 0
    assert "frames (3 rows)" in capsys.readouterr().out
    assert len(read_table(out / "videos.jsonl")) == 3 and (out / "failures.jsonl").exists()
