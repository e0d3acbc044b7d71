"""`aigvqa report`: one self-contained HTML page from a score CSV and / or a cache.

The fixture is twelve tiny demo videos (four prompts x three generators), a cache holding
their videos table (written with write_shard + merge_shards: no Dask, no extractor) and a
score CSV written by hand in `aigvqa score`'s columns, with one failed row. One prompt is
tampered with (a script and an onerror handler) and must come out as text. The HTML is
checked with html.parser; the last test opens it in a real headless Chromium and skips,
saying why, where none is installed.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import aigvqa
from aigvqa.cache import GroupData, merge_shards, write_shard
from aigvqa.pipeline.cli import main
from aigvqa.pipeline.demo_dataset import make_demo_dataset
from aigvqa.pipeline.html_report import ReportError, write_report
from aigvqa.pipeline.html_report.inputs import SCORE_COLUMNS

TAMPERED = (
    '<script>document.body.setAttribute("data-pwned", "1")</script>'
    "<img src=x onerror=\"document.body.setAttribute('data-pwned', '2')\"> & \"quotes\""
)
N_VIDEOS = 12
FAILED = "demo003"


def _write_cache(path: Path, records) -> Path:
    group = GroupData(
        "handcrafted",
        "video",
        [r.video_id for r in records],
        [np.ones((2, 3), np.float32) for _ in records],
        provenance={"extractor": "handcrafted", "config": {}, "view": {}, "weights": "none"},
    )
    shard = write_shard(path.with_suffix(".shard.h5"), [group], [], records)
    merge_shards(path, [shard], remove_shards=True)
    return path


def _write_scores(path: Path, records, labels=("overall", "alignment"), failed=(FAILED,)) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["video_id", "path", "status", *labels, "error"])
        writer.writeheader()
        for r in records:
            if r.video_id in failed:
                writer.writerow(
                    {"video_id": r.video_id, "path": r.path, "status": "failed", "error": "boom"}
                )
                continue
            row = {"video_id": r.video_id, "path": r.path, "status": "ok", "error": ""}
            for label in labels:
                row[label] = repr(r.labels.get(label, 3.0) + float(rng.normal(0, 0.3)))
            writer.writerow(row)
    return path


def _moved(records, paths: dict[int, Path]):
    """The records, with other files for the rows ``paths`` names (what a score CSV says)."""
    from dataclasses import replace

    return [replace(r, path=paths[i]) if i in paths else r for i, r in enumerate(records)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(root, records, cache, scores): 12 videos, one with a tampered prompt."""
    from dataclasses import replace

    root = tmp_path_factory.mktemp("report")
    _, videos = make_demo_dataset(root / "demo", N_VIDEOS, size=32, seconds=1.0, progress=False)
    records = [v.record(root / "demo") for v in videos]
    records[0] = replace(records[0], prompt=TAMPERED)
    return (
        root,
        records,
        _write_cache(root / "feats.h5", records),
        _write_scores(root / "scores.csv", records),
    )


