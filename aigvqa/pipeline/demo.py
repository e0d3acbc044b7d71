"""``aigvqa demo``: the whole tool end to end on a dataset it makes itself, nothing downloaded.

The demo dataset
----------------
``make_demo_dataset`` renders a few dozen short synthetic "AI-generated" videos: each of
``n_prompts`` text prompts ("a red ball rolling across a green field", ...) is rendered by
three fake generators (``gen-alpha``, ``gen-beta``, ``gen-gamma``), so every prompt id is
shared by several videos (prompt-disjoint splits make sense) and generators differ in a
characteristic way (per-generator / model-level correlation makes sense).

A video is a textured background with a coloured shape moving across it. Each generator
draws six controlled distortions from its own profile (``GENERATOR_PROFILES``):

| distortion   | what is done                                                   | severity        |
|--------------|----------------------------------------------------------------|-----------------|
| blur         | Gaussian blur of every frame, sigma in [0, 2.5] px             | b = sigma / 2.5 |
| noise        | additive Gaussian noise, std in [0, 30] grey levels            | n = std / 30    |
| flicker      | per-frame brightness gain 1 + a * (+/-1), a in [0, 0.35]       | f = a / 0.35    |
| frame drops  | a fraction r in [0, 0.5] of frames repeats the previous frame  | d = r / 0.5     |
| content swap | halfway through, the scene of another prompt replaces it       | s in {0, 1}     |
| mismatch     | the whole video shows another prompt's scene                   | m in {0, 1}     |

The ground-truth quality on FETV's three dimensions (1..5) is

    static_quality   = 5 - 2.0 b - 1.8 n
    temporal_quality = 5 - 1.6 f - 1.6 d - 1.2 s
    alignment        = 5 - 2.8 m - 1.2 s - 0.4 b

each clipped to [1, 5]. Five simulated raters score every dimension as
``round(clip(truth + N(0, 0.5), 1, 5))`` (integers, as FETV's raters did); the label is the
raters' mean, and ``overall`` is the mean of the three dimensions. Everything is seeded,
so the same ``seed`` gives the same videos and labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aigvqa.pipeline.evaluation.metrics import metric_legend
from aigvqa.pipeline.records import VideoRecord

LABEL_NAMES = ("overall", "static_quality", "temporal_quality", "alignment")

# (prompt text, shape, shape colour RGB, background colour RGB, motion)
SCENES = (
    ("a red ball rolling across a green field", "circle", (220, 40, 40), (60, 150, 60), "right"),
    ("a yellow square sliding down a blue wall", "square", (240, 220, 40), (40, 70, 170), "down"),
    (
        "a white diamond drifting through a night sky",
        "diamond",
        (245, 245, 245),
        (20, 20, 50),
        "diagonal",
    ),
    (
        "an orange circle bouncing on a grey floor",
        "circle",
        (250, 140, 20),
        (120, 120, 120),
        "bounce",
    ),
    ("a purple square gliding over desert sand", "square", (140, 50, 170), (210, 180, 120), "left"),
    ("a cyan ball orbiting in a dark room", "circle", (40, 220, 220), (35, 30, 30), "orbit"),
    ("a black diamond falling onto snow", "diamond", (15, 15, 15), (235, 235, 240), "down"),
    ("a pink square rising through pale water", "square", (240, 110, 170), (120, 180, 210), "up"),
    ("a green ball crossing a red carpet", "circle", (40, 200, 70), (150, 30, 40), "left"),
    (
        "a blue diamond circling over a yellow meadow",
        "diamond",
        (30, 60, 220),
        (220, 210, 90),
        "orbit",
    ),
    (
        "a brown square zigzagging across a white table",
        "square",
        (120, 70, 30),
        (230, 230, 220),
        "zigzag",
    ),
    (
        "a magenta ball swinging in front of a teal curtain",
        "circle",
        (220, 40, 200),
        (30, 120, 120),
        "swing",
    ),
)

# Mean severity (blur, noise, flicker, drops in [0, 1]) and event probabilities per fake generator.
GENERATOR_PROFILES = {
    "gen-alpha": {
        "blur": 0.15,
        "noise": 0.15,
        "flicker": 0.70,
        "drops": 0.15,
        "swap": 0.30,
        "mismatch": 0.10,
    },
    "gen-beta": {
        "blur": 0.70,
        "noise": 0.40,
        "flicker": 0.15,
        "drops": 0.35,
        "swap": 0.10,
        "mismatch": 0.30,
    },
    "gen-gamma": {
        "blur": 0.20,
        "noise": 0.70,
        "flicker": 0.30,
        "drops": 0.70,
        "swap": 0.20,
        "mismatch": 0.20,
    },
}

MAX_BLUR_SIGMA = 2.5
MAX_NOISE_STD = 30.0
MAX_FLICKER = 0.35
MAX_DROP_FRACTION = 0.5
NUM_RATERS = 5
RATER_NOISE = 0.5


@dataclass
class DemoVideo:
    """One rendered demo video: what was done to it and the labels derived from that."""

    video_id: str
    path: str
    prompt: str
    prompt_id: str
    generator: str
    scene: int  # index of the scene actually rendered first (differs from the prompt's on mismatch)
    distortions: dict[str, float] = field(default_factory=dict)
    truth: dict[str, float] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)

    def record(self, root: Path) -> VideoRecord:
        return VideoRecord(
            self.video_id,
            Path(root) / self.path,
            self.prompt,
            dict(self.labels),
            {"prompt": self.prompt_id, "generator": self.generator},
        )


def quality_from_distortions(d: dict[str, float]) -> dict[str, float]:
    """The documented formula (module docstring) from severities in [0, 1] to 1..5 truths."""
    b, n, f, r = d["blur"], d["noise"], d["flicker"], d["drops"]
    s, m = d["swap"], d["mismatch"]
    truth = {
        "static_quality": 5 - 2.0 * b - 1.8 * n,
        "temporal_quality": 5 - 1.6 * f - 1.6 * r - 1.2 * s,
        "alignment": 5 - 2.8 * m - 1.2 * s - 0.4 * b,
    }
    return {k: float(np.clip(v, 1.0, 5.0)) for k, v in truth.items()}


def rate(truth: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """Mean of ``NUM_RATERS`` integer ratings per dimension, plus ``overall``."""
    labels = {}
    for dim, value in truth.items():
        scores = np.clip(np.rint(value + rng.normal(0.0, RATER_NOISE, NUM_RATERS)), 1, 5)
        labels[dim] = float(scores.mean())
    labels["overall"] = float(np.mean([labels[d] for d in truth]))
    return {k: round(labels[k], 4) for k in LABEL_NAMES}


def _draw_distortions(profile: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    d = {
        k: float(np.clip(profile[k] + rng.uniform(-0.3, 0.3), 0.0, 1.0))
        for k in ("blur", "noise", "flicker", "drops")
    }
    d["swap"] = float(rng.random() < profile["swap"])
    d["mismatch"] = float(rng.random() < profile["mismatch"])
    return d


def _texture(size: int, seed: int) -> np.ndarray:
    """A fixed fine texture (grating + grain) so blur visibly removes detail. [H, W] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(3.0, 6.0)
    angle = rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    grain = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    return 0.6 * grating + 0.4 * grain


