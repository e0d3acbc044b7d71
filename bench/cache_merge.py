"""Cache merge/read cost at scale: 5,000 synthetic videos (clip-frames 16x512,
slowfast 3-8x2304, float16).

Run: python bench/cache_merge.py [--videos 5000]   (prints seconds; nothing is asserted)
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from aigvqa.cache import FeatureCache, GroupData, merge_shards, write_shard


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=5000)
    ap.add_argument("--per-shard", type=int, default=100)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aigvqa-cache-bench-"))
    rng = np.random.default_rng(0)
    prov_frames = {
        "extractor": "clip-frames",
        "config": {"arch": "ViT-B-32"},
        "view": None,
        "weights": "RANDOM-INIT",
    }
    prov_slowfast = {"extractor": "slowfast", "config": {}, "view": None, "weights": "RANDOM-INIT"}

    def make_shards():
        shards = []
        for s in range(args.videos // args.per_shard):
            ids = [f"v{s * args.per_shard + i:06d}" for i in range(args.per_shard)]
            frames = [rng.standard_normal((16, 512), dtype=np.float32) for _ in ids]
            motion = [
                rng.standard_normal((int(rng.integers(3, 9)), 2304), dtype=np.float32) for _ in ids
            ]
            videos = [{"video_id": v, "path": v + ".mp4", "labels": {"mos": 3.0}} for v in ids]
            groups = [
                GroupData("clip-frames", "video", ids, frames, provenance=prov_frames),
                GroupData("slowfast", "video", ids, motion, provenance=prov_slowfast),
            ]
            shards.append(write_shard(root / f"s{s:04d}.h5", groups, [], videos))
        return shards

    shards, dt = timed(make_shards)
    print(f"wrote {len(shards)} shards of {args.per_shard} videos: {dt:.2f} s")
    cache = root / "cache.h5"
    for b in range(0, len(shards), 10):
        _, dt = timed(lambda b=b: merge_shards(cache, shards[b : b + 10]))
        size = cache.stat().st_size / 2**20
        print(
            f"merge 10 shards into a cache of {b * args.per_shard} videos: {dt:.2f} s "
            f"(cache {size:.0f} MiB)"
        )
    data, dt = timed(lambda: FeatureCache(cache).read(["clip-frames", "slowfast"]))
    print(f"read all {len(data.ids)} rows of 2 groups as float32: {dt:.2f} s")
    sub = list(data.ids[::50])
    _, dt = timed(lambda: FeatureCache(cache).read(["clip-frames", "slowfast"], ids=sub))
    print(f"read {len(sub)} scattered rows: {dt:.2f} s")
    report, dt = timed(lambda: FeatureCache(cache).verify())
    print(
        f"verify (read every byte, check every checksum): {dt:.2f} s "
        f"({'ok' if report.ok else 'DAMAGED'})"
    )
    once = root / "cache_once.h5"
    _, dt = timed(lambda: merge_shards(once, shards))
    print(f"merge all {len(shards)} shards in one call: {dt:.2f} s")
    _, dt = timed(lambda: merge_shards(once, shards))
    print(f"re-merge of already-cached shards (no rewrite): {dt:.2f} s")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
