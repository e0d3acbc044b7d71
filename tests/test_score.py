"""`aigvqa score`: one row per video with failures marked, features reused from a cache when
they match the model, and an interrupted run resumes without redoing finished videos."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from _score_helpers import EXTRACTORS, in_process_client, trained_model

from aigvqa.errors import ProvenanceMismatchError
from aigvqa.pipeline.extract import extract
from aigvqa.pipeline.model import score as score_module
from aigvqa.pipeline.model.bundle import Bundle
from aigvqa.pipeline.model.score import ScoreError, score


@pytest.fixture(scope="module")
def client():
    with in_process_client() as c:
        yield c


@pytest.fixture(scope="module")
def setup(tmp_path_factory, client):
    """Six labelled videos with their cache and an SVR bundle; eight videos to score, two bad."""
    root, model, train_cache, _, records = trained_model(tmp_path_factory.mktemp("score"), client)
    broken = root / "new" / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    records.append(replace(records[0], video_id="broken", path=broken))
    records.append(replace(records[0], video_id="missing", path=root / "new" / "missing.mp4"))
    return root, model, train_cache, records


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class Counters:
    def __init__(self, monkeypatch, fail_on_predict_call: int | None = None):
        self.extracted: list[str] = []
        self.predicted: list[str] = []
        self.predict_calls = 0
        real_extract, real_predict = score_module.extract, Bundle.predict
        counters = self

        def spy_extract(records, *args, **kwargs):
            # the work cache keys rows <video id>@<file identity> (score's docstring)
            counters.extracted += [r.video_id.rpartition("@")[0] for r in records]
            return real_extract(records, *args, **kwargs)

        def spy_predict(bundle, X):
            counters.predict_calls += 1
            if counters.predict_calls == fail_on_predict_call:
                raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the run
            counters.predicted += list(X.ids)
            return real_predict(bundle, X)

        monkeypatch.setattr(score_module, "extract", spy_extract)
        monkeypatch.setattr(Bundle, "predict", spy_predict)


def test_interrupted_run_resumes_without_rescoring(setup, client, tmp_path, monkeypatch):
    _, model, _, records = setup
    out = tmp_path / "scores.csv"
    first = Counters(monkeypatch, fail_on_predict_call=2)
    with pytest.raises(KeyboardInterrupt):
        score(records, model, out, batch_size=3, client=client, progress=False)
    done = [r["video_id"] for r in _rows(out)]
    assert done == [r.video_id for r in records[:3]]  # the first batch landed, flushed
    assert first.predicted == done

    monkeypatch.undo()
    second = Counters(monkeypatch)
    report = score(records, model, out, batch_size=3, client=client, progress=False)
    rest = [r.video_id for r in records[3:]]
    assert second.extracted == rest  # nothing of the finished batch extracted again
    assert sorted(second.predicted) == sorted(r for r in rest if r not in ("broken", "missing"))
    assert report.already_done == 3 and report.scored == 3 and report.failed == 2

    rows = _rows(out)
    assert [r["video_id"] for r in rows] == [r.video_id for r in records]  # one row per video
    status = {r["video_id"]: r for r in rows}
    for bad in ("broken", "missing"):
        assert (
            status[bad]["status"] == "failed"
            and status[bad]["error"]
            and status[bad]["overall"] == ""
        )
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) == 6 and all(float(r["overall"]) > 0 and r["alignment"] for r in good)

    monkeypatch.undo()
    third = Counters(monkeypatch)
    report = score(records, model, out, client=client, progress=False)
    assert third.extracted == [] and third.predicted == [] and report.already_done == len(records)


def test_a_row_torn_by_a_kill_mid_append_is_scored_again(setup, client, tmp_path, monkeypatch):
    _, model, _, records = setup
    out = tmp_path / "scores.csv"
    score(records, model, out, client=client, progress=False)
    text = out.read_text()
    last_id = records[-1].video_id
    assert text.rstrip("\n").splitlines()[-1].startswith(last_id)
    out.write_text(text[: text.rindex(last_id) + len(last_id) + 3])  # the process died mid-row
    counters = Counters(monkeypatch)
    score(records, model, out, client=client, progress=False)
    assert counters.extracted == [last_id]  # only the torn row is redone
    rows = _rows(out)
    assert [r["video_id"] for r in rows] == [r.video_id for r in records]
    assert all(r["status"] in ("ok", "failed") for r in rows)


def test_retry_failed_tries_failed_videos_again(setup, client, tmp_path, monkeypatch):
    _, model, _, records = setup
    out = tmp_path / "scores.csv"
    score(records, model, out, client=client, progress=False)
    counters = Counters(monkeypatch)
    score(records, model, out, client=client, progress=False, retry_failed=True)
    assert sorted(counters.extracted) == ["broken", "missing"]
    rows = _rows(out)
    assert sorted(r["video_id"] for r in rows) == sorted(r.video_id for r in records)


def test_matching_cache_is_used_without_extracting(setup, client, tmp_path, monkeypatch):
    root, model, train_cache, _ = setup
    from aigvqa.pipeline.manifest import read_manifest

    records = read_manifest(root / "train" / "manifest.csv")
    counters = Counters(monkeypatch)
    report = score(
        records, model, tmp_path / "s.csv", cache=train_cache, client=client, progress=False
    )
    assert (
        counters.extracted == []
        and report.from_cache == len(records)
        and report.scored == len(records)
    )


def test_cache_of_other_features_is_refused(setup, client, tmp_path):
    root, model, _, records = setup
    other = tmp_path / "other.h5"
    extract(
        records[:2],
        {"handcrafted": {"max_frames": 4, "size": 32}},
        other,
        client=client,
        progress=False,
    )
    with pytest.raises(ProvenanceMismatchError, match="max_frames"):
        score(records, model, tmp_path / "s.csv", cache=other, client=client, progress=False)


def test_output_of_another_model_is_not_appended_to(setup, client, tmp_path):
    _, model, _, records = setup
    out = tmp_path / "s.csv"
    out.write_text("video_id,path,status,mos,error\nx,x.mp4,ok,3.0,\n")
    with pytest.raises(ScoreError, match="another model"):
        score(records, model, out, client=client, progress=False)


def test_cli_scores_a_manifest_from_a_cache(setup, tmp_path, capsys):
    from aigvqa.pipeline.cli import main

    root, model, train_cache, _ = setup
    out = tmp_path / "s.csv"
    code = main(
        [
            "score",
            str(root / "train" / "manifest.csv"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--cache",
            str(train_cache),
            "--no-progress",
        ]
    )
    assert code == 0
    assert "6 scored" in capsys.readouterr().out
    assert len(_rows(out)) == 6


# -- an --out that is not a score CSV is left as it is (review of issue 11, defect A) --------
@pytest.mark.parametrize(
    "content",
    [
        b"\x89HDF\r\n\x1a\n\x00\x00\xff\xfe binary\x00\x9c without a final newline",
        b"video_id,path,label\na,a.mp4,3.5\nb,b.mp4,4.0",  # a manifest, no final newline
        b"video_id,path,status,overall\na,a.mp4,ok,3.5\ntorn",  # another model's scores
    ],
)
def test_an_out_that_is_not_this_models_csv_is_refused_and_left_unchanged(tmp_path, content):
    from aigvqa.pipeline.model.score_output import output_columns, read_scored

    victim = tmp_path / "victim.h5"
    victim.write_bytes(content)
    with pytest.raises(ScoreError, match="victim.h5.*another --out"):
        read_scored(victim, output_columns(["overall", "alignment"]), retry_failed=False)
    assert victim.read_bytes() == content


def test_a_torn_last_row_of_our_own_csv_is_still_cut(tmp_path):
    from aigvqa.pipeline.model.score_output import output_columns, read_scored

    out = tmp_path / "s.csv"
    out.write_text("video_id,path,status,overall,error\na,a.mp4,ok,3.5,\nb,b.mp4,o")
    assert read_scored(out, output_columns(["overall"]), retry_failed=False) == {"a": "ok"}
    assert out.read_text().endswith("a,a.mp4,ok,3.5,\n")


# -- a video changed after --cache extracted it (review of issue 11, defect B) --------------
def test_a_changed_video_is_not_scored_from_a_cache_that_grew_after_it(
    setup, client, tmp_path, capsys
):
    _, model, _, records = setup
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    shutil.copyfile(records[0].path, a)
    shutil.copyfile(records[1].path, b)
    ra = replace(records[0], video_id="a", path=a)
    rb = replace(records[1], video_id="b", path=b)
    cache = tmp_path / "c.h5"
    extract([ra], EXTRACTORS, cache, client=client, progress=False)
    shutil.copyfile(records[2].path, a)  # a.mp4 is now another video ...
    # ... and the cache is written after it: the cache file's mtime passes a.mp4's
    extract([rb], EXTRACTORS, cache, client=client, progress=False)
    report = score([ra], model, tmp_path / "s.csv", cache=cache, client=client, progress=False)
    assert report.not_from_cache == 1 and report.from_cache == 0
    reference = replace(records[2], video_id="reference")
    score([reference], model, tmp_path / "r.csv", client=client, progress=False)
    assert _rows(tmp_path / "s.csv")[0]["overall"] == _rows(tmp_path / "r.csv")[0]["overall"]

    capsys.readouterr()
    extract([ra, rb], EXTRACTORS, cache, client=client, progress=False)  # resumed by id
    said = capsys.readouterr().err
    assert "1 video(s) already in" in said and ": a;" in said and "--overwrite" in said


def test_the_output_lock_holds_through_a_link_to_the_same_csv(tmp_path):
    # review of issue 11, defect D: `--out s.csv` and `--out link.csv` ran at once
    from aigvqa.pipeline.model.score_output import output_lock

    out = tmp_path / "s.csv"
    out.write_text("")
    (tmp_path / "link.csv").symlink_to(out)
    with output_lock(out):
        with pytest.raises(ScoreError, match="being written by another"):
            with output_lock(tmp_path / "link.csv"):
                pass


# -- score --encoding (review of issue 11, defect H) ---------------------------------------
def test_score_reads_a_latin1_manifest_with_encoding(setup, client, tmp_path, capsys):
    from aigvqa.pipeline.cli.main import main

    root, model, train_cache, _ = setup
    train = [
        line.split(",")[:2]
        for line in (root / "train" / "manifest.csv").read_text().splitlines()[1:3]
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        (
            "video_id,path,prompt\n"
            + "".join(
                f"{vid},{(root / 'train' / path).resolve()},un caf\u00e9\n" for vid, path in train
            )
        ).encode("latin-1")
    )
    assert main(["score", str(manifest), "--model", str(model), "--no-progress"]) == 2
    said = capsys.readouterr().err
    assert "--encoding latin-1" in said and "aigvqa extract" not in said and "line 2" in said
    report = score(
        manifest,
        model,
        tmp_path / "s.csv",
        cache=train_cache,
        encoding="latin-1",
        client=client,
        progress=False,
    )
    assert report.scored == 2 and report.from_cache == 2


def test_the_summary_counts_what_was_extracted_not_what_the_work_cache_held(
    setup, client, tmp_path
):
    # review of issue 11 (minor): "3 extracted" when the work cache already held 2
    _, model, _, records = setup
    work = tmp_path / "work.h5"
    score(records[:2], model, tmp_path / "a.csv", work_cache=work, client=client, progress=False)
    report = score(
        records[:3], model, tmp_path / "b.csv", work_cache=work, client=client, progress=False
    )
    assert report.scored == 3 and report.extracted == 1 and report.reused_work == 2
    assert "features: 1 extracted, 2 from the work cache" in report.summary()  # no --cache
    given = score(records[:3], model, tmp_path / "c.csv", cache=work, client=client, progress=False)
    # the work cache's rows are keyed for scoring, not as a feature cache: none are used,
    # but a given --cache is named in the summary
    assert "features: 0 from the given cache, 3 extracted" in given.summary()


def test_the_output_csv_is_utf8_whatever_the_locale(tmp_path):
    # read_scored decodes the CSV as UTF-8 (defect A), so it must be written as UTF-8 too
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from aigvqa.pipeline.model.score_output import _Appender, _row, output_columns,"
        " read_rows, read_scored\n"
        "from aigvqa.pipeline.records import VideoRecord\n"
        "out, columns = Path(sys.argv[1]), output_columns(['mos'])\n"
        "appender = _Appender(out, columns)\n"
        "appender.write([_row(VideoRecord('a', Path('caf\\u00e9.mp4')), 'ok', {'mos': 3.0})])\n"
        "appender.close()\n"
        "assert read_scored(out, columns, False) == {'a': 'ok'}\n"
        "assert read_rows(out, ['mos'])[0]['path'] == 'caf\\u00e9.mp4'\n"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env["PYTHONCOERCECLOCALE"] = "0"
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "s.csv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-1500:]
    assert "café.mp4" in (tmp_path / "s.csv").read_text(encoding="utf-8")
