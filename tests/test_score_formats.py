"""`aigvqa score --out x.jsonl / x.parquet`: the CSV's columns and values, read back by
pandas; resuming after an interruption (a Parquet output through its journal, never a
half-written Parquet file); one writer per output; a suffix of no known format refused."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from _score_helpers import in_process_client, trained_model

from aigvqa.pipeline.model.bundle import Bundle
from aigvqa.pipeline.model.score import ScoreError, read_rows, score
from aigvqa.pipeline.model.score_output import (
    _JsonlAppender,
    _row,
    finish_output,
    journal_path,
    output_columns,
    output_lock,
    read_scored,
)
from aigvqa.pipeline.records import VideoRecord

LABELS = ["overall", "alignment"]
COLUMNS = output_columns(LABELS)


@pytest.fixture(scope="module")
def client():
    with in_process_client() as c:
        yield c


@pytest.fixture(scope="module")
def setup(tmp_path_factory, client):
    """An SVR bundle, eight videos to score (two bad), and one work cache for every run of
    this module: a video's features are extracted once, what a test counts is predicting."""
    root, model, train_cache, _, records = trained_model(tmp_path_factory.mktemp("formats"), client)
    broken = root / "new" / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    records.append(replace(records[0], video_id="broken", path=broken))
    records.append(replace(records[0], video_id="missing", path=root / "new" / "missing.mp4"))
    return root, model, train_cache, records, root / "work.h5"


def run(setup, client, out, records=None, **options):
    _, model, _, all_records, work = setup
    return score(
        all_records if records is None else records,
        model,
        out,
        work_cache=work,
        client=client,
        progress=False,
        **options,
    )


class Predicted:
    """The video ids the model predicts; raises KeyboardInterrupt (Ctrl-C in the middle of
    a run) on predict call number ``interrupt_on``."""

    def __init__(self, monkeypatch, interrupt_on: int | None = None):
        self.ids: list[str] = []
        calls = [0]
        real = Bundle.predict

        def spy(bundle, X):
            calls[0] += 1
            if calls[0] == interrupt_on:
                raise KeyboardInterrupt
            self.ids += list(X.ids)
            return real(bundle, X)

        monkeypatch.setattr(Bundle, "predict", spy)


def as_read_by_pandas(out: Path) -> pd.DataFrame:
    if out.suffix == ".csv":
        frame = pd.read_csv(out, dtype={"error": str})
        frame["error"] = frame["error"].fillna("")  # an empty CSV cell: the others' ""
        return frame
    if out.suffix == ".jsonl":
        return pd.read_json(out, lines=True)
    return pd.read_parquet(out)


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns) == COLUMNS
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_jsonl_and_parquet_hold_the_csv_rows_with_sensible_types(setup, client, tmp_path):
    outs = [tmp_path / f"s.{suffix}" for suffix in ("csv", "jsonl", "parquet")]
    for out in outs:
        report = run(setup, client, out)
        assert report.scored == 6 and report.failed == 2
    csv_frame = as_read_by_pandas(outs[0])
    assert len(csv_frame) == 8 and (csv_frame["status"] == "failed").sum() == 2
    for out in outs[1:]:
        assert_same_table(as_read_by_pandas(out), csv_frame)
        assert read_rows(out, LABELS) == read_rows(outs[0], LABELS)

    frame = pd.read_parquet(outs[2])
    for label in LABELS:
        assert frame[label].dtype == "float64"
        assert frame[label].isna().tolist() == (frame["status"] == "failed").tolist()
    for text in ("video_id", "path", "status", "error"):
        assert pd.api.types.is_string_dtype(frame[text])
    # the run is over: no journal, no temporary file left beside the Parquet file
    assert sorted(n for n in os.listdir(tmp_path) if "parquet" in n) == [
        "s.parquet",
        "s.parquet.lock",
    ]

    lines = outs[1].read_text().splitlines()
    assert [list(json.loads(line)) for line in lines] == [COLUMNS] * 8
    failed = next(json.loads(line) for line in lines if '"failed"' in line)
    assert failed["overall"] is None and failed["error"]

    # --retry-failed: the failed rows are dropped and scored again, at the end, in every format
    for out in outs:
        assert run(setup, client, out, retry_failed=True).failed == 2
    csv_frame = as_read_by_pandas(outs[0])
    assert csv_frame["video_id"].tolist()[-2:] == ["broken", "missing"]
    for out in outs[1:]:
        assert_same_table(as_read_by_pandas(out), csv_frame)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_an_interrupted_run_resumes_without_rescoring(setup, client, tmp_path, monkeypatch, suffix):
    records = setup[3]
    out = tmp_path / f"s.{suffix}"
    # a finished first run of two videos ...
    run(setup, client, out, records[:2])
    before = out.read_bytes()
    # ... then a run of all eight, interrupted after its first batch of three
    Predicted(monkeypatch, interrupt_on=2)
    with pytest.raises(KeyboardInterrupt):
        run(setup, client, out, batch_size=3)
    if suffix == "parquet":
        assert out.read_bytes() == before  # the finished file is never touched mid-run
        journal = journal_path(out)
        assert [json.loads(line)["video_id"] for line in journal.read_text().splitlines()] == [
            r.video_id for r in records[2:5]
        ]
        with open(journal, "a") as fh:  # and the process died in the middle of an append
            fh.write('{"video_id": "demo0')
    else:
        assert [r["video_id"] for r in read_rows(out, LABELS)] == [r.video_id for r in records[:5]]

    monkeypatch.undo()
    second = Predicted(monkeypatch)
    report = run(setup, client, out, batch_size=3)
    assert second.ids == [records[5].video_id]  # the rest: two bad videos, not predicted
    assert report.already_done == 5 and report.scored == 1 and report.failed == 2
    frame = as_read_by_pandas(out)
    assert frame["video_id"].tolist() == [r.video_id for r in records]  # one row per video
    assert frame.loc[frame["status"] == "ok", LABELS].notna().all().all()
    if suffix == "parquet":
        assert not journal_path(out).exists()

    monkeypatch.undo()
    third = Predicted(monkeypatch)
    assert run(setup, client, out).already_done == len(records) and third.ids == []


