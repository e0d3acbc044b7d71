"""Heads registry, like timm's ``register_model``: every head family registers its estimator
classes by name so the CLI and the ablation runner can build any head from a string.

    @register_head("ugvq")
    class UGVQHead(TorchHead): ...

    create_head("ugvq", preset="small", epochs=5)

Registration happens when a head module is imported; ``list_heads`` / ``create_head`` import
the built-in head modules first, so callers never need to know where a head lives.
"""

from __future__ import annotations

import fnmatch
import importlib

from aigvqa.errors import AigvqaError

# Modules whose import registers the built-in heads. A missing module here is a packaging bug,
# so it raises instead of being skipped.
BUILTIN_HEAD_MODULES = (
    "aigvqa.heads.mlp",
    "aigvqa.heads.ugvq",
    "aigvqa.heads.msavqa",
    "aigvqa.heads.branchsum",
    "aigvqa.heads.classical",
    "aigvqa.heads.blend",
)

_HEADS: dict[str, type] = {}


class UnknownHeadError(AigvqaError, ValueError):
    """A head name that no module registered."""


def register_head(name: str):
    """Class decorator: make ``cls`` buildable as ``create_head(name, **params)``."""

    def decorator(cls: type) -> type:
        known = _HEADS.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"head name {name!r} is already taken by {known.__module__}.{known.__qualname__}")
        _HEADS[name] = cls
        return cls

    return decorator


def _load_builtin_heads() -> None:
    for module in BUILTIN_HEAD_MODULES:
        importlib.import_module(module)


def list_heads(pattern: str = "*") -> list[str]:
    """Sorted names of registered heads matching a shell-style pattern."""
    _load_builtin_heads()
    return sorted(n for n in _HEADS if fnmatch.fnmatch(n, pattern))


def get_head_class(name: str) -> type:
    _load_builtin_heads()
    if name not in _HEADS:
        raise UnknownHeadError(
            f"unknown head {name!r}; available heads: {', '.join(sorted(_HEADS))}. "
            "Pick one of those names (e.g. in the --head option or the ablation config)."
        )
    return _HEADS[name]


def head_name(cls: type) -> str:
    """The name ``cls`` was registered under (bundles store it to rebuild the head)."""
    for name, known in _HEADS.items():
        if known is cls:
            return name
    raise UnknownHeadError(f"{cls.__module__}.{cls.__qualname__} is not registered; decorate it with @register_head(name)")


def create_head(name: str, **params):
    """An unfitted estimator of the named head; ``params`` go to its ``__init__``."""
    return get_head_class(name)(**params)
