"""Per-extractor cost of one video at the papers' settings (prints measured numbers; not a test).

    python bench/extractors.py                  # CPU, one torch thread (a pipeline worker)
    python bench/extractors.py --threads 2 --repeats 5
    python bench/extractors.py --device cuda    # on a GPU machine (autocast bf16)

Input: a 4 s, 512 x 512, 24 fps H.264 clip (96 frames) made with
``aigvqa.extractors.synthetic.moving_pattern`` and ``decode.write_video``. Every backbone
is RANDOMLY INITIALISED (no weights are available offline here): the compute is the same
as with real weights, the features are meaningless.

Settings (the papers'): clip-frames 16 frames ViT-B-32 (MSA-VQA), clip-text one prompt,
slowfast 4 one-second 32-frame clips at 224 (SimpleVQA), swin-fragments 1 clip of
32 x 7 x 7 fragments (FAST-VQA), vit-keyframes 8 key frames ViT-B/16 (UGVQ),
convnext-frames 16 frames ConvNeXt-T, handcrafted 64 frame pairs at 256; blip-itm 16 frames
at 384 with the default BlipConfig (ViT-B/16 + BERT-base, the size of
Salesforce/blip-itm-base-coco: vision, text-only and cross-attention text passes, every frame
scored against the prompt), blip-text one prompt, imagereward 16 frames at 224 (ViT-L/16 +
BERT-base cross-attention + the reward MLP, ImageReward's size).

For each extractor, after loading it and one untimed warm-up run, ``--repeats`` runs
time separately:

- decode+view: ``views.build_views`` of that extractor's view alone (a full decoder pass
  per extractor; the pipeline shares one pass among all extractors, measured once more
  at the end as "shared decode, all views");
- forward: ``extractor.forward`` on the items in batches of its ``batch_size``, as
  ``runner.extract_video`` calls it (clip-text: ``encode_text`` of one prompt); wall
  clock, plus the process's CPU time (``forward_cpu_ms``), which other load inflates less;
  and, from one more untimed pass, the GFLOPs it performs (``forward_gflops``, counted by
  ``torch.utils.flop_counter``; none for OpenCV/NumPy extractors).

Threads: one torch thread by default, because that is how a stage-one worker runs
(``pipeline.extract.cluster``: one worker process per core, one torch thread each), so
``forward_ms`` is the per-worker cost later benches divide among workers.

The medians in ms per video go to the table and to ``bench/out/extractors.json``; later
benchmarks read ``extractors[name]["forward_ms"]`` from there. The CPU is shared with
other work (the load average is printed before and after): numbers on a busy machine are
upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aigvqa.extractors import create_extractor
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.views import build_views

SECONDS, SIZE, FPS = 4, 512, 24
PROMPT = "a red fox jumping over a frozen river at sunset, cinematic"
OUT = Path(__file__).resolve().parent / "out" / "extractors.json"

SETTINGS: dict[str, dict] = {
    "clip-frames": {"arch": "ViT-B-32", "n_frames": 16},
    "clip-text": {"arch": "ViT-B-32"},
    "slowfast": {},  # 32-frame clips, one per second, 224
    "swin-fragments": {"num_clips": 1, "clip_len": 32},
    "vit-keyframes": {"arch": "vit_base_patch16_224", "n_frames": 8},
    "convnext-frames": {"arch": "convnext_tiny", "n_frames": 16},
    "handcrafted": {},
    "blip-itm": {"n_frames": 16},  # default BlipConfig: blip-itm-base-coco's size
    "blip-text": {},
    "imagereward": {"n_frames": 16},  # ImageReward's size (IMAGEREWARD_CONFIG)
}
NO_WEIGHTS = {"handcrafted"}


def make_clip(folder: Path) -> Path:
    path = folder / f"bench_{SECONDS}s_{SIZE}px_{FPS}fps.mp4"
    write_video(path, moving_pattern(SECONDS * FPS, SIZE, SIZE, seed=0), fps=FPS)
    return path


def forward_all(extractor, items: list[np.ndarray]) -> np.ndarray:
    batch = int(extractor.config().get("batch_size", 16))
    parts = []
    for i in range(0, len(items), batch):
        chunk = np.stack(items[i : i + batch])
        if getattr(extractor, "needs_prompt", False):  # scored against the video's prompt
            parts.append(extractor.forward(chunk, prompts=[PROMPT] * len(chunk)))
        else:
            parts.append(extractor.forward(chunk))
    return np.concatenate(parts)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def counted_gflops(run) -> float | None:
    """GFLOPs of the torch operations ``run()`` performs (matrix products, convolutions,
    attention; ``torch.utils.flop_counter``), None when it does none (OpenCV, NumPy)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    flops = counter.get_total_flops()
    return flops / 1e9 if flops else None


