"""Which Dask cluster stage one runs on: nothing home-made, three stock choices.

- default: a ``distributed.LocalCluster`` of worker *processes* sized to the machine, each
  with one task thread and ``torch_threads`` intra-op threads (one, unless told), so N
  workers use N cores without oversubscription;
- ``gpus=True``: a ``dask_cuda.LocalCUDACluster``, one worker per visible GPU (dask-cuda
  pins each worker to its device through ``CUDA_VISIBLE_DEVICES``);
- ``scheduler="tcp://host:port"`` (or a scheduler-file path): connect to a running
  scheduler, so any deployment Dask supports (dask-jobqueue on SLURM/PBS, dask-kubernetes,
  ``dask scheduler`` + ``dask worker`` by hand) works. Worker sizing is then the
  deployment's business; shard files are written where the workers run, so the cache
  folder must be on storage the workers and the client share.

``open_cluster`` is a context manager that yields a connected ``distributed.Client`` and
closes only what it started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

from aigvqa.errors import AigvqaError

# Each worker holds every requested backbone in memory; below this much RAM per worker
# the default sizing uses fewer workers rather than let them swap or be killed.
_MIN_BYTES_PER_WORKER = 3 * 2**30


class ClusterError(AigvqaError, RuntimeError):
    """A requested Dask cluster cannot be started or reached."""


@dataclass(frozen=True)
class ClusterSpec:
    """How to get workers; the arguments of ``open_cluster`` as a value (for reports)."""

    scheduler: str | None = None
    gpus: bool = False
    n_workers: int | None = None
    threads_per_worker: int = 1
    torch_threads: int = 1
    dashboard_address: str | None = ":8787"


def default_n_workers(torch_threads: int = 1, memory_per_worker: int = _MIN_BYTES_PER_WORKER) -> int:
    """Worker processes for this machine: one per ``torch_threads`` cores, capped by RAM."""
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    by_cores = max(1, (cores or 1) // max(1, torch_threads))
    by_memory = max(1, psutil.virtual_memory().total // memory_per_worker)
    return int(min(by_cores, by_memory))


def _thread_env(torch_threads: int) -> dict[str, str]:
    n = str(torch_threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


# glibc malloc: buffers up to 32 MiB (a decoded 4K frame is 24 MiB) come from the heap and
# are reused; up to 128 MiB of freed heap is kept rather than handed back to the OS.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def worker_environ(torch_threads: int = 1) -> dict:
    """Dask config for local worker processes, set before each process starts.

    - the OpenMP / BLAS pools sized to ``torch_threads`` (distributed pins them to 1);
    - glibc malloc thresholds (``MALLOC_ENV``) instead of distributed's
      ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes the mmap threshold at 128 KiB:
      every decoded frame (MiBs) was then a fresh mmap whose pages fault in again, and a
      chunk of 720p videos ran 1.3-2x slower (bench/extract_throughput.py). Workers here
      hold models and transient frames, not Dask data that trimming would help with.
    A variable already set in the environment wins (distributed's rule).
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    env.update(_thread_env(torch_threads))
    env.update(MALLOC_ENV)
    return {"distributed.nanny.pre-spawn-environ": env}


def local_cluster(n_workers: int, threads_per_worker: int = 1, torch_threads: int = 1,
                  dashboard_address: str | None = ":8787"):
    """The default stage-one cluster: ``n_workers`` processes, configured as above."""
    import dask
    from distributed import LocalCluster

    if n_workers < 1:
        raise ClusterError(f"--workers must be at least 1, got {n_workers}")
    with dask.config.set(worker_environ(torch_threads)):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
        )


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec) -> Iterator[object]:
    """Yield a ``distributed.Client`` for ``spec``; close the cluster if we started it."""
    from distributed import Client

    if spec.scheduler:
        if spec.gpus or spec.n_workers:
            raise ClusterError(
                "--scheduler connects to an existing cluster whose workers are already "
                "sized; drop --gpus/--workers, or drop --scheduler to start a local cluster"
            )
        try:
            if "://" not in spec.scheduler and os.path.isfile(spec.scheduler):
                # what dask-jobqueue / `dask scheduler --scheduler-file` write
                client = Client(scheduler_file=spec.scheduler, timeout="30s")
            else:
                client = Client(spec.scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {spec.scheduler!r} ({err}); check the "
                "address (tcp://host:port, or a scheduler JSON file) and that it is running"
            ) from err
        try:
            yield client
        finally:
            client.close()
        return

    if spec.gpus:
        cluster = _cuda_cluster(spec)
    else:
        cluster = local_cluster(
            spec.n_workers if spec.n_workers is not None else default_n_workers(spec.torch_threads),
            spec.threads_per_worker,
            spec.torch_threads,
            spec.dashboard_address,
        )
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _cuda_cluster(spec: ClusterSpec):
    if importlib.util.find_spec("dask_cuda") is None:
        raise ClusterError(
            "--gpus needs dask-cuda, which is not installed; install it with "
            "`pip install 'aigvqa[cuda]'` (or `pip install dask-cuda`), or run without "
            "--gpus to use a CPU LocalCluster"
        )
    import dask
    from dask_cuda import LocalCUDACluster

    kwargs = {
        "threads_per_worker": spec.threads_per_worker,
        "dashboard_address": spec.dashboard_address,
    }
    if spec.n_workers:
        # LocalCUDACluster makes one worker per listed device.
        kwargs["CUDA_VISIBLE_DEVICES"] = list(range(spec.n_workers))
    try:
        with dask.config.set(worker_environ(spec.torch_threads)):
            return LocalCUDACluster(**kwargs)
    except (RuntimeError, ValueError) as err:  # no GPU visible, bad device list
        raise ClusterError(f"LocalCUDACluster could not start ({err}); check nvidia-smi") from err


