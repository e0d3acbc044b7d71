"""Stage-two estimators: deep fusion heads (torch) and classical regressors, all sklearn-style.

Every head takes a :class:`FeatureSet` and y [N] or [N, k]. Build one by name with
``create_head("ugvq", preset="small")`` or import the class. Exports are resolved lazily so
that using only the classical heads never imports torch.
"""

from __future__ import annotations

import importlib

from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.registry import create_head, list_heads, register_head

_LAZY = {
    "TorchHead": "aigvqa.heads.base",
    "UGVQHead": "aigvqa.heads.ugvq",
    "MSAVQAHead": "aigvqa.heads.msavqa",
    "BranchSumHead": "aigvqa.heads.branchsum",
    "PooledMLPHead": "aigvqa.heads.mlp",
    "PooledHead": "aigvqa.heads.pooled_head",
    "SVRHead": "aigvqa.heads.classical",
    "ElasticNetHead": "aigvqa.heads.classical",
    "LightGBMHead": "aigvqa.heads.classical",
    "pool_sequences": "aigvqa.heads.pooling",
    "StackingHead": "aigvqa.heads.blend",
}

__all__ = ["FeatureSet", "create_head", "list_heads", "register_head", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aigvqa.heads' has no attribute {name!r}")
