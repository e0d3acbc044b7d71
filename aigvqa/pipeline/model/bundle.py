"""Model bundles: a trained head saved as a folder that loads without executing code.

Layout of ``model/``::

    bundle.json            what the model is: format version, head name and parameters,
                           feature names, label names, the provenance of every cache group
                           it was trained on (extractor, config, view, weights identity),
                           the package versions that trained it, how its state is stored,
                           and the sha256 of every other file of the folder (``files``)
    weights.safetensors    deep (torch) heads: JSON config in bundle.json + tensors
    model.skops            classical (scikit-learn) heads: the fitted estimator, skops format
    lightgbm-<i>.txt       LightGBM boosters, in LightGBM's own text model format
    part-<i>.safetensors   deep heads nested in another head (e.g. a stacking blend)

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
  from a head module through (``aigvqa.heads.classical.Parallel`` is joblib's).
  ``load_bundle`` asks skops which untrusted types a file holds first and refuses the
  bundle, naming them, if any is outside that list.
- **LightGBM boosters** are taken out of the estimator before skops sees it and written with
  ``Booster.model_to_string()`` (LightGBM's text model); a deep head nested in a
  classical one is written as ``part-<i>.safetensors``. The skops file keeps a marker
  string in their place, and loading puts the rebuilt parts back.

Integrity: ``save_bundle`` records the sha256 of every file it wrote in bundle.json;
``load_bundle`` reads each file once, checks its hash *before* any parser sees the bytes,
and refuses a missing, extra or changed file, a symbolic link, anything that resolves
outside the folder and a bundle.json of the wrong shape (``BundleError`` naming the
file). LightGBM's text parser crashes the process on some edited model files (an
out-of-range child index: SIGSEGV), so a file must match its recorded hash before it is
parsed at all. What the hashes catch is damage and edits made without rewriting
bundle.json; a bundle from someone you do not trust is protected by the formats above
(nothing in it can run code), not by the hashes, which its author can recompute. The
bundle folder itself may be a link (``model -> /models/v3``); its files may not.

Paths are information, never identity: bundle.json keeps only the *file name* of a
checkpoint an extractor was given (``config.weights``; the absolute path would leak the
trainer's directories and would not exist elsewhere); the checkpoint's identity is the
provenance's ``weights`` entry, its sha256, which is what must match.

A bundle remembers the features it was trained on: ``Bundle.check_provenance`` compares
the provenance of the cache groups it is about to read against the recorded one and
refuses features made by another extractor, config or weights, naming every difference
(options that change only the speed, such as ``batch_size``, may differ; the device may
not: CUDA runs use autocast, so their features differ from CPU ones).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import AigvqaError, ProvenanceMismatchError
from aigvqa.pipeline.training_data import provenance_problems

BUNDLE_FORMAT = "aigvqa-bundle"
BUNDLE_VERSION = 2
"""2: ``files`` holds the sha256 of every file, checked on load; checkpoint paths reduced
to file names. 1 (no checksums) is refused: retrain, or re-save with this version."""
BUNDLE_JSON = "bundle.json"


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
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUNDLE_SUFFIXES = (".safetensors", ".skops")
"""Files ``save_bundle`` may replace in an existing bundle folder (with ``lightgbm-*.txt``)."""


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

    def check_provenance(self, cache_provenance: Mapping[str, Mapping[str, Any]], source: str = "the cache",
                         *, present_only: bool = False) -> None:
        """Refuse features whose extractor / config / weights differ from the training ones.

        ``cache_provenance`` maps a cache group name to its provenance (what
        ``FeatureCache.group_info(name)`` reports). Raises ``ProvenanceMismatchError`` listing
        every group that is missing or differs, and how; ``present_only``: check only the
        groups ``cache_provenance`` has (a missing one is no error). Checkpoint paths are
        compared as the bundle stores them, by file name only: the identity is the weights'
        sha256.
        """
        expected = self.provenance
        if present_only:
            expected = {g: p for g, p in expected.items() if g in cache_provenance}
        problems = provenance_problems(expected, portable_provenance(cache_provenance))
        if problems:
            where = self.path or "the model"
            raise ProvenanceMismatchError(
                f"{where} was trained on other features than {source} holds: "
                + " | ".join(problems)
                + " (model vs features). Extract features with the model's extractor configs (aigvqa score does this "
                "when given no --cache) or retrain the model on these features."
            )


def portable_provenance(provenance: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``provenance`` with every checkpoint path (``config.weights``) cut to its file name.

    Extractors record the absolute path they were given next to the checkpoint's sha256
    (``weights``). The path says where the file was on the machine that trained, not what it
    is: stored in a bundle it would leak that machine's directories, and compared it would
    refuse the same checkpoint on another mount.
    """
    out: dict[str, dict[str, Any]] = {}
    for group, prov in provenance.items():
        prov = copy.deepcopy(dict(prov))
        config = prov.get("config")
        if isinstance(config, Mapping) and isinstance(config.get("weights"), str | os.PathLike):
            prov["config"] = {**config, "weights": Path(os.fspath(config["weights"])).name}
        out[group] = prov
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    ``provenance`` maps every cache group the features came from to its provenance (stored
    with checkpoint paths cut to file names, see ``portable_provenance``); ``extra`` is free
    JSON stored alongside (e.g. training-set size, evaluation summary). A folder holding
    anything but bundle files is refused: loading would refuse the extra files.
    """
    from aigvqa.cache.schema import MODEL_PACKAGES, package_versions

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    old_files, foreign = [], []
    for entry in sorted(path.iterdir()):
        if entry.name in (BUNDLE_JSON, f".{BUNDLE_JSON}.tmp"):
            continue
        replaceable = entry.suffix in _BUNDLE_SUFFIXES or (entry.name.startswith("lightgbm-") and entry.suffix == ".txt")
        (old_files if replaceable and entry.is_file() and not entry.is_symlink() else foreign).append(entry)
    if foreign:
        raise BundleError(
            f"{path}: holds {', '.join(e.name for e in foreign)}, which are not bundle files; "
            "save the model into an empty (or new) folder"
        )
    for old in old_files:
        old.unlink()
    (path / BUNDLE_JSON).unlink(missing_ok=True)  # a crash from here on leaves no loadable half-bundle
    name = head_name or _registered_name(head)
    state = _save_state(head, path)
    written = sorted(e.name for e in path.iterdir() if e.name not in (BUNDLE_JSON, f".{BUNDLE_JSON}.tmp"))
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "head": name,
        "params": _jsonable(_public_params(head)),
        "feature_names": list(feature_names),
        "label_names": list(label_names),
        "provenance": _jsonable(portable_provenance(provenance)),
        "versions": package_versions(MODEL_PACKAGES),
        "state": state,
        "extra": _jsonable(dict(extra or {})),
        "files": {file: file_sha256(path / file) for file in written},
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
    """Read a bundle folder written by ``save_bundle``; executes no code from the folder.

    Every file is read once and checked against its sha256 in bundle.json before anything
    parses it (see the module docstring); any problem is a ``BundleError`` naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a model bundle (no such folder); train one with `aigvqa train ... --out {path}`")
    root = path.resolve()  # the folder may be a link; what is inside may not
    if not (root / BUNDLE_JSON).exists() and not (root / BUNDLE_JSON).is_symlink():
        raise BundleError(f"{path}: not a model bundle (no {BUNDLE_JSON}); train one with `aigvqa train ... --out {path}`")
    meta_path = path / BUNDLE_JSON
    raw = _read_member(root, BUNDLE_JSON, path)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{meta_path}: not valid JSON ({err}); the bundle is damaged, retrain it") from err
    _check_meta(meta, meta_path)
    blobs = _verified_files(root, path, meta["files"])
    head = _load_state(meta["state"], blobs, path)
    return Bundle(
        head=head,
        head_name=meta["head"],
        params=meta["params"],
        feature_names=list(meta["feature_names"]),
        label_names=list(meta["label_names"]),
        provenance=dict(meta["provenance"]),
        versions=dict(meta["versions"]),
        path=path,
        extra=dict(meta["extra"]),
    )


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _mapping_of(kind: type) -> Any:
    return lambda value: isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, kind) for k, v in value.items())