class Page(HTMLParser):
    """What the tests look for: tags with their attributes, the gallery's images and
    placeholders, texts by class, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[tuple[str, dict]] = []
        self.texts: dict[str, list[str]] = {}
        self.script_bodies: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in ("img", "meta", "br", "line", "rect", "polyline"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        classes = {c for _, a in self.stack for c in (a.get("class") or "").split()}
        for c in classes:
            self.texts.setdefault(c, []).append(data)
        if self.stack and self.stack[-1][0] == "script":
            self.script_bodies.append(data)

    def inside(self, cls: str) -> list[str]:
        return self.texts.get(cls, [])

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(
            t == tag and (cls is None or cls in (a.get("class") or "").split())
            for t, a in self.tags
        )


def _gallery_images(text: str) -> list[dict]:
    page = Page(text)
    # every <img> of the page is a gallery strip: the scatter is SVG, nothing else is an image
    return [a for t, a in page.tags if t == "img"]


def test_scores_and_cache_give_table_scatter_gallery_and_escaped_prompts(dataset, tmp_path):
    root, records, cache, scores = dataset
    out = tmp_path / "report.html"
    result = write_report([scores, cache], out, n=8, progress=False)
    text = out.read_text(encoding="utf-8")
    page = Page(text)

    # 11 scored videos: the 8 lowest and the 3 others (highest first); no video twice
    assert (result.ranked, result.shown, result.no_thumbnail) == (11, 11, 0)
    images = _gallery_images(text)
    assert len(images) == 11 and page.count("div", "missing") == 0
    for img in images:
        assert img["src"].startswith("data:image/jpeg;base64,")
        from PIL import Image

        strip = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert strip.format == "JPEG" and strip.height == 96 == int(img["height"])
        assert strip.width == 6 * 96 + 5 * 2 == int(img["width"])  # 6 square frames, 2 px gaps
    cards = [a["id"] for t, a in page.tags if t == "figure"]
    assert len(cards) == len(set(cards)) == 11 and f"video-{FAILED}" not in cards

    # the table: one row per dimension both sides have, the metrics and their legend
    assert page.count("table", "evaluation") == 1
    assert "SRCC" in text and "PLCC (logistic)" in text and "LOWER is better" in text
    rows = [a for t, a in page.tags if t == "tr"]
    assert len(rows) == 1 + 2  # header + overall + alignment
    # the scatter: inline SVG, one point per video with a score and a MOS
    assert page.count("svg", "scatter") == 1 and page.count("circle", "point") == 11
    assert result.with_mos == 11 and result.label == "overall"

    # tampered prompt: text, not markup; the page's only script is its own
    assert TAMPERED not in text and "data-pwned" not in "".join(page.script_bodies)
    assert TAMPERED in "".join(page.inside("prompt"))
    assert (
        page.count("script") == 1 and sum(t == "img" and "onerror" in a for t, a in page.tags) == 0
    )
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv")]
    assert csp and "default-src 'none'" in csp[0] and "script-src 'sha256-" in csp[0]
    assert "https://" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", ""
    )
    # the failed row is said, not hidden
    assert f"{FAILED}: boom" in text and "--retry-failed" in text
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left


def test_the_gallery_holds_the_n_lowest_and_n_highest(dataset, tmp_path):
    _, records, cache, scores = dataset
    out = tmp_path / "r.html"
    result = write_report([cache, scores], out, n=2, progress=False)  # any order
    page = Page(out.read_text(encoding="utf-8"))
    assert result.shown == 4 and len(_gallery_images(out.read_text())) == 4
    with open(scores, newline="") as fh:
        ok = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    order = [r["video_id"] for r in sorted(ok, key=lambda r: float(r["overall"]))]
    cards = [a["id"].removeprefix("video-") for t, a in page.tags if t == "figure"]
    assert cards == order[:2] + order[::-1][:2]
    assert "Lowest predicted overall: 2 of 11" in out.read_text()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_scores_give_the_csvs_page(dataset, tmp_path, suffix):
    """`aigvqa score --out x.jsonl / x.parquet` outputs are read as the CSV is (the same
    cards in the same order, the same failed row), through the reader score resumes with."""
    import pandas as pd

    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    _, _, cache, scores = dataset
    table = pd.read_csv(scores, dtype={"video_id": str, "path": str, "error": str})
    other = tmp_path / f"scores{suffix}"
    if suffix == ".parquet":
        table.to_parquet(other, index=False)
    else:
        table.where(table.notna(), None).to_json(other, orient="records", lines=True)

    def cards(source):
        out = tmp_path / f"{Path(source).name}.html"
        result = write_report([source, cache], out, n=3, progress=False)
        page = Page(out.read_text(encoding="utf-8"))
        ids = [a["id"] for t, a in page.tags if t == "figure"]
        return ids, result.ranked, f"{FAILED}: boom" in out.read_text(encoding="utf-8")

    assert cards(other) == cards(scores)
    assert cards(scores)[1] == N_VIDEOS - 1


def test_missing_and_undecodable_videos_get_a_placeholder_not_a_crash(dataset, tmp_path):
    root, records, cache, _ = dataset
    gone = tmp_path / "gone.mp4"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    moved = _moved(records, {1: gone, 2: broken})
    scores = _write_scores(tmp_path / "scores.csv", moved)
    out = tmp_path / "r.html"
    result = write_report([scores, cache], out, progress=False)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert result.no_thumbnail == 2 and page.count("div", "missing") == 2
    assert len(_gallery_images(text)) == result.shown - 2
    missing = " ".join(page.inside("missing"))
    assert f"video file not found: {gone}" in missing and str(broken) in missing
    assert "2 of the 11 videos shown have no thumbnail" in text


def test_scores_alone_say_there_is_no_mos(dataset, tmp_path):
    _, _, _, scores = dataset
    out = tmp_path / "r.html"
    result = write_report(scores, out, n=3, progress=False)
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.count("table") == 0 and page.count("svg") == 0
    assert "No MOS" in text and result.with_mos == 0 and len(_gallery_images(text)) == 6
    assert "no MOS for these videos" in result.summary()


def test_a_cache_alone_ranks_by_mos(dataset, tmp_path):
    _, records, cache, _ = dataset
    out = tmp_path / "r.html"
    result = write_report(cache, out, n=2, label="alignment", progress=False)
    text = out.read_text(encoding="utf-8")
    assert result.ranked_by == "mos" and result.ranked == N_VIDEOS and result.shown == 4
    assert "No predicted scores" in text and Page(text).count("svg") == 0
    assert "Lowest MOS alignment" in text


def test_bad_inputs_raise_report_errors_naming_the_file(dataset, tmp_path):
    root, _, cache, scores = dataset
    out = tmp_path / "r.html"
    with pytest.raises(ReportError, match="missing.csv does not exist"):
        write_report(tmp_path / "missing.csv", out)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ReportError, match=r"other\.csv is neither a feature cache.*lacks"):
        write_report(other, out)
    with pytest.raises(ReportError, match="two score CSVs"):
        write_report([scores, scores], out)
    with pytest.raises(ReportError, match="no dimension 'nope'.*overall"):
        write_report(scores, out, label="nope")
    with pytest.raises(ReportError, match="n must be at least 1"):
        write_report(scores, out, n=0)
    with pytest.raises(ReportError, match="is a folder"):
        write_report(scores, tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(SCORE_COLUMNS[:3]) + ",overall,error\nv1,v1.mp4,ok,high,\n")
    with pytest.raises(ReportError, match=r"bad\.csv, line 2: .*'high' is not a number"):
        write_report(bad, out)
    assert not out.exists()


def test_a_failed_write_keeps_the_old_page_and_leaves_no_temp_file(dataset, tmp_path, monkeypatch):
    _, _, cache, scores = dataset
    out = tmp_path / "r.html"
    out.write_text("old page")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(ReportError, match="cannot write the report to .*No space left"):
        write_report([scores, cache], out, n=1, progress=False)
    assert out.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == [
        "r.html"
    ]


def test_the_cli_verb_and_the_api_name(dataset, tmp_path, capsys):
    _, _, cache, scores = dataset
    assert aigvqa.write_report is write_report
    out = tmp_path / "cli.html"
    argv = ["report", str(scores), str(cache), "--out", str(out), "--n", "2", "--no-progress"]
    assert main(argv) == 0
    assert f"report: {out} (12 videos; gallery: 4 of 11 ranked by predicted overall" in (
        capsys.readouterr().out
    )
    assert main(["report", str(tmp_path / "nope.h5")]) == 2
    err = capsys.readouterr().err
    assert "aigvqa report: error:" in err and "nope.h5 does not exist" in err
    assert "Traceback" not in err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_loads_in_a_headless_browser_without_errors(dataset, tmp_path):
    """Chromium (Debian's `chromium`, which .ci/run installs) opens the page from disk: the
    page's script counts the gallery's decoded images into #page-check, the dumped DOM is
    read back, and the browser's log must hold no console message at all."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): the browser check is skipped")
    root, records, cache, scores = dataset
    moved = _moved(records, {5: tmp_path / "gone.mp4"})  # one placeholder, no broken <img>
    out = tmp_path / "page.html"
    result = write_report([_write_scores(tmp_path / "s.csv", moved), cache], out, progress=False)
    assert result.no_thumbnail == 1
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            "--virtual-time-budget=5000",
            out.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dom = Page(done.stdout)
    check = [a for t, a in dom.tags if a.get("id") == "page-check"]
    assert check, f"no #page-check in the dumped DOM:\n{done.stdout[-2000:]}"
    expected = result.shown - 1
    assert check[0].get("data-images") == str(expected)
    assert check[0].get("data-loaded") == str(expected)  # every strip decoded in the browser
    assert check[0].get("data-errors") == ""
    body = [a for t, a in dom.tags if t == "body"]
    assert body and "data-pwned" not in body[0]  # the tampered prompt ran nothing
    console = [
        line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    assert not console, "\n".join(console)
