"""What the stage-one tests share (test_extract*.py): a test extractor, clips, a cluster.

The extractor is shipped to Dask workers and decode processes by value (cloudpickle), so it needs no
registry entry and no ``tests/`` on the workers' path; it counts its calls in a file
because the work happens in other processes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from aigvqa.extractors.base import Extractor
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.views import KeyFramesView
from aigvqa.pipeline.records import VideoRecord

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOOKKEEPING = frozenset({"log", "sleep", "kill_once", "kill_on_black", "batch_size"})
"""Options that change how a run goes, not the features: left out of the provenance."""


class MeanColour(Extractor):
    """Mean RGB of each of ``n`` key frames (32 x 32); ``batch_size`` items per forward.

    Options for the tests' bookkeeping and faults: ``log`` gets one line per forward call
    (its item count); ``sleep`` seconds per call; ``kill_once``: the first call anywhere
    (a marker file decides) ends its process with ``os._exit``; ``kill_on_black``: every
    call whose batch holds an all-black item ends its process (batches may mix videos).
    """

    name = "mean-colour"

    def __init__(
        self,
        n: int = 4,
        batch_size: int = 16,
        log: str | None = None,
        sleep: float = 0.0,
        kill_once: str | None = None,
        kill_on_black: bool = False,
    ) -> None:
        super().__init__(
            n=n,
            batch_size=batch_size,
            log=log,
            sleep=sleep,
            kill_once=kill_once,
            kill_on_black=kill_on_black,
        )

    def output_dims(self):
        return {"values": 3}

    def view(self):
        return KeyFramesView(n=self._config["n"], size=32)

    def load(self, device="cpu"):
        self.weights_identity = "none"

    def forward(self, items):
        cfg = self._config  # .get: subclasses may store other options
        if cfg.get("kill_once"):
            try:
                os.close(os.open(cfg["kill_once"], os.O_CREAT | os.O_EXCL))
                os._exit(1)  # a worker process dying mid-task (segfault, OOM kill)
            except FileExistsError:
                pass
        if cfg.get("kill_on_black") and any(item.max() == 0 for item in items):
            os._exit(1)
        if cfg.get("sleep"):
            time.sleep(cfg["sleep"])
        if cfg.get("log"):
            with open(cfg["log"], "a") as fh:
                fh.write(f"{len(items)}\n")
        return items.reshape(len(items), -1, 3).mean(axis=1).astype(np.float32)

    def provenance(self):
        prov = super().provenance()
        prov["config"] = {k: v for k, v in self.config().items() if k not in BOOKKEEPING}
        return prov


def moving_clips(folder: Path, count: int, n_frames: int) -> list[VideoRecord]:
    """``count`` records v0, v1, ... of moving-pattern clips (32 x 48 at 8 fps, seed i),
    labelled mos = i."""
    return [
        VideoRecord(
            f"v{i}",
            write_video(folder / f"v{i}.mp4", moving_pattern(n_frames, 32, 48, seed=i), 8),
            labels={"mos": float(i)},
        )
        for i in range(count)
    ]


@contextmanager
def two_worker_client(dask_config: dict[str, Any] | None = None) -> Iterator[Any]:
    """A client of a LocalCluster of 2 worker processes (``dask_config`` set while it runs)."""
    import dask
    from distributed import Client

    from aigvqa.pipeline.extract.cluster import local_cluster

    with dask.config.set(dask_config or {}):
        with local_cluster(2, dashboard_address=":0") as cluster, Client(cluster) as client:
            yield client
