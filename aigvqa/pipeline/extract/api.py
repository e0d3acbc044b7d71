"""``extract()``: the public entry of stage one, and the checks made at its edge.

Flat keywords come in (what a notebook user types); they become an ``ExtractOptions``
and a ``ClusterSpec`` at once, and a ``run.ExtractRun`` gets those values.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aigvqa.extractors.base import Extractor
from aigvqa.pipeline.extract.options import (
    DEFAULT_DECODE_TIMEOUT,
    DecodeSettings,
    ExtractError,
    ExtractOptions,
)
from aigvqa.pipeline.extract.report import ExtractReport
from aigvqa.pipeline.records import VideoRecord


def extract(
    manifest_or_records: str | os.PathLike | Iterable[VideoRecord],
    extractors: Sequence[str | Extractor] | Mapping[str, Mapping[str, Any] | None],
    cache: str | os.PathLike,
    *,
    scheduler: str | None = None,
    gpus: bool = False,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    torch_threads: int = 1,
    chunk_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    random_init: bool = False,
    weights: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    client=None,
    dashboard_address: str | None = ":8787",
    merge_every: int | None = None,
    videos_in_flight: int = 2,
    decode_threads: int | None = None,
    decode_workers: int | None = None,
    decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
    cluster=None,
) -> ExtractReport:
    """Run stage one: features of every record for every extractor into ``cache`` (HDF5).

    ``extractors``: registry names (``["clip-frames", "clip-text"]``), a mapping name ->
    config (``{"clip-frames": {"arch": "ViT-B-16"}}``, what ``extractor_options``
    reads from a TOML file), or configured, *unloaded* ``Extractor`` instances.
    ``random_init=True`` builds every torch backbone with random weights (tests,
    benchmarks; stamped RANDOM-INIT in the cache); ``weights`` is a checkpoint path (one
    torch extractor) or a mapping name -> path.

    Cluster: ``scheduler`` (address or scheduler file) connects to a running cluster;
    ``gpus=True`` starts a LocalCUDACluster; otherwise a LocalCluster of ``n_workers``
    processes (default: sized to the machine) with ``threads_per_worker`` task threads and
    ``torch_threads`` torch threads each. ``cluster`` (a ``ClusterSpec``) says the same as
    one value, instead of those keywords (not with them). An existing ``distributed.Client``
    can be passed as ``client`` instead (it is used as is and not closed).

    Decoding: ``decode_workers`` processes beside each model worker decode videos and
    build their views (default: the cores a model worker can spare on its machine,
    ``(cores - model workers x their threads) // model workers``; 0 decodes in the model
    worker, as a decoder thread ``videos_in_flight - 1`` videos ahead, or in turn with
    ``videos_in_flight=1``). Items reach the models through shared memory, at most
    256 MiB ahead per model worker; every extractor batches items across videos. A decode
    process that dies is replaced and its video tried once more; one silent for
    ``decode_timeout`` seconds (a file that hangs FFmpeg) is killed and its video fails.
    ``decode_threads``: FFmpeg threads per video (default: 1 with decode processes,
    ``torch_threads`` when decoding runs in CPU model workers, FFmpeg's default (0) in a
    GPU model worker).

    ``chunk_size``: videos per task and per shard file (default ``DEFAULT_CHUNK_SIZE``, or
    4 per decode process when that is more; small runs get smaller chunks so every worker
    has work).

    Re-running skips ids already cached; ``overwrite=True`` recomputes them. A config or
    weights change against a group already in the cache raises ProvenanceMismatchError
    before any video is processed. Scripts calling this must guard their entry point with
    ``if __name__ == "__main__":`` (worker processes are spawned).
    """
    # distributed is imported here, not at module level: the CLI imports this package to
    # build its parser, and `aigvqa info` should not pay for importing Dask.
    from aigvqa.extractors.weights import announce_random_init
    from aigvqa.pipeline.extract.cluster import as_cluster_spec, open_cluster
    from aigvqa.pipeline.extract.run import ExtractRun
    from aigvqa.pipeline.extract.runlock import run_lock

    started = time.perf_counter()
    options = ExtractOptions(
        chunk_size=chunk_size,
        overwrite=overwrite,
        progress=progress,
        merge_every=merge_every,
        decode=DecodeSettings(
            decode_workers=decode_workers,
            decode_threads=decode_threads,
            videos_in_flight=videos_in_flight,
            decode_timeout=decode_timeout,
        ),
    ).check()
    cluster = as_cluster_spec(
        cluster,
        scheduler=scheduler,
        gpus=gpus,
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        torch_threads=torch_threads,
        dashboard_address=dashboard_address,
    )
    records = as_records(manifest_or_records)
    wanted = resolve_extractors(
        extractors,
        random_init=random_init,
        weights=weights,
        device="cuda" if cluster.gpus else None,
    )
    cache_path = Path(cache).resolve()
    check_cache_path(cache_path)
    sees_worker_files = (client is None and not cluster.scheduler) or _is_local(client)
    if sees_worker_files:
        # The workers are processes of this machine, started from this environment: a
        # missing checkpoint is found here in a second, not after the cluster started.
        # (On an existing cluster the workers look in their own environment when they
        # load the models; their error says so.)
        check_weights(wanted)
    for e in wanted:  # once per extractor and run; the workers stay quiet
        if e.config().get("random_init"):
            announce_random_init(e.name)
    # One run per cache at a time (runlock: a second run would take the first one's shards
    # for leftovers); a run that waits has not started a cluster yet.
    with run_lock(cache_path):
        if client is not None:
            report = ExtractRun(client, records, wanted, cache_path, options, cluster).go()
        else:
            with open_cluster(cluster, say=_stderr_line if progress else None) as own_client:
                report = ExtractRun(
                    own_client,
                    records,
                    wanted,
                    cache_path,
                    options,
                    cluster,
                    release_workers=bool(cluster.scheduler),
                ).go()
    report.seconds = time.perf_counter() - started
    return report


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_weights(extractors: Sequence[Extractor]) -> None:
    """Find every extractor's weights files as its ``load`` would (nothing is loaded);
    raises ``WeightsNotFoundError`` naming every place searched."""
    for e in extractors:
        e.find_weights()


def _is_local(client) -> bool:
    """Whether ``client``'s workers were started by this process (a LocalCluster): they
    share its environment and file system."""
    return client is not None and getattr(client, "cluster", None) is not None


def on_gpu(extractors: Sequence[Extractor]) -> bool:
    return any(str(e.config().get("device") or "cpu").startswith("cuda") for e in extractors)


def default_decode_threads(
    extractors: Sequence[Extractor], torch_threads: int, decode_workers: int = 0
) -> int:
    """FFmpeg threads per video when not told. With decode processes, 1: the processes are
    the parallelism. Otherwise, with every model on the CPU, a worker decodes with as many
    threads as it computes with (FFmpeg's default, one per core in every worker,
    oversubscribes the cores the forward passes already fill); when a model runs on a GPU
    (``--gpus``, or ``device = "cuda"`` in its config) FFmpeg picks (0): decoding, not the
    forward pass, is then what the CPU cores are for."""
    if decode_workers:
        return 1
    return 0 if on_gpu(extractors) else max(1, int(torch_threads))


def default_decode_workers(
    cores_by_worker: Mapping[str, tuple[str, int]], threads_per_model_worker: int
) -> int:
    """Decode processes per model worker when not told: the cores a model worker can spare.

    ``cores_by_worker``: worker address -> (host, cores) as the workers report them. On
    each host, ``(cores - workers x threads_per_model_worker) // workers``; the smallest
    over hosts (every task gets the same setting), never negative."""
    per_host: dict[str, list[int]] = {}
    for host, cores in cores_by_worker.values():
        per_host.setdefault(host, []).append(cores)
    if not per_host:
        return 0
    spare = []
    for cores in per_host.values():
        workers = len(cores)
        spare.append((max(cores) - workers * max(1, threads_per_model_worker)) // workers)
    return max(0, min(spare))


def resolve_decode_settings(
    decode: DecodeSettings, extractors: Sequence[Extractor], torch_threads: int, cores_by_worker
) -> DecodeSettings:
    """``decode`` with its defaults filled from the cluster (called once per run)."""
    workers = decode.decode_workers
    if workers is None:
        workers = default_decode_workers(
            cores_by_worker() if callable(cores_by_worker) else cores_by_worker,
            1 if on_gpu(extractors) else torch_threads,
        )
    threads = decode.decode_threads
    if threads is None:
        threads = default_decode_threads(extractors, torch_threads, workers)
    return replace(decode, decode_workers=workers, decode_threads=threads)


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------


def as_records(source) -> list[VideoRecord]:
    if isinstance(source, (str, os.PathLike)):
        from aigvqa.pipeline.manifest import read_manifest

        records = read_manifest(source)
    else:
        records = list(source)
    if not records:
        raise ExtractError("the manifest has no records; nothing to extract")
    bad = [r for r in records if not isinstance(r, VideoRecord)]
    if bad:
        raise ExtractError(f"expected VideoRecord items, got {type(bad[0]).__name__}")
    seen: dict[str, int] = {}
    dupes = []
    for i, rec in enumerate(records):
        if rec.video_id in seen:
            dupes.append(f"{rec.video_id!r} (records {seen[rec.video_id] + 1} and {i + 1})")
        seen[rec.video_id] = i
    if dupes:
        raise ExtractError(
            "video ids must be unique in a manifest (they key the cache); duplicated: "
            + ", ".join(dupes[:10])
            + (f" and {len(dupes) - 10} more" if len(dupes) > 10 else "")
        )
    # Workers may run in another directory (or on another host with shared storage).
    return [replace(r, path=Path(os.path.abspath(r.path))) for r in records]


def check_cache_path(cache: Path) -> None:
    if cache.is_dir():
        raise ExtractError(f"--cache {cache} is a folder; give a file name such as feats.h5")
    if not cache.parent.is_dir():
        raise ExtractError(
            f"--cache {cache}: folder {cache.parent} does not exist; create it first"
        )


def extractor_options(
    path: str | os.PathLike | None, names: str | Sequence[str] | None = None
) -> dict[str, dict]:
    """An extractors TOML file (``config.load_extractor_config``: one ``[extractor-name]``
    table of options each, ``weights`` relative to the file) and/or a list of names ->
    ``{name: options}``, what ``extract`` takes.

    With ``names``, only their tables are used (one file can hold a project's every
    extractor) and names without a table get ``{}``; a table that names no registered
    extractor is refused (a typo would otherwise go unnoticed). Without ``names``, every
    table is an extractor to run."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    config: dict[str, dict] = {}
    if path is not None:
        from aigvqa.pipeline.config import load_extractor_config

        config = load_extractor_config(path)
    if names:
        from aigvqa.extractors.registry import list_extractors

        known = set(list_extractors())
        unknown = sorted(set(config) - set(names) - known)
        if unknown:
            raise ExtractError(
                f"--config {path} has table(s) {', '.join(f'[{u}]' for u in unknown)}, "
                "which name no "
                f"extractor (known: {', '.join(sorted(known))}); fix or remove them"
            )
        return {n: dict(config.get(n, {})) for n in names}
    if not config:
        raise ExtractError(
            "name the extractors: --extractors clip-frames,clip-text (or give --config)"
        )
    return config