_META_FIELDS: dict[str, tuple[Any, str]] = {
    "head": (lambda v: isinstance(v, str) and v != "", "a head name (string)"),
    "params": (lambda v: isinstance(v, dict), "an object of parameters"),
    "feature_names": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of strings"),
    "label_names": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of strings"),
    "provenance": (_mapping_of(dict), "an object {cache group: provenance object}"),
    "versions": (_mapping_of(str), "an object {package: version string}"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
    "state": (lambda v: isinstance(v, dict), "an object"),
    "files": (lambda v: _mapping_of(str)(v) and all(_SHA256.fullmatch(h) for h in v.values()),
              "an object {file name: sha256 hex digest}"),
}
_STATE_FIELDS: dict[str, tuple[Any, str]] = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "class": (lambda v: isinstance(v, str), "a string"),
    "file": (lambda v: isinstance(v, str), "a file name (string)"),
}


def _check_fields(obj: Mapping[str, Any], fields: Mapping[str, tuple[Any, str]], where: str, meta_path: Path) -> None:
    for key, (ok, what) in fields.items():
        if key not in obj:
            raise BundleError(f"{meta_path}: '{where}{key}' is missing; the bundle is damaged, retrain it")
        if not ok(obj[key]):
            raise BundleError(
                f"{meta_path}: '{where}{key}' must be {what}, got {type(obj[key]).__name__} "
                f"{_short(obj[key])}; the bundle is damaged, retrain it"
            )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_meta(meta: Any, meta_path: Path) -> None:
    """bundle.json has the shape ``save_bundle`` writes: refuse anything else by key."""
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path}: not an aigvqa bundle description")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{meta_path}: 'format_version' must be an integer, got {_short(version)}")
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format {version} is newer than this aigvqa reads "
            f"({BUNDLE_VERSION}); upgrade aigvqa"
        )
    if version < BUNDLE_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format {version} was written before bundles recorded the sha256 of "
            "their files, so it cannot be checked before loading; retrain it with this aigvqa "
            "(`aigvqa train ... --out` a new folder)"
        )
    _check_fields(meta, _META_FIELDS, "", meta_path)
    state = meta["state"]
    _check_fields(state, _STATE_FIELDS, "state.", meta_path)
    if state["kind"] == "torch" and not isinstance(state.get("config"), dict):
        raise BundleError(f"{meta_path}: 'state.config' must be an object; the bundle is damaged, retrain it")
    parts = state.get("parts", [])
    if not isinstance(parts, list):
        raise BundleError(f"{meta_path}: 'state.parts' must be a list; the bundle is damaged, retrain it")
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise BundleError(f"{meta_path}: 'state.parts[{i}]' must be an object")
        _check_fields(part, {k: _STATE_FIELDS[k] for k in ("kind", "file")}, f"state.parts[{i}].", meta_path)
        if part["kind"] == "torch":
            _check_fields(part, {"class": _STATE_FIELDS["class"]}, f"state.parts[{i}].", meta_path)
            if not isinstance(part.get("config"), dict):
                raise BundleError(f"{meta_path}: 'state.parts[{i}].config' must be an object")
    for name in meta["files"]:
        _plain_name(name, meta_path)
    for file in [state["file"], *(p["file"] for p in parts)]:
        _plain_name(file, meta_path)
        if file not in meta["files"]:
            raise BundleError(
                f"{meta_path}: the state names file {file!r}, which has no recorded sha256 in 'files'; "
                "the bundle is damaged, retrain it"
            )


