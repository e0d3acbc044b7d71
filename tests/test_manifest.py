"""Manifest readers: each format, column mapping, path resolution, and bad-row reports."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from aigvqa.errors import AigvqaError, ManifestError
from aigvqa.pipeline.manifest import read_manifest, write_manifest_csv
from aigvqa.pipeline.records import VideoRecord, file_sha256, prompt_key

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A dataset folder with videos/a.mp4, videos/b.mp4, videos/c.gif (contents irrelevant:
    readers only check that files exist)."""
    videos = tmp_path / "data" / "videos"
    videos.mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "c.gif"):
        (videos / name).write_bytes(b"x")
    return tmp_path / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def bad_lines(error: pytest.ExceptionInfo) -> dict[int, str]:
    """{line number: reason} parsed from a ManifestError message."""
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"^  line (\d+): (.*)$", str(error.value), flags=re.M)
    }


# -- generic CSV / JSON-lines ------------------------------------------------------------------


def test_generic_csv_with_default_columns(folder):
    manifest = write(
        folder / "m.csv",
        "video_id,path,prompt,MOS,generator\n"
        "a,videos/a.mp4,a red car,3.5,gen1\n"
        "b,videos/b.mp4,a blue boat,2,gen2\n",
    )
    records = read_manifest(manifest)
    assert records == [
        VideoRecord(
            "a",
            (folder / "videos/a.mp4").resolve(),
            "a red car",
            {"mos": 3.5},
            {"generator": "gen1", "prompt": prompt_key("a red car")},
        ),
        VideoRecord(
            "b",
            (folder / "videos/b.mp4").resolve(),
            "a blue boat",
            {"mos": 2.0},
            {"generator": "gen2", "prompt": prompt_key("a blue boat")},
        ),
    ]
    assert records[0].prompt_id == prompt_key("a red car")


def test_column_mapping_overrides_the_defaults(folder):
    manifest = write(
        folder / "m.csv",
        "clip;file;desc;q1;q2;pid;net\n".replace(";", ",") + "x,videos/a.mp4,hello,1,2,p7,modelA\n",
    )
    (record,) = read_manifest(
        manifest,
        fmt="csv",
        id_col="clip",
        path_col="file",
        prompt_col="desc",
        label_cols={"visual": "q1", "text": "Q2"},
        group_cols={"prompt": "pid", "generator": "net"},
    )
    assert record.video_id == "x" and record.prompt == "hello"
    assert record.labels == {"visual": 1.0, "text": 2.0}
    assert record.groups == {"prompt": "p7", "generator": "modelA"}
    unlabelled = read_manifest(manifest, path_col="file", label_cols=[])
    assert unlabelled[0].labels == {}


def test_mos_prefix_and_group_prefix_columns(folder):
    manifest = write(
        folder / "m.csv",
        "name,mos_spatial,mos_temporal,group_split,prompt_idx\nvideos/a.mp4,1.5,2.5,train,12\n",
    )
    (record,) = read_manifest(manifest)
    # no path column: the name is the file; the labels/groups come from the prefixes
    assert record.video_id == "videos/a.mp4" and record.path == (folder / "videos/a.mp4").resolve()
    assert record.labels == {"spatial": 1.5, "temporal": 2.5}
    assert record.groups == {"prompt": "12", "split": "train"}


def test_id_defaults_to_the_file_stem_without_an_id_column(folder):
    (record,) = read_manifest(write(folder / "m.csv", "file,mos\nvideos/c.gif,4\n"))
    assert record.video_id == "c" and record.labels == {"mos": 4.0}


