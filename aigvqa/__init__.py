"""aigvqa: offline quality assessment of AI-generated videos.

Stage one (``aigvqa.extract``) decodes each video once, runs frozen backbones
(``aigvqa.extractors``) on Dask workers and caches features in HDF5 (``aigvqa.cache``).
Stage two loads the cache (``aigvqa.load_training_data``), fits heads (``aigvqa.heads``)
and evaluates them under the field's protocols (``aigvqa.evaluate``).

Everything the CLI does is a function here, usable from a notebook::

    import aigvqa
    records = aigvqa.read_manifest("videos.csv")
    aigvqa.extract(records, ["handcrafted", "clip-frames"], "feats.h5")
    data = aigvqa.load_training_data("feats.h5", features=["clip-frames"], labels=["mos"])
    result = aigvqa.evaluate(aigvqa.create_head("svr"), data.X, data.y, data.groups,
                             split="prompt-disjoint", trials=10, label_names=data.label_names)
    print(result.table())

Names are resolved lazily, so ``import aigvqa`` imports neither torch nor dask.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    # stage one
    "read_manifest": "aigvqa.pipeline.manifest",
    "VideoRecord": "aigvqa.pipeline.records",
    "extract": "aigvqa.pipeline.extract",
    "list_extractors": "aigvqa.extractors",
    "create_extractor": "aigvqa.extractors",
    "extract_video": "aigvqa.extractors",
    # the cache
    "FeatureCache": "aigvqa.cache",
    "import_features": "aigvqa.pipeline.import_features",
    "dump": "aigvqa.pipeline.dump",
    # stage two
    "FeatureSet": "aigvqa.heads",
    "create_head": "aigvqa.heads",
    "list_heads": "aigvqa.heads",
    "load_training_data": "aigvqa.pipeline.training_data",
    "train": "aigvqa.pipeline.model.train",
    "evaluate": "aigvqa.pipeline.evaluation.evaluate",
    "cross_dataset": "aigvqa.pipeline.evaluation.evaluate",
    "make_splits": "aigvqa.pipeline.evaluation.splits",
    "all_metrics": "aigvqa.pipeline.evaluation.metrics",
    "run_ablation": "aigvqa.pipeline.evaluation.ablate",
    "save_bundle": "aigvqa.pipeline.model.bundle",
    "load_bundle": "aigvqa.pipeline.model.bundle",
    "score": "aigvqa.pipeline.model.score",
    "score_videos": "aigvqa.pipeline.model.score",
    "write_report": "aigvqa.pipeline.html_report",
    "run_demo": "aigvqa.pipeline.demo",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aigvqa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
