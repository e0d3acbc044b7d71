"""Stage-one throughput and memory (prints measured numbers; nothing is asserted).

    python bench/extract_throughput.py                      # both inputs, the decode pool, RSS
    python bench/extract_throughput.py --inputs hd --no-rss # quicker
    python bench/extract_throughput.py --only pool          # the decode-pool comparison alone
    python bench/extract_throughput.py --device cuda        # a GPU node: end to end vs its ceilings

Two inputs of N generated clips each: ``hd`` (720p, 2 s: decoding matters) and ``t2v``
(512 x 512, 4 s: what text-to-video generators emit). One extractor mix of small backbones
(random init: same compute as real weights). Each run is timed after a warm-up that loads
the models:

  (a) peer-style script: for each extractor, for each video, decode the whole video to
      RGB again (OpenCV, as research scripts do), build that extractor's view from the
      decoded array and run the forward pass; one process, sequential;
  (b) ``aigvqa.pipeline.extract`` on a LocalCluster of 1 worker (decode once per video,
      every extractor, shards, merge) with its default decode processes (the cores the
      worker can spare: 1 on 2 cores);
  (b0) the same with ``decode_workers=0``: a decoder thread in the worker runs ahead;
  (b2) the same worker running two tasks at once, each with its own decode process
      (``--threads-per-worker 2 --decode-workers 2``): one task's decoding overlaps the
      other's last forward passes, where (b) leaves its decode process idle at every task
      boundary;
  (c) the same with 2 workers (default: no decode processes on 2 cores);
  (b1), (c1) (b0) and (c) with ``videos_in_flight=1``: decoding and forward passes in turn;
  (d) the pure forward time of the same extractors on views decoded beforehand (the
      compute floor of (b)).

Every run uses one torch thread per worker/process. Ratios are throughputs (videos/s):
targets (b)/(a) >= 2 (on the input where decoding matters), (b)/(d) >= 0.9,
(c)/(b) >= 1.7. The workers' CPU time is measured too: (b) keeps more than one core busy
(its decoder runs beside the forward passes), and the bench prints how far (c)/(b) can go
on this machine's cores.

The decode pool: 1 model worker and one extractor cheap next to decoding (vit-keyframes,
``vit_tiny_patch16_224``, random init, 8 key frames of 720p clips of ``--pool-seconds``),
``decode_workers=2`` vs ``decode_workers=1`` (target >= 1.5 on 2 cores): with one decode
process the model waits for FFmpeg, with two the cores decode in parallel. The bench
first times decoding and the forward pass of a clip in one process and prints the best
ratio the cores allow (three processes share two cores).

Then the peak RSS of a fresh worker running the pipeline with 2 decode processes on one
1080p clip of 10 s and one of 120 s, for the worker and for its decode processes (it
should be flat: the decoder streams, views keep only the frames of unfinished items, and
the rings hold at most ``PREFETCH_BYTES`` of items ahead).

``--device cuda`` measures a GPU node instead (see ``node_report``): the paper set (six
backbones, random init) on 512 x 512 4-s clips end to end, with GPU utilisation sampled,
against the node's CPU decode ceiling (all views, one process per core) and the pure
forward with batches across videos.

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
    "clip-frames": {
        "arch": "ViT-S-32",
        "pretrained": "",
        "n_frames": 8,
        "random_init": True,
        "batch_size": 8,
    },
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

    base = [
        cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
        for f in moving_pattern(24, max(2, height // 4), max(2, width // 4), seed=seed)
    ]
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
def pipeline(
    paths,
    n_workers: int,
    workdir: Path,
    videos_in_flight: int = 2,
    decode_workers: int | None = None,
    mix=None,
    threads_per_worker: int = 1,
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the worker processes and their decode processes,
    decode processes per worker) of one ``extract`` run, after a warm-up run on two other
    ids (models loaded, decode processes started)."""

    from aigvqa.pipeline import extract as ex
    from aigvqa.pipeline.extract.cluster import ClusterSpec, open_cluster

    mix = MIX if mix is None else mix

    def cpu_seconds() -> float:
        import psutil

        me = psutil.Process()
        total = 0.0
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    records = [VideoRecord(p.stem, p) for p in paths]
    mix_tag = abs(hash(str(sorted(mix)))) % 10**6
    tag = f"{n_workers}x{threads_per_worker}-{videos_in_flight}-{decode_workers}-{mix_tag}"
    options = dict(progress=False, videos_in_flight=videos_in_flight, decode_workers=decode_workers)
    spec = ClusterSpec(
        n_workers=n_workers, threads_per_worker=threads_per_worker, dashboard_address=None
    )
    with open_cluster(spec) as client:
        warm = [VideoRecord(f"warm-{i}-{p.stem}", p) for i, p in enumerate(paths[: 2 * n_workers])]
        ex.extract(warm, mix, workdir / f"warm-{tag}.h5", client=client, chunk_size=1, **options)
        cpu_before = sum(client.run(cpu_seconds).values())
        started = time.perf_counter()
        report = ex.extract(records, mix, workdir / f"pipeline-{tag}.h5", client=client, **options)
        seconds = time.perf_counter() - started
        cpu = sum(client.run(cpu_seconds).values()) - cpu_before
    assert report.succeeded == len(paths), report.summary()
    return seconds, cpu, report.decode_workers


