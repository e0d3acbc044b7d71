"""Decoder and view-streaming benchmark (prints measured numbers; not a test).

    python bench/decode.py                  # decoder table + stream_views throughput + memory
    python bench/decode.py --long 600       # memory check on a 10-minute 1080p clip (slow to encode)

1. Decoders: ms to decode every frame of a 4 s 512x512 24 fps clip to RGB uint8, for
   PyAV (what aigvqa uses; FFmpeg threads on / off), OpenCV and decord (when installed;
   it is not a dependency), on mp4 (H.264) and gif; plus PyAV on avi and webm and a
   PyAV run that converts only the 8 key frames to RGB.
2. stream_views on a 1080p clip with the stage-one view set (key frames, uniform frames,
   SlowFast clips, fragments): decoded frames per second.
3. Peak resident memory of stream_views (child processes) on a short and a long 1080p
   clip: it must not grow with the clip's length.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aigvqa.extractors.decode import iter_frames, probe, write_video
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.views import (
    FragmentsView,
    KeyFramesView,
    SlowFastClipsView,
    UniformFramesView,
    keyframe_indices,
    stream_views,
)


def stage_one_views() -> list:
    return [KeyFramesView(), UniformFramesView(n=16), SlowFastClipsView(), FragmentsView()]


def decode_pyav(path: Path, threads: int) -> int:
    return sum(1 for _ in iter_frames(path, threads=threads))


def decode_pyav_keyframes(path: Path) -> int:
    wanted = keyframe_indices(probe(path).num_frames, 8)
    return sum(1 for _ in iter_frames(path, wanted))


def decode_opencv(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        capture.release()
    return count


def decode_decord(path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    count = 0
    for index in range(len(reader)):
        reader[index].asnumpy()
        count += 1
    return count


def time_ms(fn, path: Path, repeats: int) -> tuple[float, int]:
    fn(path)  # warm-up (file cache, library initialisation)
    times, frames = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        frames = fn(path)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), frames


def decoder_table(workdir: Path, repeats: int) -> None:
    clip = moving_pattern(96, 512, 512, seed=0)
    files = {ext: write_video(workdir / f"clip.{ext}", clip, fps=24) for ext in ("mp4", "gif")}
    files_extra = {
        ext: write_video(workdir / f"clip.{ext}", clip, fps=24) for ext in ("avi", "webm")
    }
    decoders = {
        "pyav (threads=auto)": lambda p: decode_pyav(p, 0),
        "pyav (threads=1)": lambda p: decode_pyav(p, 1),
        "pyav, 8 key frames to RGB": decode_pyav_keyframes,
        "opencv": decode_opencv,
        "decord": decode_decord,
    }
    print("## Decoders: 4 s 512x512 24 fps clip (96 frames), all frames to RGB uint8")
    print(f"median of {repeats} runs, ms per decode (frames decoded)\n")
    print(f"| decoder | {' | '.join(files)} |")
    print(f"|---|{'---|' * len(files)}")
    for name, fn in decoders.items():
        cells = []
        for path in files.values():
            try:
                ms, frames = time_ms(fn, path, repeats)
                cells.append(f"{ms:.1f} ({frames})")
            except ImportError:
                cells.append("not installed")
            except Exception as err:  # noqa: BLE001 - a benchmark reports a decoder's failure
                cells.append(f"fails: {type(err).__name__}")
        print(f"| {name} | {' | '.join(cells)} |")
    print()
    for ext, path in files_extra.items():
        ms, frames = time_ms(lambda p: decode_pyav(p, 0), path, repeats)
        print(f"pyav (threads=auto) on {ext}: {ms:.1f} ms ({frames} frames)")
    print()


def make_1080p(path: Path, seconds: float, fps: int = 30) -> Path:
    """A 1080p clip: 48 distinct synthetic frames cycled (computing 1080p patterns is slow)."""
    base = moving_pattern(48, 1080, 1920, seed=1)
    frames = (base[i % len(base)] for i in range(int(seconds * fps)))
    return write_video(path, frames, fps=fps)


def throughput(path: Path) -> None:
    info = probe(path)
    start = time.perf_counter()
    counts: dict[str, int] = {}
    for key, _item, _array in stream_views(path, stage_one_views()):
        counts[key] = counts.get(key, 0) + 1
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    decoded = sum(1 for _ in itertools.islice(iter_frames(path), info.num_frames))
    decode_only = time.perf_counter() - start
    print(
        f"## stream_views on {info.width}x{info.height}, {info.num_frames} frames, {info.fps} fps"
    )
    print(
        f"stage-one views: {seconds:.2f} s = {info.num_frames / seconds:.1f} frames/s; items {counts}"
    )
    print(
        f"decode + RGB of every frame alone: {decode_only:.2f} s = {decoded / decode_only:.1f} frames/s\n"
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM rather than ru_maxrss: Linux carries
    ru_maxrss over fork + exec, so a child would report its parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(path: str) -> None:
    before = peak_rss_mib()
    items = sum(1 for _ in stream_views(path, stage_one_views()))
    print(f"{items} {before:.1f} {peak_rss_mib():.1f}")


def memory(workdir: Path, lengths: list[float]) -> None:
    print("## Peak RSS of stream_views (stage-one views), 1080p 30 fps, fresh process each")
    print("| clip | frames | items | RSS after imports MiB | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for seconds in lengths:
        path = make_1080p(workdir / f"long_{int(seconds)}s.mp4", seconds)
        out = subprocess.run(
            [sys.executable, __file__, "--child-memory", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        frames = probe(path).num_frames
        print(f"| {seconds:g} s | {frames} | {out[0]} | {out[1]} | {out[2]} |")
        path.unlink()
    print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--short", type=float, default=5.0, help="short 1080p clip, seconds")
    parser.add_argument("--long", type=float, default=60.0, help="long 1080p clip, seconds")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory)
        return
    np.random.seed(0)
    with tempfile.TemporaryDirectory(prefix="aigvqa-bench-") as tmp:
        workdir = Path(tmp)
        decoder_table(workdir, args.repeats)
        throughput(make_1080p(workdir / "throughput.mp4", 4.0))
        memory(workdir, [args.short, args.long])


if __name__ == "__main__":
    main()
