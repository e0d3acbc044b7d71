"""Stage-one throughput and memory (prints measured numbers; nothing is asserted).

    python bench/extract_throughput.py                      # both inputs; RSS 10 s vs 120 s 1080p
    python bench/extract_throughput.py --inputs hd --no-rss # quicker

Two inputs of N generated clips each: ``hd`` (720p, 2 s: decoding matters) and ``t2v``
(512 x 512, 4 s: what text-to-video generators emit). One extractor mix of small backbones
(random init: same compute as real weights). Each run is timed after a warm-up that loads
the models:

  (a) peer-style script: for each extractor, for each video, decode the whole video to
      RGB again (OpenCV, as research scripts do), build that extractor's view from the
      decoded array and run the forward pass; one process, sequential;
  (b) ``aigvqa.pipeline.extract`` on a LocalCluster of 1 worker (decode once per video,
      every extractor, shards, merge; a decoder thread runs ahead of the forward passes);
  (c) the same with 2 workers;
  (b1), (c1) (b) and (c) with ``videos_in_flight=1``: decoding and forward passes in turn;
  (d) the pure forward time of the same extractors on views decoded beforehand (the
      compute floor of (b)).

Every run uses one torch thread per worker/process. Ratios are throughputs (videos/s):
targets (b)/(a) >= 2 (on the input where decoding matters), (b)/(d) >= 0.9,
(c)/(b) >= 1.7. The workers' CPU time is measured too: (b) keeps more than one core busy
(its decoder thread runs beside the forward passes), and the bench prints how far
(c)/(b) can go on this machine's cores. Then the peak RSS of a fresh worker running the
pipeline on one 1080p clip of 10 s and one of 120 s (it should be flat: the decoder
streams, views keep only the frames of unfinished items, and the decoder thread holds at
most ``PREFETCH_BYTES`` of items ahead).

The numbers depend on the machine and on what else runs on it: the script prints the core
count and load average next to each table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aigvqa.extractors import create_extractor
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.views import build_views, views_from_array
from aigvqa.pipeline.records import VideoRecord

MIX = {
    # Small backbones on HD input: the mix where decoding matters (a ViT-B on CPU would
    # hide any decode cost). Random init: same compute as trained weights.
    "clip-frames": {"arch": "ViT-S-32", "pretrained": "", "n_frames": 8, "random_init": True,
                    "batch_size": 8},
    "vit-keyframes": {"arch": "vit_tiny_patch16_224", "random_init": True, "batch_size": 8},
    "handcrafted": {"max_frames": 16, "size": 128},
}
FPS = 24


# -- inputs ---------------------------------------------------------------------------------
def make_clip(path: Path, seconds: float, height: int, width: int, seed: int) -> Path:
    """A synthetic clip; 24 distinct frames cycled (computing HD patterns is the slow part)."""
    if path.exists():
        return path
    import cv2

    base = [cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
            for f in moving_pattern(24, max(2, height // 4), max(2, width // 4), seed=seed)]
    n = int(round(seconds * FPS))
    tmp = path.with_suffix(".tmp.mp4")
    write_video(tmp, (base[i % len(base)] for i in range(n)), FPS)
    tmp.replace(path)
    return path


def loop_clip(source: Path, path: Path, times: int) -> Path:
    """``source`` repeated ``times`` times by remuxing packets (no re-encode: fast)."""
    if path.exists():
        return path
    import av

    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(source)) as src, av.open(str(tmp), "w") as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        packets = [p for p in src.demux(in_stream) if p.size]
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + packets[1].duration
        for k in range(times):
            for p in packets:
                p.stream = out_stream
                p.pts += span if k else 0
                p.dts += span if k else 0
                dst.mux(p)
    tmp.replace(path)
    return path


# -- (a) and (d): in-process, one torch thread ------------------------------------------------
def load_models(mix):
    import torch

    torch.set_num_threads(1)
    models = [create_extractor(name, **cfg) for name, cfg in mix.items()]
    for m in models:
        m.load(m.config().get("device", "cpu"))
    return models


def forward_all(model, items: list[np.ndarray]) -> np.ndarray:
    batch = int(model.config().get("batch_size", 16))
    out = [model.forward(np.stack(items[i : i + batch])) for i in range(0, len(items), batch)]
    return np.concatenate(out)


def decode_all_opencv(path: Path) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def peer_style(models, paths) -> float:
    started = time.perf_counter()
    for model in models:
        view = model.view()
        for path in paths:
            video = decode_all_opencv(path)  # decoded again for every extractor
            items = views_from_array(video, [view], fps=FPS)[view.key]
            del video
            forward_all(model, items)
    return time.perf_counter() - started


def pure_forward(models, paths) -> float:
    views = [m.view() for m in models]
    decoded = [build_views(p, views) for p in paths]  # not timed
    started = time.perf_counter()
    for per_video in decoded:
        for model in models:
            forward_all(model, per_video[model.view().key])
    return time.perf_counter() - started


# -- (b), (c): the pipeline -------------------------------------------------------------------
def pipeline(paths, n_workers: int, workdir: Path, videos_in_flight: int = 2) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the worker processes) of one ``extract`` run."""
    from distributed import Client

    from aigvqa.pipeline import extract as ex
    from aigvqa.pipeline.extract.cluster import local_cluster

    def cpu_seconds() -> float:
        import psutil

        times = psutil.Process().cpu_times()
        return times.user + times.system

    records = [VideoRecord(p.stem, p) for p in paths]
    with local_cluster(n_workers, dashboard_address=":0") as cluster, Client(cluster) as client:
        extractors = ex.resolve_extractors(MIX)
        client.run(lambda: [ex._loaded(e) for e in extractors])  # load models everywhere
        cpu_before = sum(client.run(cpu_seconds).values())
        started = time.perf_counter()
        report = ex.extract(records, MIX, workdir / f"pipeline-{n_workers}-{videos_in_flight}.h5",
                            client=client, progress=False, videos_in_flight=videos_in_flight)
        seconds = time.perf_counter() - started
        cpu = sum(client.run(cpu_seconds).values()) - cpu_before
    assert report.succeeded == len(paths), report.summary()
    return seconds, cpu


