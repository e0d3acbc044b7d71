"""A fitted head's state as files of a bundle (``pipeline.model.bundle``), and back:
written, and read without executing code.

Formats, and why nothing is unpickled:

- **deep heads**: ``TorchHead.get_state()`` gives a JSON config (stored in bundle.json) and
  a dict of tensors (stored with safetensors); loading rebuilds the module from the config
  and loads the tensors into it (``TorchHead.from_state``). The class named in bundle.json
  must be one of the built-in heads (``HEAD_CLASSES``, exact names).
- **scikit-learn heads** (SVR, ElasticNet, the LightGBM head's pipeline): skops
  (``skops.io.dump`` / ``loads``). skops refuses every type that is neither one it trusts
  by default (numpy, scipy, scikit-learn) nor in an explicit list: here ``TRUSTED_TYPES``,
  exact class names (the built-in heads, LightGBM's scikit-learn wrapper,
  ``collections.OrderedDict``) -- not module prefixes: a prefix let any name importable
  from a head module through (``aigvqa.heads.classical.Parallel`` is joblib's, re-exported there).
  ``load_bundle`` asks skops which untrusted types a file holds first and refuses the
  bundle, naming them, if any is outside that list.
- **LightGBM boosters** are taken out of the estimator before skops sees it and written with
  ``Booster.model_to_string()`` (LightGBM's text model); a deep head nested in a
  classical one is written as ``part-<i>.safetensors``. The skops file keeps a marker
  string in their place, and loading puts the rebuilt parts back.
"""

from __future__ import annotations

import copy
import importlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.pipeline.model.bundle_files import BUNDLE_JSON, BundleError
from aigvqa.pipeline.model.lightgbm_text import check_model_text


def _builtin_head_classes() -> tuple[str, ...]:
    from aigvqa.heads.registry import BUILTIN_HEADS

    return tuple(sorted(target.replace(":", ".") for target in BUILTIN_HEADS.values()))


HEAD_CLASSES = _builtin_head_classes()
"""Exact ``module.Class`` names of the heads a bundle may name (the built-in heads)."""
TRUSTED_TYPES = (*HEAD_CLASSES, "lightgbm.sklearn.LGBMRegressor", "collections.OrderedDict")
"""Types a skops file in a bundle may hold beyond skops' defaults, by exact name: the
built-in heads, LightGBM's scikit-learn wrapper (its booster is stored apart, as a text
model) and a plain ordered dict."""

PART_MARKER = "aigvqa-bundle-part:"
_KEEP = object()


def _jsonable(obj: Any) -> Any:
    """Parameters as JSON (tuples -> lists, numpy scalars -> numbers); refuses the rest."""
    try:
        return json.loads(json.dumps(obj, default=_json_default))
    except TypeError as err:
        raise BundleError(
            f"head parameters are not JSON-serialisable ({err}); pass plain values"
        ) from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _is_torch_head(obj: Any) -> bool:
    return hasattr(obj, "get_state") and hasattr(type(obj), "from_state")


def _is_fitted(obj: Any) -> bool:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(obj)
    except NotFittedError:
        return False
    return True


def _is_booster(obj: Any) -> bool:
    return type(obj).__module__ == "lightgbm.basic" and type(obj).__name__ == "Booster"


def _part_marker(i: int) -> str:
    return f"{PART_MARKER}{i}"


def _map_estimators(obj: Any, fn) -> Any:
    """A copy of ``obj`` where ``fn(x)`` replaced every x it does not return ``_KEEP`` for.

    Descends into lists, tuples, dicts and the attributes of scikit-learn estimators (heads,
    pipelines, regressors): where the fitted objects of a head live. Copies are shallow,
    so ``obj`` itself is never modified.
    """
    from sklearn.base import BaseEstimator

    replaced = fn(obj)
    if replaced is not _KEEP:
        return replaced
    if isinstance(obj, list):
        return [_map_estimators(x, fn) for x in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_map_estimators(x, fn) for x in obj)
    if isinstance(obj, dict):
        new = copy.copy(obj)  # keeps the dict's type (defaultdict, OrderedDict) and factory
        new.update((k, _map_estimators(v, fn)) for k, v in obj.items())
        return new
    if isinstance(obj, BaseEstimator):
        new = copy.copy(obj)
        new.__dict__ = {k: _map_estimators(v, fn) for k, v in obj.__dict__.items()}
        return new
    return obj


def _save_torch(head: Any, folder: Path, file: str) -> dict[str, Any]:
    from safetensors.torch import save_file

    config, tensors = head.get_state()
    for key, tensor in tensors.items():
        # a bundle of NaN / inf weights would score every video "failed" (or, worse, train
        # on): refuse to write it, naming the tensor
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise BundleError(
                f"{folder / file}: {type(head).__name__}'s learned tensor {key!r} holds NaN or "
                "inf values, so the fit went wrong (targets or features too large, a learning "
                "rate that diverged); not saving it -- check the training data and refit"
            )
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / file))
    return {"kind": "torch", "class": _class_path(head), "config": _jsonable(config), "file": file}