def worker_peak_rss(
    path: Path, workdir: Path, tag: str, decode_workers: int = 2
) -> tuple[float, float, float]:
    """(MiB after loading the models, peak MiB of the worker, peak MiB of its decode processes
    together) while a fresh worker extracts ``path`` twice with ``decode_workers`` decode
    processes; sampled every 10 ms in the worker (``ru_maxrss`` would include the peak of
    the parent process the worker was forked from)."""

    from aigvqa.pipeline import extract as ex
    from aigvqa.pipeline.extract.cluster import ClusterSpec, open_cluster
    from aigvqa.pipeline.extract.worker import loaded as load

    def start_sampling(dask_worker) -> float:
        import threading

        import psutil

        proc = psutil.Process()
        dask_worker.rss_peak = proc.memory_info().rss
        dask_worker.rss_children_peak = 0
        dask_worker.rss_sampling = True

        def sample():
            while dask_worker.rss_sampling:
                dask_worker.rss_peak = max(dask_worker.rss_peak, proc.memory_info().rss)
                children = 0
                for child in proc.children(recursive=True):
                    try:
                        children += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                dask_worker.rss_children_peak = max(dask_worker.rss_children_peak, children)
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()
        return dask_worker.rss_peak / 2**20

    def stop_sampling(dask_worker) -> tuple[float, float]:
        dask_worker.rss_sampling = False
        return dask_worker.rss_peak / 2**20, dask_worker.rss_children_peak / 2**20

    with open_cluster(ClusterSpec(n_workers=1, dashboard_address=None)) as client:
        extractors = ex.resolve_extractors(MIX)
        client.run(lambda: [load(e) for e in extractors])
        # start the decode processes before sampling: between fork and exec a new process
        # briefly counts all of the worker's pages as its own RSS
        warm = make_clip(workdir / "rss-warm.mp4", 1, 64, 64, seed=1)
        client.submit(
            ex.run_video_chunk,
            [VideoRecord(f"{tag}-warm", warm)],
            extractors,
            str(workdir / f"rss-{tag}-warm.h5"),
            decode_workers=decode_workers,
            decode_threads=1,
            pure=False,
        ).result()
        (loaded,) = client.run(start_sampling).values()
        # one worker task over the clip twice (two ids): both decode processes busy
        records = [VideoRecord(f"{tag}-{k}", path) for k in range(2)]
        client.submit(
            ex.run_video_chunk,
            records,
            extractors,
            str(workdir / f"rss-{tag}.h5"),
            decode_workers=decode_workers,
            decode_threads=1,
            pure=False,
        ).result()
        ((peak, children),) = client.run(stop_sampling).values()
    return loaded, peak, children


