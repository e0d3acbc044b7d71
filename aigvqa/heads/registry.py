"""Heads registry, like timm's ``register_model``: every head family registers its estimator
classes by name so the CLI and the ablation runner can build any head from a string.

    @register_head("ugvq")
    class UGVQHead(TorchHead): ...

    create_head("ugvq", preset="small", epochs=5)

The registry is ``aigvqa.registry.Registry`` (the extractors use the same class). The
built-in heads are known by ``"module:Class"`` (``BUILTIN_HEADS``): ``list_heads`` lists
them without importing anything and ``create_head`` imports a head's module on first use,
so a classical head never imports torch and callers never need to know where a head lives.
"""

from __future__ import annotations

from aigvqa.errors import AigvqaError
from aigvqa.registry import Registry

BUILTIN_HEADS = {
    "mlp": "aigvqa.heads.mlp:PooledMLPHead",
    "ugvq": "aigvqa.heads.ugvq:UGVQHead",
    "msavqa": "aigvqa.heads.msavqa:MSAVQAHead",
    "branchsum": "aigvqa.heads.branchsum:BranchSumHead",
    "svr": "aigvqa.heads.classical:SVRHead",
    "elasticnet": "aigvqa.heads.classical:ElasticNetHead",
    "lightgbm": "aigvqa.heads.classical:LightGBMHead",
    "stack": "aigvqa.heads.blend:StackingHead",
}
"""Built-in head name -> ``module:Class``; the module registers the class when imported."""


class UnknownHeadError(AigvqaError, ValueError):
    """A head name that no module registered."""


HEADS = Registry(
    "head",
    error=UnknownHeadError,
    builtins=BUILTIN_HEADS,
    fix="Pick one of those names (e.g. in the --head option or the ablation config).",
)


def register_head(name: str):
    """Class decorator: make ``cls`` buildable as ``create_head(name, **params)``."""
    return HEADS.register(name)


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted names of registered and built-in heads matching a shell-style pattern."""
    return HEADS.names(pattern)


def get_head_class(name: str) -> type:
    """The class registered as ``name`` (its module is imported on first use)."""
    return HEADS.get(name)


def head_name(cls: type) -> str:
    """The name ``cls`` was registered under (bundles store it to rebuild the head)."""
    return HEADS.name_of(cls)


def create_head(name: str, **params):
    """An unfitted estimator of the named head; ``params`` go to its ``__init__``."""
    return HEADS.create(name, **params)
