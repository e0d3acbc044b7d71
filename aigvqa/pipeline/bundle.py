"""Model bundles: a trained head saved as a folder that loads without executing code.

Layout of ``model/``::

    bundle.json          what the model is: format version, head name and parameters,
                         feature names, label names, the provenance of every cache group
                         it was trained on (extractor, config, view, weights identity), the
                         package versions that trained it, and how its state is stored
    weights.safetensors  deep (torch) heads: the state dict, as safetensors
    model.skops          classical (scikit-learn) heads: the fitted estimator, in skops format
    lightgbm-<i>.txt     LightGBM boosters, in LightGBM's own text model format

No file in a bundle is a pickle. Loading reads JSON, safetensors (plain tensors),
LightGBM text models (parsed by LightGBM, no code) and skops files; skops rebuilds only
the types it trusts by default (numpy, scipy, scikit-learn) plus the explicit list
``TRUSTED_PREFIXES`` (this package's heads), and ``load_bundle`` refuses a file that holds
any other type, naming it. A deep head is rebuilt from its JSON config and its tensors
(``TorchHead.from_state``); a sklearn head nested in a deep one, or a deep head inside a
blend, is stored part by part the same way.

A bundle remembers the features it was trained on: ``Bundle.check_provenance`` compares
the provenance of the cache groups it is about to read against the recorded one and
refuses features made by another extractor, config or weights, naming every difference.
"""

from __future__ import annotations

import importlib
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError, ProvenanceMismatchError

BUNDLE_FORMAT = "aigvqa-bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"

TRUSTED_PREFIXES = ("aigvqa.heads.",)
"""Types (module-qualified names) a skops file in a bundle may hold beyond skops' defaults."""

# Configuration keys that say where / how fast an extractor ran, not what it computed:
# a model trained on GPU-extracted features may score CPU-extracted ones.
RUNTIME_KEYS = ("config.device", "config.batch_size", "config.channels_last")


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
        from aigvqa.cache.schema import describe_differences

        problems = []
        for group, expected in self.provenance.items():
            if group not in cache_provenance:
                problems.append(f"group {group!r} is missing (have {sorted(cache_provenance)})")
                continue
            diffs = [
                d for d in describe_differences(expected, cache_provenance[group])
                if not d.startswith(RUNTIME_KEYS)
            ]
            if diffs:
                problems.append(f"group {group!r}: " + "; ".join(f"{d} (model vs features)" for d in diffs))
        if problems:
            where = self.path or "the model"
            raise ProvenanceMismatchError(
                f"{where} was trained on other features than {source} holds: "
                + " | ".join(problems)
                + ". Extract features with the model's extractor configs (aigvqa score does this "
                "when given no --cache) or retrain the model on these features."
            )


# -- save ---------------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    import importlib.metadata

    out = {"python": platform.python_version()}
    for dist in ("aigvqa", "numpy", "scikit-learn", "torch", "lightgbm", "skops", "safetensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


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
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in list(path.glob("*.safetensors")) + list(path.glob("*.skops")) + list(path.glob("lightgbm-*.txt")):
        old.unlink()
    name = head_name or _registered_name(head)
    state = _save_state(head, path, prefix="")
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "head": name,
        "params": _jsonable(_public_params(head)),
        "feature_names": list(feature_names),
        "label_names": list(label_names),
        "provenance": _jsonable(dict(provenance)),
        "versions": package_versions(),
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
    from aigvqa.heads.registry import _HEADS, list_heads

    list_heads()
    for name, cls in _HEADS.items():
        if type(head) is cls:
            return name
    return f"{type(head).__module__}.{type(head).__qualname__}"


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _save_state(head: Any, folder: Path, prefix: str) -> dict[str, Any]:
    """Store a head's fitted state in ``folder``; returns the JSON that describes how."""
    if hasattr(head, "get_state") and hasattr(type(head), "from_state"):
        from safetensors.numpy import save_file

        config, tensors = head.get_state()
        arrays = {k: _to_numpy(v) for k, v in tensors.items()}
        file = f"{prefix}weights.safetensors"
        save_file(arrays, str(folder / file))
        return {"kind": "torch", "class": _class_path(head), "config": _jsonable(config), "file": file}
    boosters = _lightgbm_boosters(head)
    if boosters is not None:
        files = []
        for i, booster in enumerate(boosters):
            file = f"lightgbm-{prefix}{i}.txt"
            (folder / file).write_text(booster.model_to_string())
            files.append(file)
        return {"kind": "lightgbm", "class": _class_path(head), "files": files}
    import skops.io

    file = f"{prefix}model.skops"
    skops.io.dump(head, folder / file)
    return {"kind": "skops", "class": _class_path(head), "file": file}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.ascontiguousarray(value)


def _lightgbm_boosters(head: Any) -> list | None:
    """LightGBM heads expose ``boosters_()`` / ``from_boosters``; other heads return None."""
    if hasattr(head, "get_boosters") and hasattr(type(head), "from_boosters"):
        return head.get_boosters()
    return None


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


def _load_state(state: Mapping[str, Any], folder: Path) -> Any:
    kind = state.get("kind")
    where = folder / BUNDLE_JSON
    if kind == "torch":
        from safetensors.numpy import load_file

        cls = _trusted_class(state["class"], where)
        tensors = load_file(str(_member(folder, state["file"])))
        return cls.from_state(state["config"], tensors)
    if kind == "lightgbm":
        import lightgbm

        cls = _trusted_class(state["class"], where)
        boosters = [lightgbm.Booster(model_str=_member(folder, f).read_text()) for f in state["files"]]
        return cls.from_boosters(boosters, state.get("config", {}))
    if kind == "skops":
        return _load_skops(_member(folder, state["file"]))
    raise BundleError(f"{where}: unknown state kind {kind!r}; written by a newer aigvqa?")


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
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise BundleError(
            f"{file}: holds types that are not trusted: {', '.join(refused)}; refusing to load it. "
            "Only scikit-learn / numpy / scipy types and aigvqa heads are loaded from bundles."
        )
    return untrusted


def _load_skops(file: Path) -> Any:
    import skops.io

    return skops.io.load(file, trusted=trusted_types(file))