# -- the decode pool ------------------------------------------------------------------------
POOL_MIX = {
    "vit-keyframes": {"arch": "vit_tiny_patch16_224", "random_init": True, "batch_size": 64}
}


def pool_bound(paths) -> tuple[float, float, float]:
    """(decode s, forward s per video, one process each, in this process; the best (p2)/(p1)
    this machine allows): 2 decoders + 1 model on ``cores`` cores run at most
    min(2 / D, 1 / F, cores / (D + F)) videos/s, 1 decoder at most min(1 / D, 1 / F, ...)."""
    import torch

    from aigvqa.extractors.views import build_views

    torch.set_num_threads(1)
    (model,) = load_models(POOL_MIX)
    view = model.view()
    decode, forward = [], []
    for path in paths[:3]:
        started = time.perf_counter()
        items = build_views(path, [view])[view.key]
        decoded = time.perf_counter()
        forward_all(model, items)
        decode.append(decoded - started)
        forward.append(time.perf_counter() - decoded)
    d, f = float(np.median(decode[1:] or decode)), float(np.median(forward[1:] or forward))
    cores = os.cpu_count() or 1
    best = min(2 / d, 1 / f, cores / (d + f)) / min(1 / d, 1 / f, cores / (d + f))
    return d, f, best


def pool_comparison(paths, workdir: Path) -> dict:
    """videos/s of 1 model worker with 1 and with 2 decode processes (POOL_MIX)."""
    d, f, best = pool_bound(paths)
    print(
        f"per video, one process each: decode + key frames {1e3 * d:.0f} ms, "
        f"forward {1e3 * f:.0f} ms: "
        f"(p2)/(p1) can reach at most {best:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    times = {}
    for n in (1, 2):
        times[n], cpu, _ = pipeline(paths, 1, workdir, decode_workers=n, mix=POOL_MIX)
        print(
            f"(p{n}) 1 model worker, {n} decode process(es): {times[n]:.1f} s "
            f"({len(paths) / times[n]:.2f} videos/s, {cpu:.1f} CPU s)",
            flush=True,
        )
    ratio = times[1] / times[2]
    print(
        f"(p2)/(p1) decode workers 2 vs 1: {ratio:.2f} (target >= 1.5) "
        f"{'met' if ratio >= 1.5 else 'NOT met'}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (other processes share them)",
        flush=True,
    )
    return {"p1_seconds": times[1], "p2_seconds": times[2], "ratio": ratio, "bound": best}


# -- main -------------------------------------------------------------------------------------
INPUTS = {
    # label: (seconds, height, width) -- HD, where decoding matters, and the size text-to-video
    # generators emit (T2VQA-DB, FETV-style clips: 512 x 512, a few seconds)
    "hd": (2.0, 720, 1280),
    "t2v": (4.0, 512, 512),
}
ROWS = [
    ("(a) peer-style: decode per extractor, sequential", "a"),
    ("(b) aigvqa extract, 1 worker, default decode processes", "b"),
    ("(b0) same, decode_workers=0 (a decoder thread in the worker)", "b0"),
    ("(b2) same, 2 tasks at once, 2 decode processes (--threads-per-worker 2)", "b2"),
    ("(b1) same, decode_workers=0, videos_in_flight=1 (decode and compute in turn)", "b1"),
    ("(c) aigvqa extract, 2 workers, default decode processes", "c"),
    ("(c1) same, decode_workers=0, videos_in_flight=1", "c1"),
    ("(d) pure forward on pre-decoded views", "d"),
]


def measure(paths, workdir: Path) -> tuple[dict, dict, dict]:
    """Wall seconds of every run, the workers' CPU seconds and decode processes of the
    pipeline runs."""
    times, cpu, pools = {}, {}, {}
    models = load_models(MIX)
    peer_style(models, paths[:1])  # warm-up (allocators, lazy imports)
    times["a"] = peer_style(models, paths)
    print(f"(a) peer-style: {times['a']:.1f} s", flush=True)
    times["d"] = pure_forward(models, paths)
    print(f"(d) pure forward: {times['d']:.1f} s", flush=True)
    del models
    runs = (
        ("b", 1, 2, None, 1),
        ("b0", 1, 2, 0, 1),
        ("b2", 1, 2, 2, 2),
        ("b1", 1, 1, 0, 1),
        ("c", 2, 2, None, 1),
        ("c1", 2, 1, 0, 1),
    )
    for key, workers, in_flight, decode_workers, tasks in runs:
        times[key], cpu[key], pools[key] = pipeline(
            paths, workers, workdir, in_flight, decode_workers, threads_per_worker=tasks
        )
        print(
            f"({key}) pipeline, {workers} worker(s) of {tasks} task(s) at once, "
            f"{pools[key]} decode process(es) each, "
            f"videos_in_flight={in_flight}: {times[key]:.1f} s "
            f"({cpu[key]:.1f} CPU s in the workers)",
            flush=True,
        )
    return times, cpu, pools


def report(label: str, n: int, times: dict, cpu: dict) -> None:
    cores = os.cpu_count() or 1
    print()
    print(
        f"input {label}; machine: {cores} cores, load average {os.getloadavg()[0]:.1f} "
        "(other processes share these cores)"
    )
    print()
    print("| run | seconds | videos/s | throughput vs (a) |")
    print("|---|---:|---:|---:|")
    for row_label, key in ROWS:
        print(
            f"| {row_label} | {times[key]:.1f} | {n / times[key]:.2f} "
            f"| {times['a'] / times[key]:.2f}x |"
        )
    print()
    ratios = [
        ("(b)/(a) decode once vs per extractor", times["a"] / times["b"], 2.0),
        ("(b)/(d) pipeline vs pure forward", times["d"] / times["b"], 0.9),
        ("(b2)/(d) the same, 2 tasks at once, vs pure forward", times["d"] / times["b2"], 0.9),
        ("(c)/(b) 2 workers vs 1", times["b"] / times["c"], 1.7),
    ]
    for ratio_label, value, target in ratios:
        print(
            f"{ratio_label}: {value:.2f} (target >= {target}) "
            f"{'met' if value >= target else 'NOT met'}"
        )
    # What the cores allow: two workers need at least the CPU time of the work, divided
    # by the cores, so (c)/(b) cannot exceed (b) x cores / (CPU seconds of the work).
    work = min(cpu["b1"], cpu["b"])
    print(
        f"(b) kept {cpu['b'] / times['b']:.2f} cores busy; the work costs {work:.1f} CPU s "
        f"({1e3 * max(0.0, work - times['d']) / n:.0f} ms of decoding per video beside "
        f"{1e3 * times['d'] / n:.0f} ms of forward), so on {cores} cores (c)/(b) can reach at most "
        f"{min(2.0, times['b'] * cores / work):.2f} here"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--videos",
        type=int,
        default=None,
        help="clips per input (default 40; 200 with --device cuda)",
    )
    parser.add_argument(
        "--inputs",
        default="hd,t2v",
        help="comma list of: "
        + ", ".join(f"{k} ({w}x{h}, {s:g} s)" for k, (s, h, w) in INPUTS.items()),
    )
    parser.add_argument(
        "--only",
        default="rows,pool,rss",
        help="comma list of parts to run: rows (a)-(d), pool, rss (default: all)",
    )
    parser.add_argument(
        "--pool-seconds",
        type=float,
        default=16.0,
        help="length of the 720p clips of the decode-pool comparison (default 16: "
        "8-s clips looped; the longer, the cheaper the model next to decoding)",
    )
    parser.add_argument("--data-dir", type=Path, help="keep generated clips here between runs")
    parser.add_argument(
        "--no-rss", action="store_true", help="skip the 10 s vs 120 s 1080p memory check"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda: the GPU node report"
    )
    parser.add_argument(
        "--node-report",
        action="store_true",
        help="run the GPU node report on --device (cpu: a smoke run of its CPU parts)",
    )
    parser.add_argument(
        "--extractor-set",
        choices=("paper", "small"),
        default=None,
        help="node report extractors (default: paper on cuda, small on cpu)",
    )
    parser.add_argument("--json", type=Path, help="node report: also write its numbers here")
    args = parser.parse_args(argv)
    # distributed gives its loggers a handler of their own when first imported, unless the
    # root logger has one by then; it then leaves them to the root's handler, so a library
    # that configured the root first (open_clip's logging.info did: basicConfig) turned
    # every local cluster's INFO records into "INFO:distributed..." lines. Imported first,
    # distributed keeps its own handler, which the clusters silence below WARNING.
    import distributed  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = args.data_dir or workdir
        data.mkdir(parents=True, exist_ok=True)
        if args.device.startswith("cuda") or args.node_report:
            from node_report import node_report

            node_report(args, data, workdir)
            return 0
        parts = set(args.only.split(","))
        n_videos = args.videos or 40
        if "rows" in parts:
            print("extractors: " + ", ".join(f"{k} {v}" for k, v in MIX.items()), flush=True)
            results = {}
            for label in [x for x in args.inputs.split(",") if x]:
                seconds, height, width = INPUTS[label]
                paths = clips(data, n_videos, seconds, height, width)
                results[label] = measure(paths, workdir)
            for label, (times, cpu, _) in results.items():
                seconds, height, width = INPUTS[label]
                report(
                    f"{label} ({n_videos} clips {width}x{height}, {seconds:g} s)",
                    n_videos,
                    times,
                    cpu,
                )

        if "pool" in parts:
            print()
            print("decode pool: " + ", ".join(f"{k} {v}" for k, v in POOL_MIX.items()), flush=True)
            base = clips(data, n_videos, min(8.0, args.pool_seconds), 720, 1280)
            times = max(1, round(args.pool_seconds / 8.0)) if args.pool_seconds > 8 else 1
            paths = (
                base
                if times == 1
                else [loop_clip(p, p.with_name(f"{p.stem}-x{times}.mp4"), times) for p in base]
            )
            pool_comparison(paths, workdir)

        if "rss" in parts and not args.no_rss:
            print()
            short = make_clip(data / "rss-1080p-10s.mp4", 10, 1080, 1920, seed=99)
            long = loop_clip(short, data / "rss-1080p-120s.mp4", 12)
            print(
                "| input (1080p, 24 fps), 2 decode processes "
                "| worker RSS after loading models (MiB) "
                "| peak worker RSS (MiB) | peak RSS of its decode processes (MiB) |"
            )
            print("|---|---:|---:|---:|")
            for label, path in (("10 s", short), ("120 s", long)):
                loaded, peak, children = worker_peak_rss(path, workdir, label.replace(" ", ""))
                print(f"| {label} | {loaded:.0f} | {peak:.0f} | {children:.0f} |", flush=True)
    return 0


def clips(data: Path, n: int, seconds: float, height: int, width: int) -> list[Path]:
    started = time.perf_counter()
    paths = [
        make_clip(
            data / f"clip{width}x{height}-{seconds:g}s-{i:03d}.mp4", seconds, height, width, seed=i
        )
        for i in range(n)
    ]
    print(
        f"{n} clips {width}x{height}, {seconds:g} s at {FPS} fps (made in "
        f"{time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    return paths


if __name__ == "__main__":
    sys.exit(main())
