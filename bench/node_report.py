"""A GPU node's stage-one report (``python bench/extract_throughput.py --device cuda``).

Three numbers and their ratios, on ``--videos`` generated 512 x 512, 4-s, 24-fps clips:

- **end to end**: ``aigvqa extract`` on one model worker per GPU (``gpus=True`` when
  dask-cuda is installed, else a LocalCluster of 1 worker with every model on
  ``--device``) with its default decode processes, after a warm-up run; videos/s, and the
  GPU utilisation sampled every 0.5 s meanwhile (pynvml, else ``nvidia-smi``); on CUDA
  with 1 and with 2 chunk tasks at once per worker (``threads_per_worker``: the second
  task's decoding overlaps the first one's last forward passes); the better one counts;
- **CPU decode ceiling**: every view of the extractors built from each clip, one process
  per core (and one process alone), nothing else running: what the node's CPUs can feed;
- **pure forward with batches across videos**: the models on views decoded beforehand,
  each extractor's items of many videos concatenated and run in its ``batch_size``: what
  the GPU can take.

End to end / decode ceiling says how much of the CPUs the pipeline turns into features;
end to end / pure forward how busy it keeps the GPU. Extractors: the paper set (the
settings of ``bench/extractors.py``: clip-frames, clip-text, slowfast, swin-fragments,
vit-keyframes, convnext-frames), random init; ``--extractor-set small`` (two small
backbones) and ``--node-report`` run the CPU parts on a CPU machine as a smoke check.
Numbers depend on what else runs on the node; the load average is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PROMPT = "a red fox jumping over a frozen river at sunset, cinematic"


def extractor_settings(which: str, device: str) -> dict[str, dict]:
    if which == "paper":
        from extractors import SETTINGS  # bench/extractors.py: the papers' settings

        chosen = {k: dict(v) for k, v in SETTINGS.items() if k != "handcrafted"}
    else:
        chosen = {
            "vit-keyframes": {"arch": "vit_tiny_patch16_224"},
            "clip-frames": {"arch": "ViT-S-32", "pretrained": "", "n_frames": 8},
        }
    for config in chosen.values():
        config.update(random_init=True, device=device)
    return chosen


def _init_decoder() -> None:
    import cv2

    cv2.setNumThreads(1)


def _decode_views(path: str, views) -> int:
    """Worker of the decode ceiling: every item of every view of one clip (discarded)."""
    from aigvqa.extractors.views import stream_views

    return sum(1 for _ in stream_views(path, views, threads=1))


def decode_ceiling(paths: list[Path], views, processes: int) -> float:
    """videos/s of building every view of ``paths`` with ``processes`` processes."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_init_decoder) as pool:
        warm = [str(p) for p in paths[:processes]]
        list(pool.map(_decode_views, warm, [views] * processes))  # warm-up
        started = time.perf_counter()
        list(pool.map(_decode_views, [str(p) for p in paths], [views] * len(paths)))
        return len(paths) / (time.perf_counter() - started)


