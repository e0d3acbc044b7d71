"""Stage-two cost on a T2VQA-DB-sized cache: seconds per epoch of the deep heads, fit time of
the classical heads, and how a head epoch compares with one epoch of backbone forward passes
over the same videos (prints measured numbers; not a test).

    python bench/heads.py                                   # CPU, 10,000 videos
    python bench/heads.py --device cuda                     # deep heads on a GPU
    python bench/heads.py --rows 2000                       # time deep epochs on 2,000 rows, scale to 10,000
    python bench/heads.py --backbone-ms-per-video 2500      # when bench/out/extractors.json is absent

The "cache" is built in memory from RANDOM float16 arrays with the real widths (no videos,
no HDF5): clip-frames 16 x 512, slowfast 4 x 2304, swin-fragments 1 x 768,
vit-keyframes 8 x 768, clip-text tokens 77 x 512 (lengths 8..77), clip-text-pooled 1 x 512, and a
random MOS. Random values cost the same compute as real features.

Deep heads: UGVQ at the paper preset (8-layer encoder, d 768, batch 16) and MSA-VQA at its
default preset. One epoch is the ``seconds`` of the first entry of ``history_`` (training
steps only: no model build, no post-fit ensemble or calibration); with ``--rows`` below the
cache size it is measured on that many rows and scaled linearly (printed as such).

Classical heads (``aigvqa.heads.classical``): one fit, no hyper-parameter search, on
mean+std pooled features of every cached group but the text tokens.

Backbone epoch: ``n_videos x`` the sum of the per-video forward ms of the extractors the
head reads, from ``bench/out/extractors.json`` (written by ``bench/extractors.py``) or from
``--backbone-ms-per-video``. Target: backbone epoch / head epoch >= 1000.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from aigvqa.heads.featureset import FeatureSet

EXTRACTORS_JSON = Path(__file__).resolve().parent / "out" / "extractors.json"
SHAPES = {  # name: (T, D) -- the real widths of the cached features
    "clip-frames": (16, 512),
    "slowfast": (4, 2304),
    "swin-fragments": (1, 768),
    "vit-keyframes": (8, 768),
    "clip-text": (77, 512),
    "clip-text-pooled": (1, 512),
}
TEXT_FEATURES = {"clip-text": "clip-text", "clip-text-pooled": "clip-text"}  # feature -> extractor
TARGET_RATIO = 1000.0


def synthetic_cache(n: int, seed: int = 0) -> tuple[FeatureSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (t, d) in SHAPES.items():
        a = np.empty((n, t, d), dtype=np.float16)
        for start in range(0, n, 1000):  # fill in chunks: no float64 copy of the whole cache
            a[start:start + 1000] = rng.standard_normal((min(1000, n - start), t, d), dtype=np.float32)
        arrays[name] = a
    lengths = {"clip-text": rng.integers(8, 78, size=n)}
    return FeatureSet(arrays, lengths), rng.normal(50, 10, size=n)


def extractor_of(feature: str) -> str:
    return TEXT_FEATURES.get(feature, feature)


def load_backbone_ms(path: Path, flag: float | None) -> tuple[dict[str, float] | None, float | None, str]:
    """Per-extractor forward ms per video (from the extractor bench), or the flag's total."""
    if flag is not None:
        return None, flag, f"--backbone-ms-per-video {flag:g}"
    if not path.exists():
        return None, None, f"{path} is absent (run bench/extractors.py, or pass --backbone-ms-per-video)"
    report = json.loads(path.read_text())
    per = {name: float(row["forward_ms"]) for name, row in report["extractors"].items()}
    machine = report.get("machine", {})
    where = f"{path.name}: device {machine.get('device')}, {machine.get('gpu') or machine.get('cpu')}, torch threads {machine.get('torch_threads')}"
    return per, None, where


def backbone_ms_for(features: list[str], per: dict[str, float] | None, total: float | None) -> float | None:
    if total is not None:
        return total
    if per is None:
        return None
    needed = sorted({extractor_of(f) for f in features})
    missing = [e for e in needed if e not in per]
    if missing:
        print(f"  (extractor bench has no {missing}; ratio left out)")
        return None
    return sum(per[e] for e in needed)