def test_jsonl_flat_rows(folder):
    rows = [
        {"id": "a", "video": "videos/a.mp4", "caption": "cat", "mos": 3},
        {"id": "b", "video": "videos/b.mp4", "caption": "dog", "mos": "4.5", "model": "m"},
    ]
    manifest = write(folder / "m.jsonl", "\n\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = read_manifest(manifest)
    assert (a.video_id, a.prompt, a.labels) == ("a", "cat", {"mos": 3.0})
    assert (b.labels, b.groups["generator"]) == ({"mos": 4.5}, "m")
    assert b.path == (folder / "videos/b.mp4").resolve()


def test_jsonl_nested_labels_and_groups(folder):
    manifest = write(
        folder / "m.jsonl",
        json.dumps(
            {
                "id": "b",
                "video": "videos/b.mp4",
                "labels": {"alignment": 4.5, "mos": 2},
                "groups": {"generator": "g", "prompt": "p1", "fold": "3"},
            }
        )
        + "\n",
    )
    (record,) = read_manifest(manifest)
    assert record.labels == {"alignment": 4.5, "mos": 2.0}
    assert record.groups == {"generator": "g", "prompt": "p1", "fold": "3"}


# -- dataset formats ---------------------------------------------------------------------------


def test_t2vqa_info_txt(folder):
    for name in ("0001.mp4", "0002.mp4"):
        (folder / "videos" / name).write_bytes(b"x")
    manifest = write(
        folder / "info.txt",
        "name|prompt|mos\n0001.mp4|a dog | running|55.2\n\n0002.mp4|a cat|61\n",
    )
    first, second = read_manifest(manifest, video_dir=folder / "videos")
    assert first.video_id == "0001.mp4" and first.prompt == "a dog|running"
    assert first.labels == {"mos": 55.2} and first.path == (folder / "videos/0001.mp4").resolve()
    assert first.groups == {"prompt": prompt_key("a dog|running")}
    assert second.labels == {"mos": 61.0}


FETV_HEADER = (
    "prompt_idx,video_id,source_model,is_generated,prompt,"
    "static_quality_mean,temporal_quality_mean,alignment_mean,gif_path\n"
)


def test_fetv_keeps_rows_with_a_video(folder, caplog):
    manifest = write(
        folder / "fetv.csv",
        FETV_HEADER
        + "0,video9,cogvideo,1,a person jumps,2.0,2.3333,2.0,\n"
        + "1,video8,cogvideo,1,a horse race,3.3333,3.0,4.0,videos/a.mp4\n"
        + "1,video8,ground-truth,0,a horse race,4.0,4.3333,5.0,videos/b.mp4\n",
    )
    with caplog.at_level("INFO", logger="aigvqa.pipeline.manifest"):
        records = read_manifest(manifest)
    assert [r.video_id for r in records] == ["1-cogvideo", "1-ground-truth"]
    assert records[0].labels == {
        "static_quality": 3.3333,
        "temporal_quality": 3.0,
        "alignment": 4.0,
    }
    assert records[0].groups == {"prompt": "1", "generator": "cogvideo"}
    assert records[1].groups["prompt"] == records[0].groups["prompt"]
    assert "1 of 3 rows have no gif_path" in caplog.text


def test_fetv_real_ratings_table():
    table = SHARED_DATA / "fetv" / "fetv_ratings.csv"
    if not table.is_file():
        pytest.skip(f"FETV ratings not present at {table}")
    records = read_manifest(table)
    assert len(records) == 99  # the GIFs shipped (SOURCE.md): 20 prompts x 5 sources - 1
    assert {r.groups["generator"] for r in records} == {
        "cogvideo",
        "text2video-zero",
        "modelscope-t2v",
        "zeroscope",
        "ground-truth",
    }
    assert len({r.groups["prompt"] for r in records}) == 20
    for record in records:
        assert record.path.is_file() and record.path.suffix == ".gif"
        assert set(record.labels) == {"static_quality", "temporal_quality", "alignment"}
        assert all(1.0 <= v <= 5.0 for v in record.labels.values())


def test_lgvq_style_csv_is_detected(folder):
    manifest = write(
        folder / "lgvq.csv",
        "video_name,prompt,Spatial_Quality,temporal_mos,alignment_score,model\n"
        "videos/a.mp4,a tree,3.1,2.2,4.4,m1\n",
    )
    (record,) = read_manifest(manifest)
    assert record.labels == {"spatial": 3.1, "temporal": 2.2, "alignment": 4.4}
    assert record.groups["generator"] == "m1"


# -- paths -------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_folder_not_the_cwd(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    manifest = write(
        folder / "m.csv", "id,path\na,videos/a.mp4\nc," + str(folder / "videos/c.gif") + "\n"
    )
    a, c = read_manifest(manifest)
    assert a.path == (folder / "videos" / "a.mp4").resolve()
    assert c.path == folder / "videos" / "c.gif"  # absolute paths are kept