def test_a_jsonl_line_torn_by_a_kill_is_scored_again(setup, client, tmp_path, monkeypatch):
    records = setup[3][:3]
    out = tmp_path / "s.jsonl"
    run(setup, client, out, records)
    text = out.read_text()
    out.write_text(text[: text.rindex('{"video_id"') + 20])  # the process died mid-line
    predicted = Predicted(monkeypatch)
    run(setup, client, out, records)
    assert predicted.ids == [records[-1].video_id]  # only the torn row is redone
    assert [r["video_id"] for r in read_rows(out, LABELS)] == [r.video_id for r in records]
    assert out.read_text().endswith("}\n")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_second_run_on_the_same_output_is_refused(setup, client, tmp_path, suffix):
    out = tmp_path / f"s.{suffix}"
    with output_lock(out):
        with pytest.raises(ScoreError, match="being written by another"):
            run(setup, client, out)
    assert not out.exists() and not journal_path(out).exists()


def test_a_suffix_of_no_known_format_is_refused_before_anything_is_written(
    setup, client, tmp_path, capsys
):
    from aigvqa.pipeline.cli import main

    out = tmp_path / "s.xlsx"
    with pytest.raises(ScoreError, match=r"s\.xlsx.*\.csv, \.jsonl, \.parquet"):
        run(setup, client, out)
    root, model, train_cache, _, _ = setup
    argv = ["score", str(root / "train" / "manifest.csv"), "--model", str(model), "--out"]
    assert main([*argv, str(tmp_path / "scores"), "--no-progress"]) == 2
    assert "names no output format" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no lock, no work cache, no output

    parquet = tmp_path / "s.parquet"
    code = main([*argv, str(parquet), "--cache", str(train_cache), "--no-progress"])
    assert code == 0 and "6 scored" in capsys.readouterr().out
    assert len(pd.read_parquet(parquet)) == 6


def test_parquet_without_pyarrow_says_how_to_install_it(setup, client, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ScoreError, match="pip install pyarrow"):
        run(setup, client, tmp_path / "s.parquet")
    assert list(tmp_path.iterdir()) == []


# -- outputs that are not ours are refused and left as they are ---------------------------
@pytest.mark.parametrize(
    "name, content",
    [
        ("m.jsonl", b'{"video_id": "a", "path": "a.mp4", "mos": 3.5}'),  # a manifest, no \n
        ("m.jsonl", b'{"video_id": "a", "path": "a.mp4", "mos": 3.5}\n{"video_id": "b", "pa'),
        ("m.jsonl", b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe binary\x00\x9c without a final newline"),
        ("m.jsonl", b"video_id,path,status,overall,alignment,error\na,a.mp4,ok,1,2,\n"),
        ("m.parquet", b"video_id,path,status,overall,alignment,error\na,a.mp4,ok,1,2,\n"),
    ],
)
def test_an_out_that_is_not_this_models_output_is_refused_and_left_unchanged(
    tmp_path, name, content
):
    victim = tmp_path / name
    victim.write_bytes(content)
    with pytest.raises(ScoreError, match=f"{name}.*another --out"):
        read_scored(victim, COLUMNS, retry_failed=False)
    assert victim.read_bytes() == content


def test_a_parquet_output_of_another_model_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "s.parquet"
    pq.write_table(pa.table({"video_id": ["a"], "mos": [3.0]}), out)
    before = out.read_bytes()
    with pytest.raises(ScoreError, match="another model"):
        read_scored(out, COLUMNS, retry_failed=False)
    assert out.read_bytes() == before


def test_torn_jsonl_tails_of_our_own_are_cut(tmp_path):
    out = tmp_path / "s.jsonl"
    row = json.dumps(
        {"video_id": "a", "path": "a.mp4", "status": "ok", "overall": 3.5, "alignment": 1.0}
        | {"error": ""}
    )
    out.write_text(row + '\n{"video_id": "b", "path": "b.mp')
    assert read_scored(out, COLUMNS, retry_failed=False) == {"a": "ok"}
    assert out.read_text() == row + "\n"
    out.write_text('{"video_id": "a", "pa')  # killed while writing the first row
    assert read_scored(out, COLUMNS, retry_failed=False) == {}
    assert out.read_text() == ""


def test_finishing_a_parquet_output_through_a_link_keeps_the_link(tmp_path):
    real, link = tmp_path / "real" / "s.parquet", tmp_path / "link.parquet"
    real.parent.mkdir()
    link.symlink_to(real)
    assert journal_path(link) == journal_path(real)  # one journal, as there is one lock
    appender = _JsonlAppender(journal_path(link), COLUMNS)
    row = _row(VideoRecord("a", Path("a.mp4")), "ok", {"overall": 3.25, "alignment": 0.5})
    appender.write([row])
    appender.close()
    finish_output(link, COLUMNS)
    assert link.is_symlink() and not journal_path(real).exists()
    assert pd.read_parquet(real).to_dict("records") == [
        {
            "video_id": "a",
            "path": "a.mp4",
            "status": "ok",
            "overall": 3.25,
            "alignment": 0.5,
            "error": "",
        }
    ]