def resolve_extractors(
    extractors,
    *,
    random_init: bool = False,
    weights=None,
    device: str | None = None,
) -> list[Extractor]:
    """Names / name->config mapping / instances -> configured, unloaded extractors.

    ``random_init``, ``weights`` and ``device`` fill the options of the extractors that
    accept them (never overriding a value given per extractor); instances are used as
    configured."""
    from aigvqa.extractors.registry import create_extractor

    if isinstance(extractors, str):
        extractors = [e for e in extractors.split(",") if e.strip()]
    if isinstance(extractors, Mapping):
        items = [(name, dict(cfg or {})) for name, cfg in extractors.items()]
    else:
        items = []
        for e in extractors:
            items.append((e.strip(), {}) if isinstance(e, str) else (None, e))
    if not items:
        raise ExtractError("no extractors requested; pass e.g. --extractors clip-frames,clip-text")

    torch_names = []
    built: list[Extractor] = []
    for name, cfg in items:
        if name is None:  # an instance, used as configured
            if cfg.weights_identity is not None:
                raise ExtractError(
                    f"extractor {cfg.name!r} is already loaded: it would be shipped with its "
                    "weights to every task. Pass it unloaded (create_extractor(...) without "
                    "load()); each worker loads it once."
                )
            built.append(cfg)
            continue
        accepts = _accepted_options(name)
        if random_init and "random_init" in accepts:
            cfg.setdefault("random_init", True)
        if device and _runs_on_device(name):
            cfg.setdefault("device", device)
        if "weights" in accepts:
            torch_names.append(name)
        built.append((name, cfg))  # type: ignore[arg-type]

    weight_map = _weights_map(weights, torch_names)
    out: list[Extractor] = []
    for item in built:
        if isinstance(item, Extractor):
            out.append(item)
            continue
        name, cfg = item
        if name in weight_map:
            cfg.setdefault("weights", str(weight_map[name]))
        if cfg.get("weights"):
            # workers (maybe on other hosts, with another working directory) get the path
            # as the client meant it
            cfg["weights"] = os.fspath(Path(cfg["weights"]).expanduser().absolute())
        out.append(create_extractor(name, **cfg))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ExtractError(
            f"extractor(s) {', '.join(dup)} requested twice; each names one cache group"
        )
    return out