def pure_forward(models, paths: list[Path], device: str) -> float:
    """videos/s of the forward passes alone, each extractor's items of all ``paths`` batched
    together in its ``batch_size`` (views decoded beforehand, untimed)."""
    import numpy as np

    from aigvqa.extractors.views import build_views

    video_models = [m for m in models if m.modality == "video"]
    views = {m.view().key: m.view() for m in video_models}
    decoded = [build_views(p, list(views.values())) for p in paths]
    items = {
        m.name: [it for per_video in decoded for it in per_video[m.view().key]]
        for m in video_models
    }

    def run_all() -> None:
        for model in video_models:
            batch = int(model.config().get("batch_size", 16))
            todo = items[model.name]
            for start in range(0, len(todo), batch):
                model.forward(np.stack(todo[start : start + batch]))
        for model in models:
            if model.modality == "text":
                model.encode_text([PROMPT] * len(paths))
        sync(device)

    run_all()  # warm-up: kernels, allocator
    started = time.perf_counter()
    run_all()
    return len(paths) / (time.perf_counter() - started)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class GpuSampler:
    """GPU utilisation (%) sampled every ``every`` seconds in a thread while in a ``with``."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._read = self._reader()

    @staticmethod
    def _reader():
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # noqa: BLE001 - no pynvml, no NVML: try nvidia-smi
            pass
        if shutil.which("nvidia-smi"):

            def smi() -> float:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i",
                        "0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                )
                return float(out.stdout.strip().splitlines()[0])

            return smi
        return None

    def __enter__(self):
        if self._read is not None:
            threading.Thread(target=self._loop, daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(self._read())
            except Exception:  # noqa: BLE001 - a missed sample is not worth a failed bench
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def end_to_end(
    paths: list[Path], settings: dict, device: str, workdir: Path, threads_per_worker: int = 1
) -> tuple[float, float | None, int]:
    """(videos/s, mean GPU utilisation or None, decode processes per worker) of ``extract``
    with ``threads_per_worker`` chunk tasks at once per model worker."""
    import importlib.util

    from aigvqa.pipeline.extract import extract
    from aigvqa.pipeline.extract.cluster import ClusterSpec, open_cluster
    from aigvqa.pipeline.records import VideoRecord

    cuda = device.startswith("cuda")
    if cuda and importlib.util.find_spec("dask_cuda") is not None:
        spec = ClusterSpec(gpus=True, threads_per_worker=threads_per_worker, dashboard_address=":0")
    else:
        spec = ClusterSpec(
            n_workers=1, threads_per_worker=threads_per_worker, dashboard_address=":0"
        )
    records = [VideoRecord(p.stem, p, prompt=f"{PROMPT} {i}") for i, p in enumerate(paths)]
    warm = [VideoRecord(f"warm-{r.video_id}", r.path, prompt=r.prompt) for r in records[:4]]
    with open_cluster(spec) as client:
        extract(
            warm, settings, workdir / f"warm-{threads_per_worker}.h5", client=client, progress=False
        )
        with GpuSampler() as gpu:
            started = time.perf_counter()
            report = extract(
                records,
                settings,
                workdir / f"e2e-{threads_per_worker}.h5",
                client=client,
                progress=False,
            )
            seconds = time.perf_counter() - started
    assert report.succeeded == len(records), report.summary()
    return len(records) / seconds, gpu.mean(), report.decode_workers


def node_report(args, data: Path, workdir: Path) -> dict:
    from extract_throughput import make_clip

    from aigvqa.extractors import create_extractor

    device = args.device
    cuda = device.startswith("cuda")
    n = args.videos or (200 if cuda else 4)
    which = args.extractor_set or ("paper" if cuda else "small")
    settings = extractor_settings(which, device)
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    started = time.perf_counter()
    paths = [
        make_clip(data / f"clip512x512-4s-{i:03d}.mp4", 4.0, 512, 512, seed=i) for i in range(n)
    ]
    print(
        f"{n} clips 512x512, 4 s at 24 fps (made in {time.perf_counter() - started:.0f} s); "
        f"extractors ({which}, random init, {device}): {', '.join(settings)}",
        flush=True,
    )

    models = [create_extractor(name, **config) for name, config in settings.items()]
    views = list({m.view().key: m.view() for m in models if m.modality == "video"}.values())
    ceiling = decode_ceiling(paths, views, cores)
    single = decode_ceiling(paths[: max(2, min(n, 8))], views, 1)
    print(
        f"CPU decode ceiling: {ceiling:.2f} videos/s with {cores} processes, {single:.2f} with 1",
        flush=True,
    )

    import torch

    torch.set_num_threads(1 if not cuda else torch.get_num_threads())
    for model in models:
        model.load(device)
    forward = pure_forward(models, paths[: min(n, 32)], device)
    print(f"pure forward, batches across videos: {forward:.2f} videos/s", flush=True)
    del models
    if cuda:
        torch.cuda.empty_cache()

    runs = {}
    for threads in (1, 2) if cuda else (1,):
        runs[threads] = end_to_end(paths, settings, device, workdir, threads)
        e2e, gpu, decode_workers = runs[threads]
        gpu_text = f"{gpu:.0f} %" if gpu is not None else "n/a (no GPU sampled)"
        print(
            f"end to end, {threads} task thread(s) per model worker: {e2e:.2f} videos/s "
            f"({decode_workers} decode processes per model worker), "
            f"GPU utilisation mean {gpu_text}",
            flush=True,
        )
    best = max(runs, key=lambda t: runs[t][0])
    e2e, gpu, decode_workers = runs[best]
    gpu_text = f"{gpu:.0f} %" if gpu is not None else "n/a (no GPU sampled)"
    result = {
        "device": device,
        "videos": n,
        "extractors": which,
        "cores": cores,
        "load_average": os.getloadavg()[0],
        "end_to_end_videos_per_s": e2e,
        "gpu_utilisation_mean": gpu,
        "decode_workers": decode_workers,
        "end_to_end_by_task_threads": {
            t: {"videos_per_s": r[0], "gpu_utilisation_mean": r[1]} for t, r in runs.items()
        },
        "task_threads_of_best": best,
        "cpu_decode_ceiling_videos_per_s": ceiling,
        "cpu_decode_one_process_videos_per_s": single,
        "pure_forward_videos_per_s": forward,
        "end_to_end_vs_decode_ceiling": e2e / ceiling,
        "end_to_end_vs_pure_forward": e2e / forward,
    }
    print()
    print("| what | videos/s |")
    print("|---|---:|")
    print(
        f"| end to end (`aigvqa extract`, {best} task thread(s)), "
        f"GPU utilisation {gpu_text} | {e2e:.2f} |"
    )
    print(f"| CPU decode ceiling, all views, {cores} processes | {ceiling:.2f} |")
    print(f"| CPU decode, 1 process | {single:.2f} |")
    print(f"| pure forward, batches across videos | {forward:.2f} |")
    print()
    print(
        f"end to end / decode ceiling: {result['end_to_end_vs_decode_ceiling']:.2f} "
        "(target >= 0.75)"
    )
    print(f"end to end / pure forward: {result['end_to_end_vs_pure_forward']:.2f}")
    print(f"load average {result['load_average']:.1f} on {cores} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result
