"""One module per CLI verb (see aigvqa.pipeline.cli), and the options several verbs share."""


def add_cluster_arguments(parser):
    """The Dask options of the verbs that start or join a cluster (extract, score, ablate; see
    aigvqa.pipeline.extract.cluster). Returns the argument group, for a verb's own cluster
    options."""
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--scheduler", help="address (tcp://host:port) or scheduler file of a running Dask cluster"
    )
    cluster.add_argument(
        "--gpus", action="store_true", help="one worker per GPU (dask-cuda LocalCUDACluster)"
    )
    cluster.add_argument(
        "--workers", type=int, help="local worker processes (default: sized to this machine)"
    )
    cluster.add_argument(
        "--torch-threads", type=int, default=None, help="torch threads per worker (default 1)"
    )
    return cluster


def cluster_spec(args, base=None, **overrides):
    """The ``ClusterSpec`` of the options ``add_cluster_arguments`` added: one spelling for
    every verb (extract, score and ablate pass it to their API function as ``cluster=``).

    ``base``: the spec that options not given fall back to (ablate: the grid's
    ``[cluster]`` table; default ``ClusterSpec()``); ``overrides`` set other fields (e.g.
    extract's ``threads_per_worker``)."""
    from dataclasses import replace

    from aigvqa.pipeline.extract.cluster import ClusterSpec

    given = {
        "scheduler": args.scheduler,
        "gpus": args.gpus or None,
        "n_workers": args.workers,
        "torch_threads": args.torch_threads,
    }
    return replace(
        base or ClusterSpec(), **{k: v for k, v in given.items() if v is not None}, **overrides
    )
