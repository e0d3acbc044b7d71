"""``aigvqa demo``: the whole tool end to end on a dataset it makes itself, nothing downloaded.

The dataset (synthetic videos, fake generators, controlled distortions, simulated ratings)
is made by ``pipeline.demo_dataset``, whose names stay importable from here; this module
runs the demo on it (extract, evaluate three heads, train the best, score) and writes the
report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigvqa.pipeline import demo_dataset
from aigvqa.pipeline.demo_dataset import (  # noqa: F401  (re-exported)
    GENERATOR_PROFILES,
    LABEL_NAMES,
    MAX_BLUR_SIGMA,
    MAX_DROP_FRACTION,
    MAX_FLICKER,
    MAX_NOISE_STD,
    NUM_RATERS,
    RATER_NOISE,
    SCENES,
    DemoVideo,
    make_demo_dataset,
    quality_from_distortions,
    rate,
    render_scene,
    render_video,
)
from aigvqa.pipeline.evaluation.metrics import metric_legend

# -- the end-to-end run -----------------------------------------------------------------------

RANDOM_WEIGHTS_BANNER = """\
################################################################################
#  RANDOM WEIGHTS: the backbone features of this demo (clip-frames, clip-text)  #
#  come from RANDOMLY INITIALISED networks -- nothing is downloaded. Numbers    #
#  from them are for plumbing only and say nothing about real backbones.       #
#  (The handcrafted features are real: sharpness, noise, flicker, flow.)       #
################################################################################"""


DEMO_SPLIT = "prompt-disjoint-7:3"
"""Prompt-disjoint with 30 % test rows: a dozen videos still get two test prompts (six
videos), enough for a logistic fit and a model-level correlation over 3 generators."""


@dataclass
class DemoSettings:
    """Sizes of one demo run; ``quick`` shrinks everything for tests and smoke runs."""

    videos: int = 36
    size: int = 96
    seconds: float = 3.0
    fps: int = 8
    trials: int = 5
    clip_frames: int = 8
    mlp_epochs: int = 60
    seed: int = 0

    @classmethod
    def make(cls, videos: int = 36, quick: bool = False, seed: int = 0) -> DemoSettings:
        if quick:
            return cls(
                videos=videos,
                size=64,
                seconds=2.0,
                trials=3,
                clip_frames=4,
                mlp_epochs=20,
                seed=seed,
            )
        return cls(videos=videos, seed=seed)

    def extractors(self) -> dict[str, dict]:
        # ViT-S-32: the smallest open_clip ViT; random init, stamped RANDOM-INIT in the cache.
        return {
            "handcrafted": {"max_frames": 32, "size": 128},
            "clip-frames": {"random_init": True, "arch": "ViT-S-32", "n_frames": self.clip_frames},
            "clip-text": {"random_init": True, "arch": "ViT-S-32"},
        }

    def heads(self) -> dict[str, tuple[str, dict]]:
        """Display name -> (registered head, parameters): two classical heads, one deep head."""
        return {
            "svr": ("svr", {"features": ["handcrafted"], "search": "standard"}),
            "lightgbm": (
                "lightgbm",
                {
                    "features": ["handcrafted", "clip-frames"],
                    "n_estimators": 100,
                    "min_child_samples": 3,
                },
            ),
            "mlp": (
                "mlp",
                {
                    "features": ["handcrafted", "clip-frames"],
                    "hidden": 64,
                    "epochs": self.mlp_epochs,
                },
            ),
        }


@dataclass
class DemoResult:
    out: Path
    report: Path
    results: list  # EvaluationResult per head
    best_head: str
    timings: dict[str, float]
    html: Path | None = None  # out/report.html (aigvqa report)


