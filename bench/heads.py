"""Stage-two cost on a T2VQA-DB-sized cache: seconds per epoch of the deep heads, fit time of
the classical heads, and how a head epoch compares with one epoch of backbone forward passes
over the same videos (prints measured numbers; not a test).

    python bench/heads.py                               # CPU, 10,000 videos
    python bench/heads.py --device cuda                 # deep heads on a GPU
    python bench/heads.py --rows 2000                   # time deep epochs on 2,000 rows,
                                                        # scale to 10,000
    python bench/heads.py --backbone-ms-per-video 2500  # when bench/out/extractors.json is absent

The "cache" is built in memory from RANDOM float16 arrays with the real widths (no videos,
no HDF5): clip-frames 16 x 512, slowfast 4 x 2304, swin-fragments 1 x 768,
vit-keyframes 8 x 768, clip-text tokens 77 x 512, clip-text-pooled 1 x 512, and a random
MOS. Random values cost the same compute as real features. Prompt lengths (CLIP tokens,
which set how many text steps a batch carries) are drawn from the 619 FETV prompts in
``../shared/data/fetv`` (median 13 tokens, max 45) when that folder is there, else
uniformly from 8..77 (``--text-lengths`` picks).

Deep heads: UGVQ at the paper preset (8-layer encoder, d 768, batch 16) and at the small
preset (``ugvq-small``: 1 layer, d 64), and MSA-VQA at its default preset. One epoch is the
``seconds`` of the first entry of ``history_`` (training steps only: no model build, no
post-fit ensemble or calibration); with ``--rows`` below the cache size it is measured on
that many rows and scaled linearly (printed as such).

Classical heads (``aigvqa.heads.classical``): one fit, no hyper-parameter search, on
mean+std pooled features of every cached group but the text tokens.

Backbone epoch: ``n_videos x`` the sum of the per-video forward ms of the extractors the
head reads, from ``bench/out/extractors.json`` (written by ``bench/extractors.py``) or from
``--backbone-ms-per-video``. Target: backbone epoch / head epoch >= 1000.

Like for like: the heads run with as many torch threads as the extractor bench did (its
JSON says; one by default, a stage-one worker) unless ``--threads`` says otherwise; both
compute in float32 on CPU (extractors autocast on CUDA only; ``--amp`` would give the heads
bfloat16 autocast, which is not like for like there).
Next to the time ratio the bench prints the FLOP ratio: backbone forward GFLOPs per video
(from the extractor bench) over the GFLOPs one head epoch spends per video (forward and
backward, counted by ``torch.utils.flop_counter`` on a short fit). A time ratio can only
beat the FLOP ratio by running the head at a higher FLOP rate than the backbones.

How close a head runs to the device: per deep head the achieved TFLOP/s of an epoch (counted
FLOPs / epoch seconds) and its fraction of the device's peak: on CUDA the dense bf16 (with
``--amp``) or fp32 rate of the device from a table by name (``PEAK_TFLOPS``; an unknown
device prints no fraction), on CPU a matmul rate measured here with the same threads (fp32,
or bf16 with ``--amp``). The counted FLOPs are the matrix products only, so the fraction is
a lower bound of the device's use.

Trials together vs one by one (``--evaluate-trials``, default 3; 0 skips): per deep head,
``evaluate`` with ``batch_trials=True`` and ``False`` on the first ``--rows`` videos, for
``--evaluate-epochs`` epochs (default 1), timed, with the largest per-trial SRCC difference
(``bench/trials.py`` runs the same comparison at full size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone

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
# Dense peak TFLOP/s (no sparsity) from the vendors' data sheets, (bf16 tensor core, fp32
# without TF32: torch's default float32 matmul precision is "highest"), matched by substring
# of torch.cuda.get_device_name, most specific first.
PEAK_TFLOPS = {
    "H200": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "GH200": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "A10G": (70.0, 31.2),
    "A10": (125.0, 31.2),
    "L40S": (362.0, 91.6),
    "L40": (181.0, 90.5),
    "L4": (121.0, 30.3),
    "RTX 4090": (165.0, 82.6),
    "V100": (125.0, 15.7),
    "T4": (65.0, 8.1),
}


FETV_RATINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fetv" / "fetv_ratings.csv"


def prompt_token_lengths(choice: str) -> tuple[np.ndarray | None, str]:
    """CLIP token counts (start and end tokens included) to draw prompt lengths from."""
    if choice == "fetv" or (choice == "auto" and FETV_RATINGS.exists()):
        import csv

        from open_clip import get_tokenizer

        with open(FETV_RATINGS, newline="") as fh:
            prompts = sorted({row["prompt"] for row in csv.DictReader(fh)})
        lengths = (get_tokenizer("ViT-B-32")(prompts) != 0).sum(1).numpy()
        return lengths, (
            f"CLIP token lengths of the {len(prompts)} FETV prompts (median "
            f"{np.median(lengths):g}, max {lengths.max()})"
        )
    if choice == "full":
        return np.array([77]), "every prompt 77 tokens (worst case)"
    return None, "uniform 8..77 tokens"


def synthetic_cache(
    n: int, seed: int = 0, text_lengths: np.ndarray | None = None
) -> tuple[FeatureSet, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (t, d) in SHAPES.items():
        a = np.empty((n, t, d), dtype=np.float16)
        for start in range(0, n, 1000):  # fill in chunks: no float64 copy of the whole cache
            a[start : start + 1000] = rng.standard_normal(
                (min(1000, n - start), t, d), dtype=np.float32
            )
        arrays[name] = a
    drawn = (
        rng.integers(8, 78, size=n) if text_lengths is None else rng.choice(text_lengths, size=n)
    )
    lengths = {"clip-text": drawn}
    return FeatureSet(arrays, lengths), rng.normal(50, 10, size=n)


def extractor_of(feature: str) -> str:
    return TEXT_FEATURES.get(feature, feature)


@dataclass
class Backbones:
    """What the extractor bench measured per video (or the --backbone-ms-per-video total)."""

    source: str
    ms: dict[str, float] | None = None  # extractor -> forward ms per video
    gflops: dict[str, float | None] | None = None  # extractor -> forward GFLOPs per video
    total_ms: float | None = None
    torch_threads: int | None = None

    def ms_for(self, features: list[str]) -> float | None:
        if self.total_ms is not None:
            return self.total_ms
        return self._sum(self.ms, features, "forward ms")

    def gflops_for(self, features: list[str]) -> float | None:
        return self._sum(self.gflops, features, "GFLOPs")

    @staticmethod
    def _sum(table, features, what) -> float | None:
        if table is None:
            return None
        needed = sorted({extractor_of(f) for f in features})
        missing = [e for e in needed if table.get(e) is None]
        if missing:
            print(f"  (extractor bench has no {what} for {missing}; that ratio is left out)")
            return None
        return sum(table[e] for e in needed)


def load_backbones(path: Path, flag: float | None) -> Backbones:
    if flag is not None:
        return Backbones(f"--backbone-ms-per-video {flag:g}", total_ms=flag)
    if not path.exists():
        return Backbones(
            f"{path} is absent (run bench/extractors.py, or pass --backbone-ms-per-video)"
        )
    report = json.loads(path.read_text())
    rows = report["extractors"]
    machine = report.get("machine", {})
    return Backbones(
        source=(
            f"{path.name}: device {machine.get('device')}, "
            f"{machine.get('gpu') or machine.get('cpu')}, "
            f"torch threads {machine.get('torch_threads')}"
        ),
        ms={name: float(row["forward_ms"]) for name, row in rows.items()},
        gflops={name: row.get("forward_gflops") for name, row in rows.items()},
        torch_threads=machine.get("torch_threads"),
    )


def epoch_gflops_per_video(head, X: FeatureSet, y: np.ndarray, rows: int) -> float:
    """GFLOPs per video of one training epoch (forward + backward, and the validation
    forward passes an epoch includes), counted on a short fit of ``rows`` rows."""
    from torch.utils.flop_counter import FlopCounterMode

    counted = []
    train = type(head)._train

    def counting_train(self, *args, **kwargs):
        with FlopCounterMode(display=False) as counter:
            train(self, *args, **kwargs)
        counted.append(counter.get_total_flops())

    probe = clone(head).set_params(epochs=1)
    type(head)._train = counting_train
    try:
        probe.fit(X[np.arange(rows)], y[:rows])
    finally:
        type(head)._train = train
    return counted[0] / rows / 1e9


def time_deep_epoch(
    name: str, head, X: FeatureSet, y: np.ndarray, rows: int, n_videos: int
) -> dict:
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
    return {
        "head": name,
        "epoch_s": epoch,
        "fit_wall_s": total,
        "params": params,
        "predict_ms_per_video": 1e3 * predict_per_video,
        "rows_timed": rows,
    }


def device_peak_tflops(device: str, amp: bool) -> tuple[float | None, str]:
    """The device's peak rate for the heads' arithmetic and where the number comes from."""
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, (bf16, fp32) in PEAK_TFLOPS.items():
            if key in name:
                return (
                    bf16 if amp else fp32
                ), f"{name}: {'bf16' if amp else 'fp32'} data-sheet peak (dense)"
        return None, f"{name}: not in PEAK_TFLOPS, no peak fraction"
    dtype = torch.bfloat16 if amp else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(2):
        a @ b
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < 1.0:
        a @ b
        runs += 1
    rate = 2 * 2048**3 * runs / (time.perf_counter() - start) / 1e12
    return (
        rate,
        f"CPU {'bf16' if amp else 'fp32'} 2048x2048 matmul measured here, "
        f"{torch.get_num_threads()} threads",
    )


def time_evaluate_both_ways(
    head, X: FeatureSet, y: np.ndarray, rows: int, trials: int, epochs: int
) -> dict:
    """evaluate with trials together and one by one on the first ``rows`` videos."""
    from aigvqa.pipeline.evaluation.evaluate import evaluate

    sub = X[np.arange(rows)] if rows < len(X) else X
    head = clone(head).set_params(epochs=epochs)
    out = {}
    for together in (False, True):
        start = time.perf_counter()
        result = evaluate(
            head,
            sub,
            y[:rows],
            split="random-8:2",
            trials=trials,
            progress=False,
            batch_trials=together,
        )
        out["together_s" if together else "one_by_one_s"] = time.perf_counter() - start
        out["srcc_together" if together else "srcc_one_by_one"] = result.values("srcc")
    out["ratio"] = out["one_by_one_s"] / out["together_s"]
    out["max_srcc_diff"] = float(
        np.max(np.abs(out.pop("srcc_together") - out.pop("srcc_one_by_one")))
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="time deep epochs on this many rows and scale (default: all)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="deep heads under bfloat16 autocast")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="deep heads' batch size (default: the preset's)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: the extractor bench's, else torch's)",
    )
    parser.add_argument(
        "--text-lengths",
        choices=("auto", "fetv", "uniform", "full"),
        default="auto",
        help="prompt lengths: FETV's prompts (auto: when ../shared is there), uniform 8..77, "
        "or all 77",
    )
    parser.add_argument("--heads", default="ugvq,ugvq-small,msavqa,svr,elasticnet,lightgbm")
    parser.add_argument(
        "--classical-jobs",
        type=int,
        default=1,
        help="n_jobs of the classical heads (LightGBM threads)",
    )
    parser.add_argument("--extractors-json", type=Path, default=EXTRACTORS_JSON)
    parser.add_argument(
        "--backbone-ms-per-video",
        type=float,
        default=None,
        help="total backbone forward ms per video, instead of the extractor bench's numbers",
    )
    parser.add_argument(
        "--evaluate-trials",
        type=int,
        default=3,
        help="deep heads: time evaluate with this many trials together and one by one (0: skip)",
    )
    parser.add_argument(
        "--evaluate-epochs", type=int, default=1, help="epochs per trial in that comparison"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    import torch

    from aigvqa.heads.registry import create_head

    backbones = load_backbones(args.extractors_json, args.backbone_ms_per_video)
    threads = args.threads or backbones.torch_threads
    if threads:
        torch.set_num_threads(threads)
    n = args.videos
    rows = min(args.rows or n, n)
    heads = [h for h in args.heads.split(",") if h]
    print(
        f"aigvqa heads bench: {n} videos, deep heads on {args.device}"
        f"{' with bf16 autocast' if args.amp else ''}"
        f"{' (' + torch.cuda.get_device_name(0) + ')' if args.device.startswith('cuda') else ''}, "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "*** synthetic in-memory cache of RANDOM float16 arrays with the real widths: "
        + ", ".join(f"{k} {t}x{d}" for k, (t, d) in SHAPES.items())
        + " ***"
    )
    start = time.perf_counter()
    text_lengths, text_note = prompt_token_lengths(args.text_lengths)
    X, y = synthetic_cache(n, text_lengths=text_lengths)
    print(
        f"built the cache in {time.perf_counter() - start:.1f} s "
        f"({sum(a.nbytes for a in X.arrays.values()) / 2**30:.2f} GiB); "
        f"prompt lengths: {text_note}"
    )
    print(f"backbone forward ms per video from {backbones.source}")
    if backbones.torch_threads and torch.get_num_threads() != backbones.torch_threads:
        print(
            f"  NOTE: heads use {torch.get_num_threads()} torch threads, "
            "the backbones were timed with "
            f"{backbones.torch_threads}: the time ratio is not like for like"
        )
    if args.amp and args.device == "cpu":
        print("  NOTE: heads under bf16 autocast, backbones in float32 on CPU: not like for like")

    peak, peak_note = device_peak_tflops(args.device, args.amp)
    print(f"device peak: {f'{peak:.3g} TFLOP/s' if peak else 'unknown'} ({peak_note})")
    deep_common = dict(device=args.device, amp=args.amp, batch_size=args.batch_size)
    deep_configs = {  # bench label: (registry name, options)
        "ugvq": ("ugvq", dict(preset="paper", **deep_common)),
        "ugvq-small": ("ugvq", dict(preset="small", **deep_common)),
        "msavqa": ("msavqa", dict(preset="default", **deep_common)),
    }
    classical_features = [f for f in SHAPES if f != "clip-text"]
    results = []
    for name in heads:
        if name in deep_configs:
            registry_name, options = deep_configs[name]
            head = create_head(registry_name, **options)
            features = list({**head.DEFAULT_FEATURES, **(head.features or {})}.values())
            print(f"{name}: timing one epoch on {rows} rows ...", flush=True)
            row = time_deep_epoch(name, head, X, y, rows, n)
            row["kind"] = "epoch"
            row["seconds"] = row["epoch_s"]
            note = "" if rows == n else f" (measured on {rows} rows, scaled x{n / rows:g})"
            print(
                f"  {row['epoch_s']:.1f} s/epoch{note} at batch size {head._hp('batch_size')}; "
                f"{row['params'] / 1e6:.1f} M parameters; "
                f"predict {row['predict_ms_per_video']:.3f} ms/video",
                flush=True,
            )
            # four batches when the cache has them; a small --videos counts on all of it
            row["epoch_gflops_per_video"] = epoch_gflops_per_video(
                head, X, y, min(len(X), 4 * int(head._hp("batch_size")))
            )
            row["tflops"] = row["epoch_gflops_per_video"] * n / row["epoch_s"] / 1e3
            row["peak_fraction"] = row["tflops"] / peak if peak else None
            share = f", {100 * row['peak_fraction']:.2f} % of the device's peak" if peak else ""
            print(
                f"  {row['epoch_gflops_per_video']:.2f} GFLOPs per video per epoch "
                "(forward + backward): "
                f"{row['tflops']:.3f} TFLOP/s{share}",
                flush=True,
            )
            if args.evaluate_trials:
                print(
                    f"  evaluate, {args.evaluate_trials} trials x {args.evaluate_epochs} epoch(s) "
                    f"on {rows} rows: "
                    "trials together vs one by one ...",
                    flush=True,
                )
                both = time_evaluate_both_ways(
                    head, X, y, rows, args.evaluate_trials, args.evaluate_epochs
                )
                row["evaluate"] = both
                print(
                    f"  one by one {both['one_by_one_s']:.1f} s, "
                    f"together {both['together_s']:.1f} s: "
                    f"{both['ratio']:.2f}x; per-trial SRCC max |diff| {both['max_srcc_diff']:.1e} "
                    f"(load average now {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        else:
            head = create_head(name, features=classical_features, n_jobs=args.classical_jobs)
            features = classical_features
            print(
                f"{name}: one fit on {n} rows (mean+std pooling of {', '.join(features)}) ...",
                flush=True,
            )
            start = time.perf_counter()
            head.fit(X, y)
            row = {"head": name, "kind": "fit", "seconds": time.perf_counter() - start}
            print(f"  {row['seconds']:.1f} s per fit", flush=True)
        ms = backbones.ms_for(features)
        if ms is not None:
            row["backbone_epoch_s"] = n * ms / 1e3
            row["ratio"] = row["backbone_epoch_s"] / row["seconds"]
        gflops = backbones.gflops_for(features) if "epoch_gflops_per_video" in row else None
        if gflops is not None:
            row["backbone_gflops_per_video"] = gflops
            row["flop_ratio"] = gflops / row["epoch_gflops_per_video"]
        results.append(row)

    print()
    print(
        f"{'head':<11} {'what':<6} {'seconds':>9} {'backbone epoch s':>17} {'ratio':>9} "
        f"{'FLOP ratio':>11}  target >= {TARGET_RATIO:g}x"
    )
    for row in results:
        if "ratio" in row:
            verdict = "met" if row["ratio"] >= TARGET_RATIO else "NOT met"
            flops = f"{row['flop_ratio']:>10.0f}x" if "flop_ratio" in row else f"{'n/a':>11}"
            tail = f"{row['backbone_epoch_s']:>17.0f} {row['ratio']:>8.0f}x {flops}  {verdict}"
        else:
            tail = f"{'n/a':>17} {'n/a':>9} {'n/a':>11}"
        print(f"{row['head']:<11} {row['kind']:<6} {row['seconds']:>9.1f} {tail}")
    print(
        "(backbone epoch = videos x forward ms per video of the extractors the head reads; "
        "'fit' rows compare one classical fit with it; FLOP ratio = backbone forward GFLOPs per "
        "video / head epoch GFLOPs per video: the time ratio at equal FLOP rates)"
    )
    deep_rows = [r for r in results if "tflops" in r]
    if deep_rows:
        print()
        print(
            f"{'head':<11} {'epoch s':>9} {'TFLOP/s':>9} {'% of peak':>10} "
            f"{'evaluate: one by one / together':>32}"
        )
        for row in deep_rows:
            share = (
                f"{100 * row['peak_fraction']:>9.2f}%"
                if row["peak_fraction"] is not None
                else f"{'n/a':>10}"
            )
            ev = row.get("evaluate")
            both = (
                f"{ev['one_by_one_s']:.1f} s / {ev['together_s']:.1f} s = {ev['ratio']:.2f}x"
                if ev
                else "skipped"
            )
            print(
                f"{row['head']:<11} {row['epoch_s']:>9.2f} {row['tflops']:>9.3f} {share} {both:>32}"
            )
        print(f"(peak: {peak_note}; FLOPs are the counted matrix products)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "videos": n,
                    "device": args.device,
                    "torch_threads": torch.get_num_threads(),
                    "amp": args.amp,
                    "prompt_lengths": text_note,
                    "peak_tflops": peak,
                    "peak_source": peak_note,
                    "backbone_source": backbones.source,
                    "results": results,
                },
                indent=2,
            )
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