def test_check_files_false_accepts_missing_videos(folder):
    manifest = write(folder / "m.csv", "id,path\na,videos/nope.mp4\n")
    with pytest.raises(ManifestError):
        read_manifest(manifest)
    (record,) = read_manifest(manifest, check_files=False)
    assert record.path == (folder / "videos/nope.mp4").resolve()


# -- bad rows ----------------------------------------------------------------------------------


def test_every_bad_row_is_reported_with_its_line_number(folder):
    manifest = write(
        folder / "m.csv",
        "video_id,path,mos\n"  # line 1
        "a,videos/a.mp4,3.0\n"  # 2 good
        "b,videos/missing.mp4,3.0\n"  # 3 missing file
        ",videos/b.mp4,2.0\n"  # 4 empty id
        "a,videos/b.mp4,2.0\n"  # 5 duplicate id
        "c,videos/c.gif,good\n"  # 6 non-numeric MOS
        "d,videos/c.gif,\n"  # 7 empty MOS
        "e,videos/c.gif,nan\n"  # 8 non-finite MOS
        'f,"videos/c.gif",4\n'  # 9 good
        "g,,1\n"  # 10 empty path
        "a,videos/gone.mp4,x\n",  # 11 three problems at once
    )
    with pytest.raises(ManifestError) as error:
        read_manifest(manifest)
    lines = bad_lines(error)
    assert sorted(lines) == [3, 4, 5, 6, 7, 8, 10, 11]
    assert lines[3].startswith("file not found: 'videos/missing.mp4'")
    assert lines[4] == "empty id"
    assert lines[5] == "duplicate id 'a' (first on line 2)"
    assert lines[6] == "non-numeric MOS 'good' in column 'mos'"
    assert lines[7] == "empty MOS in column 'mos'"
    assert lines[8] == "non-finite MOS 'nan' in column 'mos'"
    assert lines[10] == "empty path"
    assert "duplicate id 'a'" in lines[11] and "file not found" in lines[11]
    assert "non-numeric MOS 'x'" in lines[11]
    message = str(error.value)
    assert message.startswith(f"{manifest}: 8 bad row(s)")
    assert "video_dir=" in message  # the fix for missing files
    assert "Traceback" not in message
    assert isinstance(error.value, AigvqaError)


def test_line_numbers_count_multiline_cells(folder):
    manifest = write(
        folder / "m.csv",
        'id,path,prompt,mos\na,videos/a.mp4,"two\nlines",1\nb,videos/b.mp4,p,oops\n',
    )
    with pytest.raises(ManifestError) as error:
        read_manifest(manifest)
    assert list(bad_lines(error)) == [4]


def test_unparsable_lines_are_bad_rows_too(folder):
    jsonl = write(
        folder / "m.jsonl",
        '{"id": "a", "path": "videos/a.mp4"}\n{"id": "b", oops}\n[1, 2]\n',
    )
    with pytest.raises(ManifestError) as error:
        read_manifest(jsonl)
    lines = bad_lines(error)
    assert lines[2].startswith("not valid JSON") and lines[3] == "not a JSON object"

    info = write(folder / "info.txt", "videos/a.mp4|p|1\nonly-a-name\nvideos/b.mp4|q|zz\n")
    with pytest.raises(ManifestError) as error:
        read_manifest(info)
    lines = bad_lines(error)
    assert lines == {
        2: "expected 'name|prompt|mos'",
        3: "non-numeric MOS 'zz' in column 'mos'",
    }


def test_missing_columns_and_files_name_the_fix(folder):
    manifest = write(folder / "m.csv", "a,b\n1,2\n")
    with pytest.raises(ManifestError, match="no id or path column"):
        read_manifest(manifest)
    with pytest.raises(ManifestError, match=r"label column 'mos' is not in the header"):
        read_manifest(manifest, id_col="a", label_cols=["mos"], check_files=False)
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(folder / "absent.csv")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(manifest, fmt="xlsx")
    with pytest.raises(ManifestError, match="header"):
        read_manifest(write(folder / "empty.csv", ""))


