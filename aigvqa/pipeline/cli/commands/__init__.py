"""One module per CLI verb (see aigvqa.pipeline.cli), and the options several verbs share."""


def add_cluster_arguments(parser):
    """The Dask options of the verbs that start or join a cluster (extract, score, ablate; see
    aigvqa.pipeline.extract.cluster). Returns the argument group, for a verb's own cluster options."""
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--scheduler", help="address (tcp://host:port) or scheduler file of a running Dask cluster")
    cluster.add_argument("--gpus", action="store_true", help="one worker per GPU (dask-cuda LocalCUDACluster)")
    cluster.add_argument("--workers", type=int, help="local worker processes (default: sized to this machine)")
    cluster.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker (default 1)")
    return cluster


def cluster_spec(args, **overrides):
    """The ``ClusterSpec`` of the options ``add_cluster_arguments`` added (one spelling for
    every verb); ``overrides`` set other fields (e.g. ``dashboard_address=None``)."""
    from aigvqa.pipeline.extract.cluster import ClusterSpec

    return ClusterSpec(scheduler=args.scheduler, gpus=args.gpus, n_workers=args.workers,
                       torch_threads=args.torch_threads, **overrides)