def worker_peak_rss(path: Path, workdir: Path, tag: str) -> tuple[float, float]:
    """(MiB after loading the models, peak MiB while extracting ``path`` twice) of a fresh worker,
    sampled every 10 ms in the worker (``ru_maxrss`` would include the peak of the parent
    process the worker was forked from)."""
    from distributed import Client

    from aigvqa.pipeline import extract as ex
    from aigvqa.pipeline.extract.cluster import local_cluster

    def start_sampling(dask_worker) -> float:
        import threading

        import psutil

        proc = psutil.Process()
        dask_worker.rss_peak = proc.memory_info().rss
        dask_worker.rss_sampling = True

        def sample():
            while dask_worker.rss_sampling:
                dask_worker.rss_peak = max(dask_worker.rss_peak, proc.memory_info().rss)
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()
        return dask_worker.rss_peak / 2**20

    def stop_sampling(dask_worker) -> float:
        dask_worker.rss_sampling = False
        return dask_worker.rss_peak / 2**20

    with local_cluster(1, dashboard_address=":0") as cluster, Client(cluster) as client:
        extractors = ex.resolve_extractors(MIX)
        client.run(lambda: [ex._loaded(e) for e in extractors])
        (loaded,) = client.run(start_sampling).values()
        # one worker task over the clip twice (two ids), so its decoder thread runs ahead
        records = [VideoRecord(f"{tag}-{k}", path) for k in range(2)]
        client.submit(ex.run_video_chunk, records, extractors, str(workdir / f"rss-{tag}.h5"),
                      videos_in_flight=2, decode_threads=1, pure=False).result()
        (peak,) = client.run(stop_sampling).values()
    return loaded, peak


# -- main -------------------------------------------------------------------------------------
INPUTS = {
    # label: (seconds, height, width) -- HD, where decoding matters, and the size text-to-video
    # generators emit (T2VQA-DB, FETV-style clips: 512 x 512, a few seconds)
    "hd": (2.0, 720, 1280),
    "t2v": (4.0, 512, 512),
}
ROWS = [
    ("(a) peer-style: decode per extractor, sequential", "a"),
    ("(b) aigvqa extract, 1 worker", "b"),
    ("(b1) same, videos_in_flight=1 (decode and compute in turn)", "b1"),
    ("(c) aigvqa extract, 2 workers", "c"),
    ("(c1) same, videos_in_flight=1", "c1"),
    ("(d) pure forward on pre-decoded views", "d"),
]