# -- writing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, suffix, body",
    [
        (
            "csv",
            ".csv",
            "video_id,path,prompt,mos\na,videos/a.mp4,plain,3\n"
            "b,videos/b.mp4,un caf\u00e9 cr\u00e8me,4\n",
        ),
        (
            "jsonl",
            ".jsonl",
            '{"id": "a", "video": "videos/a.mp4", "mos": 3}\n'
            '{"id": "b", "video": "videos/b.mp4", "caption": "cr\u00e8me", "mos": 4}\n',
        ),
        ("t2vqa", ".txt", "a.mp4|plain|3\nb.mp4|un caf\u00e9|4\n"),
    ],
)
def test_a_latin1_manifest_names_the_line_and_the_expected_encoding(folder, fmt, suffix, body):
    manifest = folder / f"m{suffix}"
    manifest.write_bytes(body.encode("latin-1"))
    video_dir = folder / "videos" if fmt == "t2vqa" else None
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest, video_dir=video_dir)
    message = str(err.value)
    line = next(i for i, text in enumerate(body.splitlines(), start=1) if not text.isascii())
    assert str(manifest) in message and f"line {line}," in message and "utf-8" in message
    assert "encoding='latin-1'" in message and "UnicodeDecodeError" not in message
    records = read_manifest(manifest, encoding="latin-1", video_dir=video_dir)
    assert "é" in (records[1].prompt or "") or "è" in (records[1].prompt or "")


def test_extract_cli_names_the_line_and_takes_an_encoding(folder, capsys):
    from aigvqa.pipeline.cli import main

    manifest = folder / "m.csv"
    manifest.write_bytes("video_id,path,prompt\na,videos/a.mp4,caf\u00e9\n".encode("latin-1"))
    assert (
        main(
            [
                "extract",
                str(manifest),
                "--extractors",
                "handcrafted",
                "--cache",
                str(folder / "c.h5"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "line 2" in err and "--encoding latin-1" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert "--encoding" in capsys.readouterr().out


def test_a_utf8_manifest_with_a_byte_order_mark_reads(folder):
    manifest = folder / "m.csv"
    manifest.write_bytes("video_id,path,mos\na,videos/a.mp4,3\n".encode("utf-8-sig"))
    assert read_manifest(manifest)[0].video_id == "a"
    with pytest.raises(ManifestError, match="unknown text encoding"):
        read_manifest(manifest, encoding="no-such-codec")


def test_write_manifest_csv_round_trips(folder):
    records = [
        VideoRecord(
            "a",
            (folder / "videos/a.mp4").resolve(),
            'a "quoted", prompt',
            {"mos": 3.25, "alignment": 1 / 3},
            {"prompt": "p1", "generator": "g1", "fold": "2"},
        ),
        VideoRecord(
            "b",
            (folder / "videos/b.mp4").resolve(),
            None,
            {"mos": 1.0, "alignment": 2.0},
            {"prompt": "p2", "generator": "g2", "fold": "1"},
        ),
    ]
    path = write_manifest_csv(records, folder / "out" / "manifest.csv")
    assert "../videos/a.mp4" in path.read_text()  # portable: relative to the manifest
    assert read_manifest(path) == records


def test_file_sha256_is_the_digest_of_every_byte_and_follows_changes(tmp_path):
    path = tmp_path / "features.bin"
    data = bytes(range(256)) * 5000  # over 1 MiB: more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + b"x")  # same size, last byte changed: a fresh digest
    assert file_sha256(str(path)) == hashlib.sha256(data[:-1] + b"x").hexdigest()


def test_a_missing_label_column_is_named_in_the_words_of_the_interface(folder, capsys):
    from aigvqa.pipeline.cli import main

    manifest = write(folder / "m.csv", "video_id,path,mos\na,videos/a.mp4,3\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(manifest, label_cols={"mos": "mos_nope"})
    assert "label_cols=" in str(err.value) and "label_col=" not in str(err.value)
    command = ["extract", str(manifest), "--extractors", "handcrafted"]
    assert main([*command, "--cache", str(folder / "c.h5"), "--labels", "mos_nope=mos"]) == 2
    err = capsys.readouterr().err
    assert "'mos_nope' is not in the header" in err and "--labels COL[=NAME]" in err
    assert "label_col=" not in err and "label_cols=" not in err and "Traceback" not in err
