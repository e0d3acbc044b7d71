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

import builtins
import contextlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aigvqa.errors import AigvqaError

CUDA_INSTALL = '`pip install -e ".[cuda]"`'
"""How the README says to add dask-cuda (messages quote it, so the two never disagree)."""

# Each worker holds every requested backbone in memory; below this much RAM per worker
# the default sizing uses fewer workers rather than let them swap or be killed.
_MIN_BYTES_PER_WORKER = 3 * 2**30


class ClusterError(AigvqaError, RuntimeError):
    """A requested Dask cluster cannot be started or reached."""


@dataclass(frozen=True)
class ClusterSpec:
    """How to get workers; the arguments of ``open_cluster`` as a value. ``extract``,
    ``score`` and ``run_ablation`` take one as ``cluster=`` (the CLI verbs build it with
    ``cli.commands.cluster_spec``)."""

    scheduler: str | None = None
    gpus: bool = False
    n_workers: int | None = None
    threads_per_worker: int = 1
    torch_threads: int = 1
    dashboard_address: str | None = ":8787"


_FLAT_DEFAULTS = {f: getattr(ClusterSpec(), f) for f in ClusterSpec.__dataclass_fields__}


def as_cluster_spec(cluster: ClusterSpec | None = None, **flat) -> ClusterSpec:
    """The ``ClusterSpec`` of a call to ``extract`` / ``score`` / ``run_ablation``: ``cluster``
    as given, or one built at once from the flat keywords a notebook user types (the
    field names of ``ClusterSpec``). Giving both, with a flat keyword off its default, is
    refused: one of the two would be silently ignored."""
    unknown = sorted(set(flat) - set(_FLAT_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown cluster option(s) {unknown}; known: {sorted(_FLAT_DEFAULTS)}")
    if cluster is None:
        return ClusterSpec(**flat)
    if not isinstance(cluster, ClusterSpec):
        raise ClusterError(f"cluster must be a ClusterSpec, got {type(cluster).__name__}")
    clashing = sorted(k for k, v in flat.items() if v != _FLAT_DEFAULTS[k])
    if clashing:
        raise ClusterError(
            f"give the cluster as cluster=ClusterSpec(...) or as keywords ({', '.join(clashing)}), "
            "not both"
        )
    return cluster


def default_n_workers(
    torch_threads: int = 1, memory_per_worker: int = _MIN_BYTES_PER_WORKER
) -> int:
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


def local_cluster(
    n_workers: int,
    threads_per_worker: int = 1,
    torch_threads: int = 1,
    dashboard_address: str | None = ":8787",
):
    """The default stage-one cluster: ``n_workers`` processes, configured as above."""
    import dask
    from distributed import LocalCluster

    if n_workers < 1:
        raise ClusterError(f"--workers must be at least 1, got {n_workers}")
    quiet_shutdown()
    with dask.config.set(worker_environ(torch_threads)), quiet_port_fallback():
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
        )


@contextlib.contextmanager
def quiet_port_fallback():
    """Start a cluster without distributed's "Port 8787 is already in use ... Hosting the HTTP
    server on port N instead" warning: another cluster (or another run) holding the default
    dashboard port is normal here, the fallback port is what we want, and the one dashboard
    line (``dashboard_message``) gives the link that is really served."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Port \d+ is already in use", category=UserWarning
        )
        yield


class _ShutdownKillFilter(logging.Filter):
    """Drops the nanny's "Worker process still alive after 4.0 seconds, killing".

    At the close of a cluster we started, a worker process that imported torch and built
    models takes seconds to finish interpreter shutdown (freeing the models, torch's
    thread pools); on a loaded machine that passes the nanny's 4-s grace, so the nanny
    kills a process that was already on its way out, its work done and its shards written.
    Every other nanny message (a worker restarted after a crash, memory) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Worker process still alive after")


def quiet_shutdown() -> None:
    """Install ``_ShutdownKillFilter`` on the ``distributed.nanny`` logger (once)."""
    nanny_logger = logging.getLogger("distributed.nanny")
    if not any(isinstance(f, _ShutdownKillFilter) for f in nanny_logger.filters):
        nanny_logger.addFilter(_ShutdownKillFilter())


@contextlib.contextmanager
def open_cluster(spec: ClusterSpec, say: Callable[[str], None] | None = None) -> Iterator[object]:
    """Yield a ``distributed.Client`` for ``spec``; close the cluster if we started it.

    ``say`` (e.g. a progress printer) hears what takes seconds before the first task and
    after the last: starting the worker processes, and stopping them."""
    from distributed import Client

    # the dashboard link is shown whatever the progress setting (docs/extracting.md: what a
    # run shows), through ``say`` when there is one, so that it lands above a progress bar,
    # not in it
    show = say or (lambda line: print(line, file=sys.stderr, flush=True))
    say = say or (lambda line: None)

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
            show(dashboard_message(client))
            yield client
        finally:
            client.close()
        return

    if spec.gpus:
        say("starting a local Dask cluster, one worker per GPU (dask-cuda) ...")
        cluster = _cuda_cluster(spec)
    else:
        n_workers = (
            spec.n_workers if spec.n_workers is not None else default_n_workers(spec.torch_threads)
        )
        say(f"starting a local Dask cluster of {n_workers} worker process(es) ...")
        cluster = local_cluster(
            n_workers, spec.threads_per_worker, spec.torch_threads, spec.dashboard_address
        )
    try:
        client = Client(cluster)
        try:
            if spec.dashboard_address is not None:
                show(dashboard_message(client))
            yield client
        finally:
            say("stopping the local Dask cluster ...")
            stop_heartbeats(client)
            client.close()
    finally:
        cluster.close()


def _stop_heartbeat(dask_worker) -> None:
    dask_worker.periodic_callbacks["heartbeat"].stop()


def stop_heartbeats(client) -> None:
    """Stop the workers' heartbeats to the scheduler before a cluster we started closes.

    Closing removes the workers from the scheduler, which closes its connections to them; a
    heartbeat in flight at that moment fails and the worker logs it at ERROR with two
    tracebacks ("Failed to communicate with scheduler during heartbeat"), a race seen about
    once in five runs on a loaded machine. The work is done by then and nothing needs the
    heartbeats. Best effort: a worker that cannot be reached is being closed anyway."""
    with contextlib.suppress(OSError, TimeoutError):
        client.run(_stop_heartbeat, on_error="ignore")


def _cuda_cluster(spec: ClusterSpec):
    if importlib.util.find_spec("dask_cuda") is None:
        raise ClusterError(
            f"--gpus needs dask-cuda, which is not installed; install it with {CUDA_INSTALL} "
            "in the aigvqa checkout (or `pip install dask-cuda`), or run without --gpus to "
            "use a CPU LocalCluster"
        )
    import dask
    from dask_cuda import LocalCUDACluster

    quiet_shutdown()
    kwargs = {
        "threads_per_worker": spec.threads_per_worker,
        "dashboard_address": spec.dashboard_address,
    }
    if spec.n_workers:
        # LocalCUDACluster makes one worker per listed device.
        kwargs["CUDA_VISIBLE_DEVICES"] = list(range(spec.n_workers))
    try:
        with dask.config.set(worker_environ(spec.torch_threads)), quiet_port_fallback():
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


# -- the workers: can they run aigvqa? what a run adds to them, and takes away again ------

# The probe is compiled here from source, in a namespace no module holds, so cloudpickle
# ships it by value: a function of this module would be pickled by reference, and a
# worker without aigvqa fails to unpickle it (the 60-line traceback this check replaces).
_PROBE_SOURCE = """
def aigvqa_probe():
    import socket
    try:
        import aigvqa
    except Exception as err:
        return socket.gethostname(), None, f"{type(err).__name__}: {err}"
    return socket.gethostname(), str(getattr(aigvqa, "__version__", "unknown")), None
"""


def _probe():
    namespace: dict = {"__name__": "aigvqa_worker_probe", "__builtins__": builtins}
    exec(compile(_PROBE_SOURCE, "<aigvqa worker probe>", "exec"), namespace)  # noqa: S102 - our own constant
    return namespace["aigvqa_probe"]


WORKER_NEEDS = (
    "aigvqa installed at the client's version (with the extras its extractors "
    "need), the extractors' weights, and the cache's folder and the videos on "
    "shared storage at the same paths: docs/extracting.md, 'Running on an existing Dask cluster'"
)


def check_workers(client) -> dict[str, tuple[str, str]]:
    """Ask every worker whether it can import aigvqa, and which version; raise
    ``ClusterError`` (one line per kind of problem) unless all run the client's version.

    Returns {worker address: (host, version)}. Workers that join later are not checked
    (their tasks fail with Dask's own error)."""
    from aigvqa import __version__

    try:
        answers = client.run(_probe(), on_error="return")
    except OSError as err:  # the scheduler went away
        raise ClusterError(f"cannot ask the Dask workers for their aigvqa version ({err})") from err
    missing, other, good = [], [], {}
    for address, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            missing.append(f"{address} ({type(answer).__name__}: {answer})")
            continue
        host, version, error = answer
        if version is None:
            missing.append(f"{address} on {host} ({error})")
        elif version != __version__:
            other.append(f"{address} on {host} (aigvqa {version})")
        else:
            good[address] = (host, version)
    if not missing and not other:
        return good
    problems = []
    if missing:
        problems.append(f"{_some(missing)} cannot import aigvqa")
    if other:
        problems.append(f"{_some(other)} run another aigvqa version")
    raise ClusterError(
        f"{len(missing) + len(other)} of {len(answers)} Dask worker(s) cannot run this aigvqa "
        f"{__version__}: {'; '.join(problems)}. Workers need {WORKER_NEEDS}."
    )


def _some(items: list[str], shown: int = 3) -> str:
    text = ", ".join(items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


TORCH_THREADS_PLUGIN = "aigvqa-torch-threads"


@contextlib.contextmanager
def worker_torch_threads(client, torch_threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count in every worker, now and in workers that join
    during the block (a restarted worker, a scaled-up deployment): a stock ``WorkerPlugin``,
    unregistered at the end, so a shared scheduler keeps nothing of the run. (The workers'
    thread count itself stays as set: torch cannot be told "back to what it was" for a
    process that imported it meanwhile.)"""
    client.register_plugin(TorchThreadsPlugin(torch_threads), name=TORCH_THREADS_PLUGIN)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError, RuntimeError):
            # a cluster that went away (Ctrl-C, a dead scheduler) has nothing left to clean
            client.unregister_worker_plugin(TORCH_THREADS_PLUGIN)


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