def _plain_name(name: str, meta_path: Path) -> str:
    """A file directly inside the bundle: names with path parts would escape the folder."""
    if not name or name in (".", "..", BUNDLE_JSON) or Path(name).name != name or "\\" in name or "\0" in name:
        raise BundleError(f"{meta_path}: file name {name!r} points outside the bundle (or at bundle.json)")
    return name


def _read_member(root: Path, name: str, shown: Path) -> bytes:
    """The bytes of ``root/name``: a regular file, not a link, not resolving elsewhere."""
    file = root / name
    where = shown / name
    if file.is_symlink():
        raise BundleError(f"{where}: is a symbolic link (to {os.readlink(file)}); bundle files must be plain files")
    if not file.exists():
        raise BundleError(f"{where}: bundle file is missing; the bundle is incomplete, retrain it")
    if file.resolve().parent != root:
        raise BundleError(f"{where}: resolves outside the bundle folder ({file.resolve()})")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(file, flags)
    except OSError as err:
        raise BundleError(f"{where}: cannot be opened ({err.strerror})") from err
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BundleError(f"{where}: is not a regular file")
        return fh.read()


def _verified_files(root: Path, shown: Path, files: Mapping[str, str]) -> dict[str, bytes]:
    """{name: bytes} of every recorded file, after checking the folder holds exactly them
    and each matches its sha256. Nothing is parsed before this returns."""
    present = set(os.listdir(root)) - {BUNDLE_JSON}
    extra = sorted(present - set(files))
    if extra:
        raise BundleError(
            f"{shown}: holds {', '.join(extra)}, which bundle.json does not list; a bundle folder holds "
            "only what `aigvqa train` wrote (remove the extra files, or retrain into a new folder)"
        )
    blobs = {}
    for name, expected in files.items():
        data = _read_member(root, name, shown)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise BundleError(
                f"{shown / name}: sha256 {actual[:16]}... does not match the {expected[:16]}... recorded in "
                f"{BUNDLE_JSON}: the file was changed or damaged after the bundle was saved; "
                "refusing to parse it (retrain, or restore the original file)"
            )
        blobs[name] = data
    return blobs


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
        raise BundleError(f"{where}: class {class_path!r} does not exist in this aigvqa version ({err})") from err
    if not isinstance(cls, type) or _class_path_of(cls) != class_path or not hasattr(cls, "from_state"):
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
        raise BundleError(f"{file}: not a safetensors file ({err}); the bundle is damaged, retrain it") from err
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
    try:
        return lightgbm.Booster(model_str=text)
    except lightgbm.basic.LightGBMError as err:
        raise BundleError(f"{folder / name}: not a valid LightGBM text model ({err})") from err


