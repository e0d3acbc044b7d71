"""Model bundles: a trained head saved as a folder that loads without executing code.

Layout of ``model/``::

    bundle.json            what the model is: format version, head name and parameters,
                           feature names, label names, the provenance of every cache group
                           it was trained on (extractor, config, view, weights identity),
                           the package versions that trained it, and how its state is stored
    weights.safetensors    deep (torch) heads: JSON config in bundle.json + tensors
    model.skops            classical (scikit-learn) heads: the fitted estimator, skops format
    lightgbm-<i>.txt       LightGBM boosters, in LightGBM's own text model format
    part-<i>.safetensors   deep heads nested in another head (e.g. a stacking blend)

Formats, and why nothing is unpickled:

- **deep heads**: ``TorchHead.get_state()`` gives a JSON config (stored in bundle.json) and
  a dict of tensors (stored with safetensors); loading rebuilds the module from the config
  and loads the tensors into it (``TorchHead.from_state``).
- **scikit-learn heads** (SVR, ElasticNet, the LightGBM head's pipeline): skops
  (``skops.io.dump`` / ``load``). skops refuses every type that is neither one it trusts
  by default (numpy, scipy, scikit-learn) nor in an explicit list: here
  ``TRUSTED_PREFIXES`` (this package's heads) and ``TRUSTED_TYPES`` (LightGBM's
  scikit-learn wrapper, ``collections.OrderedDict``). ``load_bundle`` asks skops which
  untrusted types a file holds first and refuses the bundle, naming them, if any is outside
  that list.
- **LightGBM boosters** are taken out of the estimator before skops sees it and written with
  ``Booster.model_to_string()`` (LightGBM's text model); a deep head nested in a
  classical one is written as ``part-<i>.safetensors``. The skops file keeps a marker
  string in their place, and loading puts the rebuilt parts back.

A bundle remembers the features it was trained on: ``Bundle.check_provenance`` compares
the provenance of the cache groups it is about to read against the recorded one and
refuses features made by another extractor, config or weights, naming every difference
(options that change only the speed, such as ``batch_size``, may differ; the device may
not: CUDA runs use autocast, so their features differ from CPU ones).
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError, ProvenanceMismatchError
from aigvqa.pipeline.training_data import provenance_problems

BUNDLE_FORMAT = "aigvqa-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"

TRUSTED_PREFIXES = ("aigvqa.heads.",)
"""Modules whose types a skops file in a bundle may hold beyond skops' defaults."""
TRUSTED_TYPES = ("lightgbm.sklearn.LGBMRegressor", "collections.OrderedDict")
"""Further types trusted by exact name: LightGBM's scikit-learn wrapper (its booster is
stored apart, as a text model) and a plain ordered dict."""

PART_MARKER = "aigvqa-bundle-part:"
_KEEP = object()



class BundleError(AigvqaError, ValueError):
    """A model folder is missing, incomplete, or holds something that is not trusted."""


@dataclass
class Bundle:
    """A loaded model: the fitted head plus what it needs to be used correctly."""

    head: Any
    head_name: str
    params: dict[str, Any]
    feature_names: list[str]
    label_names: list[str]
    provenance: dict[str, dict[str, Any]]
    versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def predict(self, X) -> np.ndarray:
        """Predictions [N, k] (k = len(label_names)) on a FeatureSet holding ``feature_names``."""
        pred = np.asarray(self.head.predict(X.select(self.feature_names)), dtype=np.float64)
        return pred.reshape(len(X), -1)

    @property
    def groups(self) -> list[str]:
        """Cache groups the model reads (keys of ``provenance``)."""
        return list(self.provenance)

    def check_provenance(self, cache_provenance: Mapping[str, Mapping[str, Any]], source: str = "the cache") -> None:
        """Refuse features whose extractor / config / weights differ from the training ones.

        ``cache_provenance`` maps a cache group name to its provenance (what
        ``FeatureCache.group_info(name)`` reports). Raises ``ProvenanceMismatchError`` listing
        every group that is missing or differs, and how.
        """
        problems = provenance_problems(self.provenance, cache_provenance)
        if problems:
            where = self.path or "the model"
            raise ProvenanceMismatchError(
                f"{where} was trained on other features than {source} holds: "
                + " | ".join(problems)
                + " (model vs features). Extract features with the model's extractor configs (aigvqa score does this "
                "when given no --cache) or retrain the model on these features."
            )