def _position(motion: str, t: float, size: int) -> tuple[float, float]:
    """Centre (x, y) of the shape at time t in [0, 1]."""
    lo, hi = 0.2 * size, 0.8 * size
    span = hi - lo
    mid = size / 2
    if motion == "right":
        return lo + span * t, mid
    if motion == "left":
        return hi - span * t, mid
    if motion == "down":
        return mid, lo + span * t
    if motion == "up":
        return mid, hi - span * t
    if motion == "diagonal":
        return lo + span * t, lo + span * t
    if motion == "bounce":
        return lo + span * t, hi - span * abs(np.sin(2 * np.pi * t))
    if motion == "orbit":
        return mid + 0.3 * size * np.cos(2 * np.pi * t), mid + 0.3 * size * np.sin(2 * np.pi * t)
    if motion == "zigzag":
        return lo + span * t, mid + 0.25 * size * np.sign(np.sin(4 * np.pi * t))
    if motion == "swing":
        return mid + 0.3 * size * np.sin(2 * np.pi * t), mid
    raise ValueError(f"unknown motion {motion!r}")


def render_scene(scene: int, t: float, size: int) -> np.ndarray:
    """One clean frame [size, size, 3] uint8 of a scene at time t in [0, 1]."""
    _, shape, colour, background, motion = SCENES[scene]
    tex = _texture(size, seed=1000 + scene)
    frame = np.asarray(background, np.float32)[None, None, :] + 28.0 * tex[..., None]
    cx, cy = _position(motion, t, size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    r = 0.14 * size
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    else:  # diamond
        inside = np.abs(x - cx) + np.abs(y - cy) <= 1.3 * r
    frame[inside] = np.asarray(colour, np.float32) + 10.0 * tex[inside][:, None]
    return np.clip(frame, 0, 255).astype(np.uint8)


def render_video(
    scene: int,
    distortions: dict[str, float],
    *,
    size: int,
    num_frames: int,
    swap_scene: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Frames [T, size, size, 3] uint8 of ``scene`` with the given distortion severities."""
    import cv2

    frames = []
    for i in range(num_frames):
        t = i / max(num_frames - 1, 1)
        shown = swap_scene if distortions["swap"] and i >= num_frames // 2 else scene
        frames.append(render_scene(shown, t, size).astype(np.float32))
    video = np.stack(frames)
    sigma = distortions["blur"] * MAX_BLUR_SIGMA
    if sigma > 0.05:
        video = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in video])
    if distortions["flicker"] > 0:
        signs = rng.choice([-1.0, 1.0], num_frames)
        gains = 1.0 + distortions["flicker"] * MAX_FLICKER * signs
        video = video * gains[:, None, None, None]
    std = distortions["noise"] * MAX_NOISE_STD
    if std > 0:
        video = video + rng.normal(0.0, std, video.shape).astype(np.float32)
    drops = int(round(distortions["drops"] * MAX_DROP_FRACTION * (num_frames - 1)))
    if drops:
        # A dropped frame repeats its predecessor: stutter, as in low-frame-rate generators.
        for i in sorted(rng.choice(np.arange(1, num_frames), drops, replace=False)):
            video[i] = video[i - 1]
    return np.clip(video, 0, 255).astype(np.uint8)


def make_demo_dataset(
    out_dir: str | Path,
    num_videos: int = 36,
    *,
    size: int = 96,
    seconds: float = 3.0,
    fps: int = 8,
    seed: int = 0,
    ext: str = ".mp4",
    progress: bool = True,
) -> tuple[Path, list[DemoVideo]]:
    """Render the demo videos into ``out_dir/videos`` and write ``out_dir/manifest.csv``.

    The manifest is a generic CSV manifest (``write_manifest_csv``: video_id, path, prompt,
    ``mos_<label>`` per label of ``LABEL_NAMES``, prompt_id, generator);
    ``out_dir/distortions.jsonl`` records the drawn severities and noiseless truths of every
    video. Returns the manifest path and the videos.
    """
    from tqdm.auto import tqdm

    from aigvqa.extractors.decode import write_video
    from aigvqa.pipeline.manifest import write_manifest_csv

    if num_videos < 6:
        raise ValueError("the demo needs at least 6 videos (2 prompts x 3 generators)")
    out_dir = Path(out_dir)
    video_dir = out_dir / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    generators = list(GENERATOR_PROFILES)
    num_prompts = min(len(SCENES), -(-num_videos // len(generators)))
    rng = np.random.default_rng(seed)
    num_frames = max(int(round(seconds * fps)), 4)
    videos: list[DemoVideo] = []
    for i in tqdm(
        range(num_videos), desc="rendering demo videos", unit="video", disable=not progress
    ):
        prompt_index = i // len(generators) % num_prompts
        generator = generators[i % len(generators)]
        d = _draw_distortions(GENERATOR_PROFILES[generator], rng)
        others = [s for s in range(len(SCENES)) if s != prompt_index]
        scene = int(rng.choice(others)) if d["mismatch"] else prompt_index
        swap_scene = int(rng.choice([s for s in others if s != scene]))
        frames = render_video(
            scene, d, size=size, num_frames=num_frames, swap_scene=swap_scene, rng=rng
        )
        video_id = f"demo{i:03d}"
        path = video_dir / f"{video_id}{ext}"
        write_video(path, frames, fps)
        truth = quality_from_distortions(d)
        videos.append(
            DemoVideo(
                video_id=video_id,
                path=str(path.relative_to(out_dir)),
                prompt=SCENES[prompt_index][0],
                prompt_id=f"prompt{prompt_index:02d}",
                generator=generator,
                scene=scene,
                distortions=d,
                truth={k: round(v, 4) for k, v in truth.items()},
                labels=rate(truth, rng),
            )
        )
    manifest = write_manifest_csv([v.record(out_dir) for v in videos], out_dir / "manifest.csv")
    with open(out_dir / "distortions.jsonl", "w") as fh:
        for v in videos:
            fh.write(json.dumps(asdict(v)) + "\n")
    return manifest, videos


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
    echo(f"\n[5/5] writing the report to {out / 'report'}")
    report = write_demo_report(
        out / "report", results, data, settings, demo_videos, best, close, timings, cache
    )
    timings["report"] = time.perf_counter() - t
    echo(f"\n{results_table(results, data.label_names)}\n")
    echo(f"What the columns mean:\n{metric_legend(m for m, _ in SUMMARY_METRICS)}\n")
    echo(f"report: {report}  (plots and results.csv next to it)")
    echo("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    echo(RANDOM_WEIGHTS_BANNER)
    echo(f"\n{ALIGNMENT_NOTE}")
    return DemoResult(out, report, results, best.head, timings)


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
    "`imagereward` (ImageReward's reward per frame). Put the weights in place (README, "
    "Extractors) and add them to the extractors, e.g. `aigvqa extract manifest.csv --extractors "
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
    doc = (__doc__ or "").split("The demo dataset\n----------------\n", 1)[-1].strip()
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
        "",
        "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(md))
    return path