def _accepted_options(name: str) -> set[str]:
    from aigvqa.extractors.registry import get_extractor_class

    cls = get_extractor_class(name)
    defaults = getattr(cls, "all_defaults", None)
    return set(defaults()) if callable(defaults) else set()


def _runs_on_device(name: str) -> bool:
    # Torch backbones move to the GPU; others (handcrafted) accept ``device`` for a
    # uniform config but compute on the CPU, and their provenance should say so.
    from aigvqa.extractors.registry import TorchExtractor, get_extractor_class

    return issubclass(get_extractor_class(name), TorchExtractor)


def _weights_map(weights, torch_names: list[str]) -> dict[str, str]:
    if weights is None:
        return {}
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(torch_names))
        if unknown:
            raise ExtractError(
                f"weights given for {', '.join(unknown)}, which is not a requested extractor "
                f"taking weights (requested: {', '.join(torch_names) or 'none'})"
            )
        return {k: os.fspath(v) for k, v in weights.items()}
    if len(torch_names) != 1:
        raise ExtractError(
            "one weights path was given but "
            f"{len(torch_names)} requested extractors take weights ({', '.join(torch_names)}); "
            'set weights per extractor in --config extractors.toml ([name] weights = "path")'
        )
    return {torch_names[0]: os.fspath(weights)}