def _save_state(head: Any, folder: Path) -> dict[str, Any]:
    """Store a head's fitted state in ``folder``; returns the JSON that describes how.

    A deep head is (config, safetensors). Anything else goes to skops, except the parts
    skops should not hold: LightGBM boosters (written as LightGBM text models) and deep
    heads nested in it (a blend), written as safetensors; the skops file keeps a marker
    string where each part was.
    """
    if _is_torch_head(head):
        return _save_torch(head, folder, "weights.safetensors")
    import skops.io

    parts: list[dict[str, Any]] = []

    def detach(obj: Any) -> Any:
        if obj is head:
            return _KEEP
        if _is_torch_head(obj) and _is_fitted(obj):  # an unfitted template is plain parameters
            parts.append(_save_torch(obj, folder, f"part-{len(parts)}.safetensors"))
            return _part_marker(len(parts) - 1)
        if _is_booster(obj):
            file = f"lightgbm-{len(parts)}.txt"
            (folder / file).write_text(obj.model_to_string())
            parts.append({"kind": "lightgbm", "file": file})
            return _part_marker(len(parts) - 1)
        return _KEEP

    stripped = _map_estimators(head, detach)
    skops.io.dump(stripped, folder / "model.skops")
    return {"kind": "skops", "class": _class_path(head), "file": "model.skops", "parts": parts}


def _trusted_class(class_path: str, where: Path) -> type:
    if class_path not in HEAD_CLASSES:
        raise BundleError(
            f"{where}: declares class {class_path!r}, which is not one of the trusted head classes "
            f"({', '.join(HEAD_CLASSES)}); refusing to load it"
        )
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise BundleError(
            f"{where}: class {class_path!r} does not exist in this aigvqa version ({err})"
        ) from err
    if (
        not isinstance(cls, type)
        or _class_path_of(cls) != class_path
        or not hasattr(cls, "from_state")
    ):
        raise BundleError(f"{where}: {class_path!r} is not a deep head class; refusing to load it")
    return cls


def _class_path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_torch(part: Mapping[str, Any], blobs: Mapping[str, bytes], folder: Path) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    cls = _trusted_class(part["class"], folder / BUNDLE_JSON)
    file = folder / part["file"]
    try:
        tensors = load_safetensors(blobs[part["file"]])
    except SafetensorError as err:
        raise BundleError(
            f"{file}: not a safetensors file ({err}); the bundle is damaged, retrain it"
        ) from err
    try:
        return cls.from_state(part["config"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(
            f"{file}: does not rebuild a {part['class']} with the config in {BUNDLE_JSON} "
            f"({type(err).__name__}: {err}); the bundle is damaged, retrain it"
        ) from err


def _load_booster(name: str, data: bytes, folder: Path) -> Any:
    import lightgbm

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BundleError(f"{folder / name}: not a LightGBM text model ({err})") from err
    check_model_text(text, folder / name)  # LightGBM's parser crashes on malformed trees
    try:
        return lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError as err:
        raise BundleError(f"{folder / name}: not a valid LightGBM text model ({err})") from err


def _load_state(state: Mapping[str, Any], blobs: Mapping[str, bytes], folder: Path) -> Any:
    kind = state["kind"]
    if kind == "torch":
        return _load_torch(state, blobs, folder)
    if kind != "skops":
        raise BundleError(
            f"{folder / BUNDLE_JSON}: unknown state kind {kind!r}; written by a newer aigvqa?"
        )
    parts = []
    for part in state.get("parts", []):
        if part["kind"] == "torch":
            parts.append(_load_torch(part, blobs, folder))
        elif part["kind"] == "lightgbm":
            parts.append(_load_booster(part["file"], blobs[part["file"]], folder))
        else:
            raise BundleError(f"{folder / BUNDLE_JSON}: unknown part kind {part['kind']!r}")
    stripped = _load_skops(blobs[state["file"]], folder / state["file"])

    def attach(obj: Any) -> Any:
        if isinstance(obj, str) and obj.startswith(PART_MARKER):
            index = obj[len(PART_MARKER) :]
            if not index.isdigit() or int(index) >= len(parts):
                raise BundleError(
                    f"{folder / state['file']}: refers to part {index!r}, which bundle.json does "
                    "not list"
                )
            return parts[int(index)]
        return _KEEP

    return _map_estimators(stripped, attach)


_SKOPS_ERRORS = (
    zipfile.BadZipFile,
    json.JSONDecodeError,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
)
"""What skops raises on a file that is not one of its archives (or a damaged one)."""


def trusted_types(data: bytes, file: Path) -> list[str]:
    """Types in the skops archive ``data`` beyond skops' defaults, all in ``TRUSTED_TYPES``.

    Raises ``BundleError`` naming any other type (``file`` is the name shown).
    """
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except _SKOPS_ERRORS as err:
        raise BundleError(
            f"{file}: not a skops file ({type(err).__name__}: {err}); the bundle is damaged, "
            "retrain it"
        ) from err
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise BundleError(
            f"{file}: holds types that are not trusted: {', '.join(refused)}; refusing to load it. "
            "Only scikit-learn / numpy / scipy types and aigvqa's built-in heads are loaded from "
            "bundles."
        )
    return untrusted


def _load_skops(data: bytes, file: Path) -> Any:
    import skops.io

    trusted = trusted_types(data, file)
    try:
        return skops.io.loads(data, trusted=trusted)
    except _SKOPS_ERRORS as err:
        raise BundleError(
            f"{file}: cannot be read as a skops file ({type(err).__name__}: {err}); the bundle is "
            "damaged, retrain it"
        ) from err
