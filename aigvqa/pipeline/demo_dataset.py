"""The demo's synthetic dataset (``aigvqa demo``, ``pipeline.demo``): videos, prompts,
fake generators, controlled distortions and simulated ratings, made here, nothing downloaded.

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