def measure(paths, workdir: Path) -> tuple[dict, dict]:
    """Wall seconds of every run and the workers' CPU seconds of the pipeline runs."""
    times, cpu = {}, {}
    models = load_models(MIX)
    peer_style(models, paths[:1])  # warm-up (allocators, lazy imports)
    times["a"] = peer_style(models, paths)
    print(f"(a) peer-style: {times['a']:.1f} s", flush=True)
    times["d"] = pure_forward(models, paths)
    print(f"(d) pure forward: {times['d']:.1f} s", flush=True)
    del models
    for key, workers, in_flight in (("b", 1, 2), ("c", 2, 2), ("b1", 1, 1), ("c1", 2, 1)):
        times[key], cpu[key] = pipeline(paths, workers, workdir, videos_in_flight=in_flight)
        print(f"({key}) pipeline, {workers} worker(s), videos_in_flight={in_flight}: {times[key]:.1f} s "
              f"({cpu[key]:.1f} CPU s in the workers)", flush=True)
    return times, cpu


def report(label: str, n: int, times: dict, cpu: dict) -> None:
    cores = os.cpu_count() or 1
    print()
    print(f"input {label}; machine: {cores} cores, load average {os.getloadavg()[0]:.1f} "
          "(other processes share these cores)")
    print()
    print("| run | seconds | videos/s | throughput vs (a) |")
    print("|---|---:|---:|---:|")
    for row_label, key in ROWS:
        print(f"| {row_label} | {times[key]:.1f} | {n / times[key]:.2f} | {times['a'] / times[key]:.2f}x |")
    print()
    ratios = [
        ("(b)/(a) decode once vs per extractor", times["a"] / times["b"], 2.0),
        ("(b)/(d) pipeline vs pure forward", times["d"] / times["b"], 0.9),
        ("(c)/(b) 2 workers vs 1", times["b"] / times["c"], 1.7),
    ]
    for ratio_label, value, target in ratios:
        print(f"{ratio_label}: {value:.2f} (target >= {target}) {'met' if value >= target else 'NOT met'}")
    # What the cores allow: two workers need at least the CPU time of the work, divided
    # by the cores, so (c)/(b) cannot exceed (b) x cores / (CPU seconds of the work).
    work = min(cpu["b1"], cpu["b"])
    print(f"(b) kept {cpu['b'] / times['b']:.2f} cores busy; the work costs {work:.1f} CPU s "
          f"({1e3 * max(0.0, work - times['d']) / n:.0f} ms of decoding per video beside "
          f"{1e3 * times['d'] / n:.0f} ms of forward), so on {cores} cores (c)/(b) can reach at most "
          f"{min(2.0, times['b'] * cores / work):.2f} here")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--inputs", default="hd,t2v",
                        help="comma list of: " + ", ".join(f"{k} ({w}x{h}, {s:g} s)" for k, (s, h, w) in INPUTS.items()))
    parser.add_argument("--data-dir", type=Path, help="keep generated clips here between runs")
    parser.add_argument("--no-rss", action="store_true", help="skip the 10 s vs 120 s 1080p memory check")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = args.data_dir or workdir
        data.mkdir(parents=True, exist_ok=True)
        print("extractors: " + ", ".join(f"{k} {v}" for k, v in MIX.items()), flush=True)
        results = {}
        for label in [x for x in args.inputs.split(",") if x]:
            seconds, height, width = INPUTS[label]
            started = time.perf_counter()
            paths = [
                make_clip(data / f"clip{width}x{height}-{seconds:g}s-{i:03d}.mp4", seconds, height, width, seed=i)
                for i in range(args.videos)
            ]
            print(f"input {label}: {len(paths)} clips {width}x{height}, {seconds:g} s at {FPS} fps "
                  f"(made in {time.perf_counter() - started:.0f} s)", flush=True)
            results[label] = measure(paths, workdir)
        for label, (times, cpu) in results.items():
            seconds, height, width = INPUTS[label]
            report(f"{label} ({args.videos} clips {width}x{height}, {seconds:g} s)", args.videos, times, cpu)

        if not args.no_rss:
            print()
            short = make_clip(data / "rss-1080p-10s.mp4", 10, 1080, 1920, seed=99)
            long = loop_clip(short, data / "rss-1080p-120s.mp4", 12)
            print("| input (1080p, 24 fps) | worker RSS after loading models (MiB) | peak worker RSS (MiB) |")
            print("|---|---:|---:|")
            for label, path in (("10 s", short), ("120 s", long)):
                loaded, peak = worker_peak_rss(path, workdir, label.replace(" ", ""))
                print(f"| {label} | {loaded:.0f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