def run_demo(
    out: str | Path = "aigvqa-demo",
    videos: int = 36,
    *,
    quick: bool = False,
    seed: int = 0,
    n_workers: int | None = None,
    client=None,
    progress: bool = True,
    echo=print,
) -> DemoResult:
    """Render the demo dataset, extract features, evaluate three heads prompt-disjoint, train
    the best on everything, score the videos with it and write ``out/report/``."""
    import time
    import warnings

    from aigvqa.pipeline.evaluation.metrics import MappingFitWarning
    from aigvqa.pipeline.extract import extract
    from aigvqa.pipeline.model.score import score
    from aigvqa.pipeline.model.train import fit_head
    from aigvqa.pipeline.training_data import build_head, load_training_data

    settings = DemoSettings.make(videos, quick, seed)
    out = Path(out)
    timings: dict[str, float] = {}
    echo(RANDOM_WEIGHTS_BANNER)

    t = time.perf_counter()
    echo(
        f"\n[1/5] rendering {settings.videos} synthetic videos ({settings.size}x{settings.size}, "
        f"{settings.seconds:g} s) into {out / 'videos'}"
    )
    manifest, demo_videos = make_demo_dataset(
        out,
        settings.videos,
        size=settings.size,
        seconds=settings.seconds,
        fps=settings.fps,
        seed=seed,
        progress=progress,
    )
    timings["render"] = time.perf_counter() - t

    t = time.perf_counter()
    cache = out / "features.h5"
    echo(
        "\n[2/5] extracting handcrafted + RANDOM-INIT clip-frames / clip-text features into "
        f"{cache}"
    )
    records = [v.record(out) for v in demo_videos]
    extracted = extract(
        records,
        settings.extractors(),
        cache,
        n_workers=n_workers,
        client=client,
        progress=progress,
        dashboard_address=None,
    )
    echo(extracted.summary())
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    data = load_training_data(cache, labels=list(LABEL_NAMES))
    echo(
        f"\n[3/5] evaluating 3 heads, split {DEMO_SPLIT}, {settings.trials} trials each, on "
        f"{data.describe()}"
    )
    results = []
    with warnings.catch_warnings():
        # a handful of test videos per trial: logistic fits often fall back; the tables count them
        warnings.simplefilter("ignore", MappingFitWarning)
        warnings.filterwarnings("ignore", message="model-level correlation needs")
        from aigvqa.pipeline.evaluation.evaluate import evaluate

        for name, params in settings.heads().values():
            _, head = build_head(name, params=params)
            results.append(
                evaluate(
                    head,
                    data.X,
                    data.y,
                    data.groups,
                    split=DEMO_SPLIT,
                    trials=settings.trials,
                    seed=seed,
                    label_names=data.label_names,
                    progress=progress,
                )
            )
    timings["evaluate"] = time.perf_counter() - t

    t = time.perf_counter()
    best, close = rank_heads(results)
    name, params = settings.heads()[best.head]
    echo(f"\n[4/5] {best_head_sentence(best, close)}")
    echo(f"training {best.head} on all {len(data.X)} videos and scoring them with the saved bundle")
    # the bundle records the features the head reads, no more: a handcrafted-only head
    # then scores a bare video without asking for its prompt
    train_data = load_training_data(cache, features=params["features"], labels=list(LABEL_NAMES))
    _, head = build_head(name, params=params)
    fit_head(head, train_data)
    from aigvqa.pipeline.model.bundle import save_bundle

    model = save_bundle(
        head,
        out / "model",
        train_data.provenance,
        train_data.X.names,
        train_data.label_names,
        head_name=name,
    )
    scores_csv = out / "scores.csv"
    scores_csv.unlink(missing_ok=True)
    scored = score(records, model, scores_csv, cache=cache, progress=False)
    echo(scored.summary())
    timings["train+score"] = time.perf_counter() - t

    t = time.perf_counter()
    echo(f"\n[5/5] writing the report to {out / 'report'} and {out / 'report.html'}")
    report = write_demo_report(
        out / "report", results, data, settings, demo_videos, best, close, timings, cache
    )
    html_report = write_demo_html(out, scores_csv, cache, results, best, progress)
    timings["report"] = time.perf_counter() - t
    echo(f"\n{results_table(results, data.label_names)}\n")
    echo(f"What the columns mean:\n{metric_legend(m for m, _ in SUMMARY_METRICS)}\n")
    echo(f"report: {report}  (plots and results.csv next to it)")
    echo(f"page to look at (opens from disk, in any browser): {html_report.path}")
    echo("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    echo(RANDOM_WEIGHTS_BANNER)
    echo(f"\n{ALIGNMENT_NOTE}")
    return DemoResult(out, report, results, best.head, timings, html_report.path)


SUMMARY_METRICS = (
    ("srcc", "SRCC"),
    ("plcc_logistic", "PLCC (logistic)"),
    ("krcc", "KRCC"),
    ("rmse", "RMSE"),
    ("pair_acc", "pair acc (in prompt)"),
    ("model_srcc", "model SRCC"),
)

ALIGNMENT_NOTE = (
    "Alignment the way the AIGC papers measure it needs real image-text weights, which this demo "
    "does not download: `blip-itm` (BLIP's ITM probability, ITC cosine and image embedding of "
    "every frame against the video's prompt), `blip-text` (the prompt's BLIP embedding) and "
    "`imagereward` (ImageReward's reward per frame). Put the weights in place "
    "(docs/extracting.md, 'Where weights come from') and add them to the extractors, e.g. "
    "`aigvqa extract manifest.csv --extractors "
    "handcrafted,blip-itm,blip-text,imagereward --cache features.h5`; the `branchsum` head's "
    "alignment branch then reads `blip-itm-match` and `imagereward` per frame, and the "
    "`mismatch` videos of this dataset (another prompt's scene) are what they should catch."
)


RANK_LABEL = "overall"


def rank_heads(results, label: str = RANK_LABEL):
    """The result with the highest median SRCC on ``label``, and the others whose median is
    within one std (the larger of the two) of it: heads the trials cannot tell apart."""

    def median(r):
        return float(np.nan_to_num(r.median("srcc", label), nan=-1.0))

    ranked = sorted(results, key=median, reverse=True)
    best = ranked[0]
    close = [
        r
        for r in ranked[1:]
        if median(best) - median(r)
        <= max(np.nan_to_num(best.std("srcc", label)), np.nan_to_num(r.std("srcc", label)))
    ]
    return best, close


def best_head_sentence(best, close, label: str = RANK_LABEL) -> str:
    """The choice of the head to train, in words that do not claim more than the trials show."""

    def cell(r):
        return f"{r.median('srcc', label):.3f} ± {r.std('srcc', label):.3f}"

    text = (
        f"highest median SRCC on {label}: {best.head} ({cell(best)}, "
        f"median ± std over {len(best.trials)} trials)"
    )
    if close:
        others = ", ".join(f"{r.head} ({cell(r)})" for r in close)
        verb = "is" if len(close) == 1 else "are"
        text += (
            f"; {others} {verb} within one std of it, so these trials do not tell "
            f"{'them' if len(close) > 1 else 'the two'} apart (a few test videos per trial): "
            f"{best.head} is trained because its median is highest, not because it is shown to be "
            "better"
        )
    return text


def results_table(results, label_names) -> str:
    """Markdown: one row per head and MOS dimension, median ± std of the main metrics."""
    lines = [
        "| head | dimension | " + " | ".join(h for _, h in SUMMARY_METRICS) + " |",
        "|---|---|" + "---|" * len(SUMMARY_METRICS),
    ]
    for r in results:
        for label in label_names:
            cells = [
                f"{r.median(m, label):.3f} ± {r.std(m, label):.3f}"
                for m, _ in SUMMARY_METRICS
                if m in r.metric_names()
            ]
            lines.append(f"| {r.head} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_demo_html(out: Path, scores_csv: Path, cache: Path, results, best, progress: bool):
    """``out/report.html``: the trained head's scores against MOS, the heads' cross-validated
    table and the lowest / highest scored videos with their frames (``aigvqa report``)."""
    from aigvqa.pipeline.html_report import write_report

    return write_report(
        [scores_csv, cache],
        out / "report.html",
        title="aigvqa demo report",
        results=results,
        notes=[
            "RANDOM WEIGHTS: the clip-frames and clip-text features of this demo come from "
            "randomly initialised networks (nothing was downloaded); numbers made from them are "
            "for plumbing only. The handcrafted features are real measurements.",
            f"The scores are those of the {best.head} head trained on every demo video, scoring "
            "the same videos (in-sample): the first table says how well it fits them, not how "
            f"well it generalises. The cross-validated table ({DEMO_SPLIT}: no test prompt is "
            "seen in training) is the evaluation.",
        ],
        progress=progress,
    )


def write_demo_report(
    folder: Path,
    results,
    data,
    settings: DemoSettings,
    videos: list[DemoVideo],
    best,
    close,
    timings: dict[str, float],
    cache: Path,
) -> Path:
    from aigvqa.cache import FeatureCache
    from aigvqa.pipeline.evaluation.report import evaluation_plots, write_csv

    folder.mkdir(parents=True, exist_ok=True)
    rows = [row for r in results for row in r.rows()]
    write_csv(rows, folder / "results.csv")
    generators = np.asarray(data.groups["generator"], dtype=object)
    plots = evaluation_plots(
        results, folder, color_by=generators, title=f"demo, {DEMO_SPLIT}: median over trials"
    )
    bars = [p for p in plots if p.name == "srcc-plcc.png"]
    shown = bars + [p for p in plots if p.name.startswith(f"scatter-{best.head}-")]
    store = FeatureCache(cache)
    feature_rows = []
    for g in store.groups():
        info = store.group_info(g)
        feature_rows.append(
            f"| {g} | {info.keyed_by} | {info.t_max} | {info.dim} | "
            f"{'**RANDOM-INIT**' if info.random_init else (info.weights or 'none')} |"
        )
    n_prompts = len({v.prompt_id for v in videos})
    doc = (demo_dataset.__doc__ or "").split("The demo dataset\n----------------\n", 1)[-1].strip()
    md = [
        "# aigvqa demo report",
        "",
        "> **RANDOM WEIGHTS.** The `clip-frames` and `clip-text` features below come from randomly",
        "> initialised networks (nothing was downloaded). Their numbers are for plumbing only.",
        "> The `handcrafted` features (sharpness, noise, flicker, flow) are real measurements.",
        "",
        f"{len(videos)} synthetic videos, {n_prompts} prompts x {len(GENERATOR_PROFILES)} "
        f"fake generators, {settings.size}x{settings.size} px, "
        f"{settings.seconds:g} s at {settings.fps} fps.",
        "",
        "## Dataset and labels",
        "",
        doc,
        "",
        "## Features",
        "",
        "| group | keyed by | T max | D | weights |",
        "|---|---|---|---|---|",
        *feature_rows,
        "",
        f"## Results: {DEMO_SPLIT}, {settings.trials} trials, median ± std",
        "",
        "Prompt-disjoint 70/30 splits: no prompt of a test set is seen in training.",
        "Pair acc (in prompt) is the fraction of one prompt's video pairs with different MOS",
        "that the prediction orders right (ties half), averaged over the test prompts.",
        "Model-level SRCC correlates the mean prediction and mean MOS of each generator in the",
        "test set (3 generators: a coarse number).",
        "",
        results_table(results, data.label_names),
        "",
        "What the columns mean:",
        "",
        metric_legend(m for m, _ in SUMMARY_METRICS),
        "",
        f"Head trained for the bundle: **{best.head}**, {best_head_sentence(best, close)}.",
        "",
        "Bars: median SRCC and PLCC over trials (error bars: std); scatter: every test prediction",
        "of every trial against its MOS, coloured by generator, with the fitted",
        "4-parameter logistic (not drawn where the fit would be decreasing: it would invert",
        "the ranking).",
        "",
        *[f"![{p.stem}]({p.name})" for p in shown],
        "",
        "Scatter plots of the other heads: "
        + ", ".join(f"[{p.stem}]({p.name})" for p in plots if p not in shown),
        "",
        "## Text-video alignment with real weights",
        "",
        ALIGNMENT_NOTE,
        "",
        "## Full tables",
        "",
        *[r.table() + "\n" for r in results],
        "## Files",
        "",
        "- `../manifest.csv`: the videos, prompts, generators and MOS (a generic aigvqa manifest)",
        "- `../distortions.jsonl`: the drawn distortion severities and noiseless truths per video",
        "- `../features.h5`: the feature cache (`aigvqa info ../features.h5`)",
        f"- `../model/`: the {best.head} head trained on every video (a model bundle);",
        "  `aigvqa score ../manifest.csv --model ../model --out scores.csv --cache ../features.h5`",
        "- `../scores.csv`: that model's scores of the demo videos (in-sample: not an evaluation)",
        "- `results.csv`: the summary rows of every head and dimension",
        "- `../report.html`: one page to look at: scores against MOS, the lowest and highest "
        "scored videos with their frames (`aigvqa report ../scores.csv ../features.h5`)",
        "",
        "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(md))
    return path