def time_deep_epoch(name: str, head, X: FeatureSet, y: np.ndarray, rows: int, n_videos: int) -> dict:
    sub = X[np.arange(rows)] if rows < len(X) else X
    head.set_params(epochs=1)
    start = time.perf_counter()
    head.fit(sub, y[:rows])
    total = time.perf_counter() - start
    epoch = head.history_[0]["seconds"] * n_videos / rows
    params = sum(p.numel() for p in head.module_.parameters())
    start = time.perf_counter()
    head.predict(sub[np.arange(min(rows, 2000))])
    predict_per_video = (time.perf_counter() - start) / min(rows, 2000)
    return {"head": name, "epoch_s": epoch, "fit_wall_s": total, "params": params,
            "predict_ms_per_video": 1e3 * predict_per_video, "rows_timed": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=None, help="time deep epochs on this many rows and scale (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="deep heads under bfloat16 autocast")
    parser.add_argument("--batch-size", type=int, default=None, help="deep heads' batch size (default: the preset's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--heads", default="ugvq,msavqa,svr,elasticnet,lightgbm")
    parser.add_argument("--classical-jobs", type=int, default=1, help="n_jobs of the classical heads (LightGBM threads)")
    parser.add_argument("--extractors-json", type=Path, default=EXTRACTORS_JSON)
    parser.add_argument("--backbone-ms-per-video", type=float, default=None,
                        help="total backbone forward ms per video, instead of the extractor bench's numbers")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    import torch

    from aigvqa.heads.registry import create_head

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.videos
    rows = min(args.rows or n, n)
    heads = [h for h in args.heads.split(",") if h]
    print(
        f"aigvqa heads bench: {n} videos, deep heads on {args.device}{' with bf16 autocast' if args.amp else ''}"
        f"{' (' + torch.cuda.get_device_name(0) + ')' if args.device.startswith('cuda') else ''}, "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    print("*** synthetic in-memory cache of RANDOM float16 arrays with the real widths: "
          + ", ".join(f"{k} {t}x{d}" for k, (t, d) in SHAPES.items()) + " ***")
    start = time.perf_counter()
    X, y = synthetic_cache(n)
    print(f"built the cache in {time.perf_counter() - start:.1f} s ({sum(a.nbytes for a in X.arrays.values()) / 2**30:.2f} GiB)")
    per, total, where = load_backbone_ms(args.extractors_json, args.backbone_ms_per_video)
    print(f"backbone forward ms per video from {where}")

    deep_common = dict(device=args.device, amp=args.amp, batch_size=args.batch_size)
    deep_configs = {"ugvq": dict(preset="paper", **deep_common), "msavqa": dict(preset="default", **deep_common)}
    classical_features = [f for f in SHAPES if f != "clip-text"]
    results = []
    for name in heads:
        if name in deep_configs:
            head = create_head(name, **deep_configs[name])
            features = list({**head.DEFAULT_FEATURES, **(head.features or {})}.values())
            print(f"{name}: timing one epoch on {rows} rows ...", flush=True)
            row = time_deep_epoch(name, head, X, y, rows, n)
            row["kind"] = "epoch"
            row["seconds"] = row["epoch_s"]
            note = "" if rows == n else f" (measured on {rows} rows, scaled x{n / rows:g})"
            print(f"  {row['epoch_s']:.1f} s/epoch{note} at batch size {head._hp('batch_size')}; {row['params'] / 1e6:.1f} M parameters; "
                  f"predict {row['predict_ms_per_video']:.3f} ms/video", flush=True)
        else:
            head = create_head(name, features=classical_features, n_jobs=args.classical_jobs)
            features = classical_features
            print(f"{name}: one fit on {n} rows (mean+std pooling of {', '.join(features)}) ...", flush=True)
            start = time.perf_counter()
            head.fit(X, y)
            row = {"head": name, "kind": "fit", "seconds": time.perf_counter() - start}
            print(f"  {row['seconds']:.1f} s per fit", flush=True)
        ms = backbone_ms_for(features, per, total)
        if ms is not None:
            row["backbone_epoch_s"] = n * ms / 1e3
            row["ratio"] = row["backbone_epoch_s"] / row["seconds"]
        results.append(row)

    print()
    print(f"{'head':<11} {'what':<6} {'seconds':>9} {'backbone epoch s':>17} {'ratio':>9}  target >= {TARGET_RATIO:g}x")
    for row in results:
        if "ratio" in row:
            verdict = "met" if row["ratio"] >= TARGET_RATIO else "NOT met"
            tail = f"{row['backbone_epoch_s']:>17.0f} {row['ratio']:>8.0f}x  {verdict}"
        else:
            tail = f"{'n/a':>17} {'n/a':>9}"
        print(f"{row['head']:<11} {row['kind']:<6} {row['seconds']:>9.1f} {tail}")
    print("(backbone epoch = videos x forward ms per video of the extractors the head reads; "
          "'fit' rows compare one classical fit with it)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"videos": n, "device": args.device, "backbone_source": where, "results": results}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