def describe_client(client) -> str:
    """What a client runs on, for progress lines and reports: the cluster class and its
    worker count when we can see it, else the scheduler address (an existing cluster)."""
    cluster = getattr(client, "cluster", None)
    n_workers = len(client.scheduler_info().get("workers", {}))
    if cluster is not None:
        return f"{type(cluster).__name__} of {n_workers} worker(s)"
    return f"scheduler {client.scheduler.address} ({n_workers} worker(s))"


def dashboard_message(client) -> str:
    """One line saying where the Dask dashboard is, or why there is none."""
    services = client.scheduler_info().get("services", {})
    if "dashboard" not in services:
        return "Dask dashboard: not running on this scheduler"
    if importlib.util.find_spec("bokeh") is None and _is_local(client):
        return (
            f"Dask dashboard: {client.dashboard_link} (serves no pages: install bokeh>=3.1 "
            "to see task progress there)"
        )
    return f"Dask dashboard: {client.dashboard_link}"


def _is_local(client) -> bool:
    return getattr(client, "cluster", None) is not None


def set_worker_torch_threads(client, torch_threads: int) -> None:
    """Set torch's intra-op thread count in every worker, now and in workers that join later
    (a restarted worker, a scaled-up deployment): a stock ``WorkerPlugin``."""
    client.register_plugin(TorchThreadsPlugin(torch_threads), name="aigvqa-torch-threads")


try:  # distributed is a hard dependency; the guard only keeps this module importable for docs
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[assignment,misc]


class TorchThreadsPlugin(WorkerPlugin):
    """Thread pools of a worker: the OpenMP/BLAS environment before torch is imported, and
    ``torch.set_num_threads`` if it already is. Importing torch here would cost every
    worker seconds even when no extractor needs it."""

    def __init__(self, torch_threads: int) -> None:
        self.torch_threads = int(torch_threads)

    def setup(self, worker) -> None:
        import sys

        os.environ.update(_thread_env(self.torch_threads))
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(self.torch_threads)
