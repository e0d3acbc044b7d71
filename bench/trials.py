"""Trials together vs one by one: ``evaluate`` of a deep head on a synthetic cache with the
real feature widths, with ``batch_trials=True`` (one vectorised model for all trials,
``aigvqa.heads.trials``) and ``batch_trials=False`` (one fit per trial), timed, with the
per-trial metrics of the two runs compared.

    python bench/trials.py                            # msavqa, 10 trials, 10,000 videos, 2 epochs
    python bench/trials.py --videos 2000 --epochs 1 --trials 5 --head ugvq --preset small
    python bench/trials.py --device cuda --epochs 30  # the full preset on a GPU

    python bench/trials.py --stack --videos 2000      # a stack's fit: deep base + SVR

``--stack`` times ``StackingHead([(head, ...), ("svr", SVR)], cv=--cv)`` fit on all the
videos instead: the deep base's cv out-of-fold models and its refit trained together as one
vectorised model (``batch_trials=True``) vs one by one (``False``). The SVR (untuned: no
grid search, so the deep base dominates) costs the same in both runs, so the ratio of the
whole fit is a lower bound of the deep base's own. Printed with the largest difference of
the out-of-fold predictions and both runs' meta weights.

Issue 12's target on a 2-core CPU: msavqa, 10 trials, 10,000 videos, together >= 3x faster
than one by one, per-trial SRCC equal within 1e-3.

The cache is built in memory from RANDOM float16 arrays with the real widths (bench/heads.py,
``synthetic_cache``) and a random MOS, so the SRCCs themselves are near 0: what is compared is
that both runs give the same per-trial numbers. Only the features the head reads are kept
(what ``--features`` does on the CLI). ``--epochs`` overrides the preset's 30 to keep a CPU
run in minutes; both runs use the same value. The machine's load average is printed before
and after each run, with wall and CPU seconds: on a shared machine the wall ratio is only as
good as the load was steady, and with more torch threads than free cores OpenMP's waiting
threads inflate both (``--threads 1`` is the steadiest measure there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heads import prompt_token_lengths, synthetic_cache  # noqa: E402


def deep_head_and_cache(head_name, preset, videos, epochs, device, threads, text_lengths):
    """The deep head to time and a synthetic cache of the features it reads (torch set to
    ``threads``); also the note on the prompt lengths used."""
    import torch

    from aigvqa.heads.registry import create_head

    if threads:
        torch.set_num_threads(threads)
    text, text_note = prompt_token_lengths(text_lengths)
    X, y = synthetic_cache(videos, text_lengths=text)
    head = create_head(head_name, preset=preset, epochs=epochs, device=device)
    X = X.select(sorted(set({**head.DEFAULT_FEATURES, **(head.features or {})}.values())))
    return head, X, y, text_note


def time_both_ways(fit, order: str, log) -> tuple[dict, dict, dict, dict]:
    """``fit(together)`` run with trials together and one by one (in ``order``): its results,
    wall and CPU seconds and load averages (before, after), keyed "together" / "one by one"."""
    results, seconds, cpu, load = {}, {}, {}, {}
    for together in (True, False) if order == "together-first" else (False, True):
        label = "together" if together else "one by one"
        before = os.getloadavg()[0]
        start, start_cpu = time.perf_counter(), time.process_time()
        results[label] = fit(together)
        seconds[label], cpu[label] = time.perf_counter() - start, time.process_time() - start_cpu
        load[label] = (before, os.getloadavg()[0])
        log(
            f"  {label:>10}: {seconds[label]:8.1f} s wall, {cpu[label]:8.1f} s CPU  "
            f"(load average {before:.1f} -> {load[label][1]:.1f})"
        )
    return results, seconds, cpu, load


def run(
    head_name: str,
    preset: str,
    videos: int,
    trials: int,
    epochs: int,
    device: str,
    split: str,
    threads: int | None,
    order: str,
    text_lengths: str = "auto",
    log=print,
) -> dict:
    import torch

    from aigvqa.pipeline.evaluation.evaluate import evaluate

    head, X, y, text_note = deep_head_and_cache(
        head_name, preset, videos, epochs, device, threads, text_lengths
    )
    n = len(X)
    groups = {"prompt": np.arange(n) // 4, "generator": np.array([f"g{i % 8}" for i in range(n)])}
    log(
        f"{head_name} (preset {preset}, {epochs} epochs, device {device}) on {n} synthetic videos "
        f"({', '.join(f'{k} {v.shape[1]}x{v.shape[2]}' for k, v in X.arrays.items())}; "
        f"prompts: {text_note}); split {split}, {trials} trials; {os.cpu_count()} CPU cores, "
        f"torch threads {torch.get_num_threads()}"
    )
    results, seconds, cpu, load = time_both_ways(
        lambda together: evaluate(
            head, X, y, groups, split=split, trials=trials, progress=False, batch_trials=together
        ),
        order,
        log,
    )
    srcc = {k: r.values("srcc") for k, r in results.items()}
    plcc = {k: r.values("plcc") for k, r in results.items()}
    d_srcc = float(np.max(np.abs(srcc["together"] - srcc["one by one"])))
    d_plcc = float(np.max(np.abs(plcc["together"] - plcc["one by one"])))
    ratio = seconds["one by one"] / seconds["together"]
    cpu_ratio = cpu["one by one"] / cpu["together"]
    log(
        f"  ratio one by one / together: {ratio:.2f}x wall (target >= 3x), "
        f"{cpu_ratio:.2f}x CPU time; "
        f"per-trial SRCC max |diff| {d_srcc:.2e}, PLCC {d_plcc:.2e} (target < 1e-3)"
    )
    log(f"  per-trial SRCC together:   {np.round(srcc['together'], 5).tolist()}")
    log(f"  per-trial SRCC one by one: {np.round(srcc['one by one'], 5).tolist()}")
    return {
        "head": head_name,
        "preset": preset,
        "videos": n,
        "trials": trials,
        "epochs": epochs,
        "device": device,
        "split": split,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average": load,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "max_srcc_diff": d_srcc,
        "max_plcc_diff": d_plcc,
        "srcc": {k: v.tolist() for k, v in srcc.items()},
    }


def run_stack(
    head_name: str,
    preset: str,
    videos: int,
    epochs: int,
    device: str,
    cv: int,
    threads: int | None,
    order: str,
    text_lengths: str = "auto",
    log=print,
) -> dict:
    import torch
    from sklearn.base import clone

    from aigvqa.heads.blend import StackingHead
    from aigvqa.heads.registry import create_head

    head, X, y, text_note = deep_head_and_cache(
        head_name, preset, videos, epochs, device, threads, text_lengths
    )
    stack = StackingHead([(head_name, head), ("svr", create_head("svr"))], cv=cv, tune_bases=None)
    log(
        f"stack of {head_name} (preset {preset}, {epochs} epochs, device {device}) + svr, "
        f"cv {cv}, fit on {len(X)} synthetic videos (prompts: {text_note}); "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    )
    fitted, seconds, cpu, load = time_both_ways(
        lambda together: clone(stack).set_params(batch_trials=together).fit(X, y), order, log
    )
    oof = {k: s.oof_predictions_ for k, s in fitted.items()}
    d_oof = float(np.max(np.abs(oof["together"] - oof["one by one"])))
    ratio = seconds["one by one"] / seconds["together"]
    cpu_ratio = cpu["one by one"] / cpu["together"]
    log(
        f"  ratio one by one / together: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time "
        f"(whole stack fit, SVR included); out-of-fold predictions max |diff| {d_oof:.2e} "
        f"(MOS std {np.std(y):.1f})"
    )
    for label, s in fitted.items():
        weights = {k: round(v, 5) for k, v in s.meta_weights_.items()}
        log(f"  meta weights {label}: {weights} ({s.meta_choice_})")
    return {
        "stack": [head_name, "svr"],
        "preset": preset,
        "videos": len(X),
        "cv": cv,
        "epochs": epochs,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average": load,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "max_oof_diff": d_oof,
        "meta_weights": {k: s.meta_weights_ for k, s in fitted.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head", default="msavqa")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per trial (default 2; the preset has 30)"
    )
    parser.add_argument("--split", default="random-8:2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--order", choices=("together-first", "one-by-one-first"), default="one-by-one-first"
    )
    parser.add_argument(
        "--text-lengths", choices=("auto", "fetv", "uniform", "full"), default="auto"
    )
    parser.add_argument(
        "--stack",
        action="store_true",
        help="time a stack's fit (deep head + SVR) with the deep base's folds together vs "
        "one by one, instead of evaluate",
    )
    parser.add_argument("--cv", type=int, default=5, help="--stack: the stack's fold count")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.stack:
        row = run_stack(
            args.head,
            args.preset,
            args.videos,
            args.epochs,
            args.device,
            args.cv,
            args.threads,
            args.order,
            args.text_lengths,
        )
    else:
        row = _run_evaluate(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(row, indent=2))
        print(f"wrote {args.out}")
    return 0


def _run_evaluate(args) -> dict:
    return run(
        args.head,
        args.preset,
        args.videos,
        args.trials,
        args.epochs,
        args.device,
        args.split,
        args.threads,
        args.order,
        args.text_lengths,
    )


if __name__ == "__main__":
    sys.exit(main())