# -- save ---------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """Parameters as JSON (tuples -> lists, numpy scalars -> numbers); refuses the rest."""
    try:
        return json.loads(json.dumps(obj, default=_json_default))
    except TypeError as err:
        raise BundleError(f"head parameters are not JSON-serialisable ({err}); pass plain values") from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def save_bundle(
    head: Any,
    path: str | Path,
    provenance: Mapping[str, Mapping[str, Any]],
    feature_names: list[str],
    label_names: list[str],
    *,
    head_name: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a fitted ``head`` to the folder ``path`` (created; existing bundle files replaced).

    ``provenance`` maps every cache group the features came from to its provenance;
    ``extra`` is free JSON stored alongside (e.g. training-set size, evaluation summary).
    """
    from aigvqa.cache.schema import MODEL_PACKAGES, package_versions

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in [*path.glob("*.safetensors"), *path.glob("*.skops"), *path.glob("lightgbm-*.txt")]:
        old.unlink()
    name = head_name or _registered_name(head)
    state = _save_state(head, path)
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "head": name,
        "params": _jsonable(_public_params(head)),
        "feature_names": list(feature_names),
        "label_names": list(label_names),
        "provenance": _jsonable(dict(provenance)),
        "versions": package_versions(MODEL_PACKAGES),
        "state": state,
        "extra": _jsonable(dict(extra or {})),
    }
    tmp = path / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False))
    tmp.replace(path / BUNDLE_JSON)
    return path


def _public_params(head: Any) -> dict[str, Any]:
    params = head.get_params(deep=False) if hasattr(head, "get_params") else {}
    # Nested estimators are stored in the state, not as parameters.
    return {k: v for k, v in params.items() if not hasattr(v, "get_params") and not _is_estimator_list(v)}


def _is_estimator_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and any(
        hasattr(v, "get_params") or (isinstance(v, tuple) and any(hasattr(x, "get_params") for x in v))
        for v in value
    )


def _registered_name(head: Any) -> str:
    from aigvqa.heads.registry import head_name

    return head_name(type(head))


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


# -- load ---------------------------------------------------------------------------------
def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder written by ``save_bundle``; executes no code from the folder."""
    path = Path(path)
    meta_path = path / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {BUNDLE_JSON}); train one with `aigvqa train ... --out {path}`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{meta_path}: not valid JSON ({err}); the bundle is damaged, retrain it") from err
    if meta.get("format") != BUNDLE_FORMAT or not isinstance(meta.get("format_version"), int):
        raise BundleError(f"{meta_path}: not an aigvqa bundle description")
    if meta["format_version"] > BUNDLE_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format {meta['format_version']} is newer than this aigvqa reads "
            f"({BUNDLE_VERSION}); upgrade aigvqa"
        )
    head = _load_state(meta["state"], path)
    return Bundle(
        head=head,
        head_name=meta["head"],
        params=meta.get("params", {}),
        feature_names=list(meta["feature_names"]),
        label_names=list(meta["label_names"]),
        provenance=dict(meta.get("provenance", {})),
        versions=dict(meta.get("versions", {})),
        path=path,
        extra=dict(meta.get("extra", {})),
    )


def _trusted_class(class_path: str, where: Path) -> type:
    if not class_path.startswith(TRUSTED_PREFIXES):
        raise BundleError(
            f"{where}: declares class {class_path!r}, outside the trusted modules {TRUSTED_PREFIXES}; "
            "refusing to load it"
        )
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise BundleError(f"{where}: class {class_path!r} does not exist in this aigvqa version ({err})") from err
    return cls


def _load_torch(part: Mapping[str, Any], folder: Path) -> Any:
    from safetensors.torch import load_file

    cls = _trusted_class(part["class"], folder / BUNDLE_JSON)
    return cls.from_state(part["config"], load_file(str(_member(folder, part["file"]))))


def _load_state(state: Mapping[str, Any], folder: Path) -> Any:
    kind = state.get("kind")
    if kind == "torch":
        return _load_torch(state, folder)
    if kind != "skops":
        raise BundleError(f"{folder / BUNDLE_JSON}: unknown state kind {kind!r}; written by a newer aigvqa?")
    import lightgbm

    parts = []
    for part in state.get("parts", []):
        if part["kind"] == "torch":
            parts.append(_load_torch(part, folder))
        elif part["kind"] == "lightgbm":
            parts.append(lightgbm.Booster(model_str=_member(folder, part["file"]).read_text()))
        else:
            raise BundleError(f"{folder / BUNDLE_JSON}: unknown part kind {part['kind']!r}")
    stripped = _load_skops(_member(folder, state["file"]))

    def attach(obj: Any) -> Any:
        if isinstance(obj, str) and obj.startswith(PART_MARKER):
            return parts[int(obj[len(PART_MARKER):])]
        return _KEEP

    return _map_estimators(stripped, attach)


def _member(folder: Path, name: str) -> Path:
    """A file of the bundle; names with path separators would escape the folder."""
    if Path(name).name != name:
        raise BundleError(f"{folder / BUNDLE_JSON}: file name {name!r} points outside the bundle")
    file = folder / name
    if not file.is_file():
        raise BundleError(f"{folder}: bundle file {name} is missing; the bundle is incomplete, retrain it")
    return file


def trusted_types(file: Path) -> list[str]:
    """Types in a skops file beyond skops' defaults, all of them under ``TRUSTED_PREFIXES``.

    Raises ``BundleError`` naming any other type.
    """
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=file)
    refused = [t for t in untrusted if not (t.startswith(TRUSTED_PREFIXES) or t in TRUSTED_TYPES)]
    if refused:
        raise BundleError(
            f"{file}: holds types that are not trusted: {', '.join(refused)}; refusing to load it. "
            "Only scikit-learn / numpy / scipy types and aigvqa heads are loaded from bundles."
        )
    return untrusted


def _load_skops(file: Path) -> Any:
    import skops.io

    return skops.io.load(file, trusted=trusted_types(file))