def _load_state(state: Mapping[str, Any], blobs: Mapping[str, bytes], folder: Path) -> Any:
    kind = state["kind"]
    if kind == "torch":
        return _load_torch(state, blobs, folder)
    if kind != "skops":
        raise BundleError(f"{folder / BUNDLE_JSON}: unknown state kind {kind!r}; written by a newer aigvqa?")
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
            index = obj[len(PART_MARKER):]
            if not index.isdigit() or int(index) >= len(parts):
                raise BundleError(f"{folder / state['file']}: refers to part {index!r}, which bundle.json does not list")
            return parts[int(index)]
        return _KEEP

    return _map_estimators(stripped, attach)


_SKOPS_ERRORS = (zipfile.BadZipFile, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError)
"""What skops raises on a file that is not one of its archives (or a damaged one)."""


def trusted_types(data: bytes, file: Path) -> list[str]:
    """Types in the skops archive ``data`` beyond skops' defaults, all in ``TRUSTED_TYPES``.

    Raises ``BundleError`` naming any other type (``file`` is the name shown).
    """
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except _SKOPS_ERRORS as err:
        raise BundleError(f"{file}: not a skops file ({type(err).__name__}: {err}); the bundle is damaged, retrain it") from err
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise BundleError(
            f"{file}: holds types that are not trusted: {', '.join(refused)}; refusing to load it. "
            "Only scikit-learn / numpy / scipy types and aigvqa's built-in heads are loaded from bundles."
        )
    return untrusted


def _load_skops(data: bytes, file: Path) -> Any:
    import skops.io

    trusted = trusted_types(data, file)
    try:
        return skops.io.loads(data, trusted=trusted)
    except _SKOPS_ERRORS as err:
        raise BundleError(f"{file}: cannot be read as a skops file ({type(err).__name__}: {err}); the bundle is damaged, retrain it") from err