def time_video_extractor(extractor, path: Path, repeats: int, device: str) -> dict:
    view = extractor.view()
    decode_ms, forward_ms, forward_cpu_ms = [], [], []
    for run in range(repeats + 1):  # run 0 warms up (allocator, kernels, page cache)
        start = time.perf_counter()
        items = build_views(path, [view])[view.key]
        decoded, cpu_start = time.perf_counter(), time.process_time()
        features = forward_all(extractor, items)
        sync(device)
        done, cpu_done = time.perf_counter(), time.process_time()
        if run:
            decode_ms.append(1e3 * (decoded - start))
            forward_ms.append(1e3 * (done - decoded))
            forward_cpu_ms.append(1e3 * (cpu_done - cpu_start))
    return {
        "items": len(items),
        "output_shape": list(features.shape),
        "forward_gflops": counted_gflops(lambda: forward_all(extractor, items)),
        "decode_view_ms": statistics.median(decode_ms),
        "forward_ms": statistics.median(forward_ms),
        "forward_cpu_ms": statistics.median(forward_cpu_ms),
        "decode_view_runs_ms": decode_ms,
        "forward_runs_ms": forward_ms,
    }


def time_text_extractor(extractor, repeats: int, device: str) -> dict:
    runs, cpu_runs = [], []
    for run in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        encoded = extractor.encode_text([PROMPT])
        sync(device)
        if run:
            runs.append(1e3 * (time.perf_counter() - start))
            cpu_runs.append(1e3 * (time.process_time() - cpu_start))
    return {
        "items": 1,
        "output_shape": {k: list(v.shape) for k, v in encoded.items()},
        "forward_gflops": counted_gflops(lambda: extractor.encode_text([PROMPT])),
        "decode_view_ms": 0.0,
        "forward_ms": statistics.median(runs),
        "forward_cpu_ms": statistics.median(cpu_runs),
        "decode_view_runs_ms": [],
        "forward_runs_ms": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per extractor (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="extractor names to run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only or list(SETTINGS)
    load_before = os.getloadavg()
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "loadavg_before": list(load_before),
    }
    print(
        f"aigvqa extractor bench: {SECONDS} s {SIZE}x{SIZE} {FPS} fps clip, device {args.device}, "
        f"{machine['cpu_count']} CPU cores, torch threads {machine['torch_threads']}, "
        f"load average {load_before[0]:.1f} "
        "(the CPU is shared with other work: numbers are upper bounds)"
    )
    print(
        "*** every backbone is RANDOM-INIT (no weights offline): "
        "same compute, meaningless features ***"
    )

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_clip(Path(tmp))
        for name in names:
            config = dict(SETTINGS[name])
            if name not in NO_WEIGHTS:
                config["random_init"] = True
            config["device"] = args.device
            extractor = create_extractor(name, **config)
            start = time.perf_counter()
            extractor.load(args.device)
            load_s = time.perf_counter() - start
            if extractor.modality == "text":
                row = time_text_extractor(extractor, args.repeats, args.device)
            else:
                row = time_video_extractor(extractor, path, args.repeats, args.device)
            row.update(
                config=extractor.config(),
                weights=extractor.weights_identity,
                load_s=load_s,
                total_ms=row["decode_view_ms"] + row["forward_ms"],
            )
            results[name] = row
            print(
                f"  {name:<16} done: {row['total_ms']:8.0f} ms/video", file=sys.stderr, flush=True
            )
            del extractor

        views = []
        for n in names:
            config = dict(SETTINGS[n]) if n in NO_WEIGHTS else {**SETTINGS[n], "random_init": True}
            extractor = create_extractor(n, **config)
            if extractor.modality == "video":
                views.append(extractor.view())
        shared = []
        for run in range(args.repeats + 1):
            start = time.perf_counter()
            build_views(path, views)
            if run:
                shared.append(1e3 * (time.perf_counter() - start))
    shared_ms = statistics.median(shared) if shared else 0.0

    machine["loadavg_after"] = list(os.getloadavg())
    header = (
        f"{'extractor':<16} {'items':>5} {'output':>12} {'decode+view ms':>15} {'forward ms':>11} "
        f"{'(cpu ms)':>9} {'total ms':>9} {'load s':>7} {'GFLOPs':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        shape = row["output_shape"]
        shape = (
            "x".join(map(str, shape))
            if isinstance(shape, list)
            else "x".join(map(str, shape["pooled"]))
        )
        print(
            f"{name:<16} {row['items']:>5} {shape:>12} {row['decode_view_ms']:>15.0f} "
            f"{row['forward_ms']:>11.0f} {row['forward_cpu_ms']:>9.0f} {row['total_ms']:>9.0f} "
            f"{row['load_s']:>7.1f} {row['forward_gflops'] or float('nan'):>8.1f}"
        )
    print(f"{'shared decode, all views (one pass)':<52} {shared_ms:>8.0f} ms/video")
    print(
        f"(median of {args.repeats} runs after a warm-up; wall-clock ms; '(cpu ms)' is this "
        f"process's CPU time for the forward, less sensitive to other load; load average after "
        f"{machine['loadavg_after'][0]:.1f}; RANDOM-INIT weights)"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "clip": {"seconds": SECONDS, "size": SIZE, "fps": FPS, "frames": SECONDS * FPS},
        "random_init": True,
        "machine": machine,
        "repeats": args.repeats,
        "extractors": results,
        "shared_decode_all_views_ms": shared_ms,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
