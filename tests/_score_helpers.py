"""What the scoring tests share (test_score.py, test_adversary_model.py): an in-process Dask
client, and an SVR bundle trained on six demo videos with six other videos to score."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from aigvqa.pipeline.demo import make_demo_dataset
from aigvqa.pipeline.extract import extract
from aigvqa.pipeline.model.train import train
from aigvqa.pipeline.records import VideoRecord

EXTRACTORS = {"handcrafted": {"max_frames": 6, "size": 32}}


@contextlib.contextmanager
def in_process_client() -> Iterator:
    """A Dask client on threads of this process (one worker, two threads)."""
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
        yield c


def trained_model(
    root: Path, client
) -> tuple[Path, Path, Path, list[VideoRecord], list[VideoRecord]]:
    """(root, bundle folder, training cache, training records, new records): an SVR bundle
    (labels overall, alignment) trained on six demo videos' handcrafted features, and six
    other demo videos (seed 1) to score."""
    _, videos = make_demo_dataset(root / "train", 6, size=32, seconds=1.0, progress=False)
    train_cache = root / "train.h5"
    train_records = [v.record(root / "train") for v in videos]
    extract(train_records, EXTRACTORS, train_cache, client=client, progress=False)
    model, _ = train(train_cache, "svr", root / "model", labels="overall,alignment")
    _, new = make_demo_dataset(root / "new", 6, size=32, seconds=1.0, seed=1, progress=False)
    return root, model, train_cache, train_records, [v.record(root / "new") for v in new]
