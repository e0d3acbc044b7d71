"""The demo: its synthetic dataset follows the documented formula, and the whole run (reduced
size) produces a report with tables and PNG plots."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from aigvqa.pipeline.demo import (
    GENERATOR_PROFILES,
    LABEL_NAMES,
    RANDOM_WEIGHTS_BANNER,
    make_demo_dataset,
    quality_from_distortions,
    render_video,
    run_demo,
)
from aigvqa.pipeline.manifest import read_manifest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLEAN = {"blur": 0.0, "noise": 0.0, "flicker": 0.0, "drops": 0.0, "swap": 0.0, "mismatch": 0.0}


def test_formula_lowers_the_dimension_each_distortion_belongs_to():
    clean = quality_from_distortions(CLEAN)
    assert clean == {"static_quality": 5.0, "temporal_quality": 5.0, "alignment": 5.0}
    worse = {
        "blur": "static_quality",
        "noise": "static_quality",
        "flicker": "temporal_quality",
        "drops": "temporal_quality",
        "swap": "temporal_quality",
        "mismatch": "alignment",
    }
    for distortion, dimension in worse.items():
        truth = quality_from_distortions({**CLEAN, distortion: 1.0})
        assert truth[dimension] < clean[dimension] - 1.0, distortion
    assert min(quality_from_distortions(dict.fromkeys(CLEAN, 1.0)).values()) >= 1.0  # clipped


def test_distortions_change_the_pixels_as_documented():
    rng = np.random.default_rng(0)
    clean = render_video(0, CLEAN, size=64, num_frames=12, swap_scene=1, rng=rng).astype(float)
    blurred = render_video(
        0, {**CLEAN, "blur": 1.0}, size=64, num_frames=12, swap_scene=1, rng=rng
    ).astype(float)
    dropped = render_video(
        0, {**CLEAN, "drops": 1.0}, size=64, num_frames=12, swap_scene=1, rng=rng
    )
    swapped = render_video(
        0, {**CLEAN, "swap": 1.0}, size=64, num_frames=12, swap_scene=1, rng=rng
    ).astype(float)

    def detail(v):
        return np.abs(np.diff(v, axis=2)).mean()

    assert detail(blurred) < 0.7 * detail(clean)
    repeats = sum(np.array_equal(dropped[i], dropped[i - 1]) for i in range(1, 12))
    assert repeats == round(0.5 * 11)
    assert (
        np.abs(swapped[:6] - clean[:6]).max() == 0 and np.abs(swapped[6:] - clean[6:]).mean() > 20
    )


def test_dataset_shares_prompts_across_generators_and_reads_back(tmp_path):
    manifest, videos = make_demo_dataset(tmp_path, 12, size=32, seconds=1.0, progress=False)
    records = read_manifest(manifest)
    assert [r.video_id for r in records] == [v.video_id for v in videos]
    by_prompt: dict[str, set[str]] = {}
    for r in records:
        assert set(r.labels) == set(LABEL_NAMES)
        assert all(1.0 <= x <= 5.0 for x in r.labels.values())
        by_prompt.setdefault(r.groups["prompt"], set()).add(r.groups["generator"])
    assert len(by_prompt) == 4 and all(g == set(GENERATOR_PROFILES) for g in by_prompt.values())
    again = make_demo_dataset(tmp_path / "again", 12, size=32, seconds=1.0, progress=False)[1]
    assert [v.labels for v in again] == [v.labels for v in videos]  # seeded


@pytest.mark.slow
def test_quick_demo_writes_report_tables_plots_and_scores(tmp_path, capsys):
    from distributed import Client

    with Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
    ) as client:
        result = run_demo(tmp_path / "demo", 12, quick=True, client=client, progress=False)
    out = capsys.readouterr().out
    assert out.count(RANDOM_WEIGHTS_BANNER) == 2  # loud, before and after

    assert "blip-itm" in out and "imagereward" in out  # where real alignment features come from
    report = result.report.read_text()
    assert "RANDOM WEIGHTS" in report
    assert (
        "What the columns mean:" in report
        and "LOWER is better" in report
        and "0.5: chance" in report
    )
    assert "What the columns mean:" in out
    assert f"highest median SRCC on overall: {result.best_head}" in report
    # the bundle reads only the features its head was given (svr: handcrafted): a bare video
    # needs no prompt
    import json

    bundle = json.loads((tmp_path / "demo" / "model" / "bundle.json").read_text())
    assert set(bundle["provenance"]) <= {"handcrafted", "clip-frames"}
    assert not any(name.startswith("clip-text") for name in bundle["feature_names"])
    assert "`blip-itm`" in report and "`imagereward`" in report and "pair acc (in prompt)" in report
    for head in ("svr", "lightgbm", "mlp"):
        for label in LABEL_NAMES:
            assert f"| {head} | {label} |" in report
    pngs = sorted(result.report.parent.glob("*.png"))
    assert len(pngs) == 1 + 3 * len(LABEL_NAMES)  # bars + a scatter per head and dimension
    for png in pngs:
        assert png.read_bytes().startswith(PNG_MAGIC)
        assert f"({png.name})" in report  # embedded or linked from the report

    with open(result.report.parent / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["head"], r["dimension"]) for r in rows} == {
        (h, d) for h in ("svr", "lightgbm", "mlp") for d in LABEL_NAMES
    }
    with open(tmp_path / "demo" / "scores.csv") as fh:
        scores = list(csv.DictReader(fh))
    assert len(scores) == 12 and all(s["status"] == "ok" for s in scores)
    assert (tmp_path / "demo" / "model" / "bundle.json").is_file()
    # the page to look at (aigvqa report): every video in the gallery (8 lowest + 4 highest)
    # with its strip, one scatter point each, both tables, and the random-weights warning
    assert result.html == tmp_path / "demo" / "report.html"
    page = result.html.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/jpeg;base64,') == 12
    assert page.count('class="point"') == 12 and "RANDOM WEIGHTS" in page
    assert 'id="agreement"' in page and 'id="cross-validated"' in page and "in-sample" in page
    assert str(result.html) in out


class _FakeResult:
    def __init__(self, head, values):
        self.head, self._values, self.trials = head, np.asarray(values), [None] * len(values)

    def median(self, metric, label):
        return float(np.median(self._values))

    def std(self, metric, label):
        return float(np.std(self._values))


def test_the_best_head_is_named_with_its_spread_and_the_heads_it_does_not_beat():
    from aigvqa.pipeline.demo import best_head_sentence, rank_heads

    wide = _FakeResult("svr", [0.1, 0.37, 0.7])  # median 0.37, std 0.245
    close = _FakeResult("lightgbm", [0.1, 0.15, 0.2])  # median 0.15: within one std
    far = _FakeResult("mlp", [-0.5, -0.4, -0.45])  # median -0.45: not
    best, within = rank_heads([close, far, wide])
    assert best is wide and within == [close]
    text = best_head_sentence(best, within)
    assert "svr (0.370 ± 0.245" in text and "lightgbm (0.150 ± 0.041) is within one std" in text
    assert "not because it is shown to be better" in text and "mlp" not in text
    best, within = rank_heads([_FakeResult("a", [0.9, 0.91, 0.92]), far])
    assert within == [] and "within one std" not in best_head_sentence(best, within)
