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

Formats, and why nothing is unpickled: ``pipeline.model.bundle_state`` (writing and
reading a head's state). Integrity (every file's sha256, checked before parsing; links,
extra and missing files refused): ``pipeline.model.bundle_files``.

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
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.errors import ProvenanceMismatchError

# The folder's integrity lives in bundle_files, the state's formats in bundle_state; their
# names stay importable from here, where the API has always had them.
from aigvqa.pipeline.model.bundle_files import (  # noqa: F401  (re-exported)
    BUNDLE_FORMAT,
    BUNDLE_JSON,
    BUNDLE_VERSION,
    BundleError,
    _check_meta,
    _plain_name,
    _read_member,
    _verified_files,
    meta_digest,
)
from aigvqa.pipeline.model.bundle_state import (  # noqa: F401  (re-exported)
    HEAD_CLASSES,
    PART_MARKER,
    TRUSTED_TYPES,
    _jsonable,
    _load_state,
    _map_estimators,
    _save_state,
    trusted_types,
)
from aigvqa.pipeline.records import file_sha256
from aigvqa.pipeline.training_data import provenance_problems

_BUNDLE_SUFFIXES = (".safetensors", ".skops")
"""Files ``save_bundle`` may replace in an existing bundle folder (with ``lightgbm-*.txt``)."""


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

    def check_provenance(
        self,
        cache_provenance: Mapping[str, Mapping[str, Any]],
        source: str = "the cache",
        *,
        present_only: bool = False,
    ) -> None:
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
                + " (model vs features). Extract features with the model's extractor configs "
                "(aigvqa score does this when given no --cache) or retrain the model on these "
                "features."
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


# -- save ---------------------------------------------------------------------------------
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
        replaceable = entry.suffix in _BUNDLE_SUFFIXES or (
            entry.name.startswith("lightgbm-") and entry.suffix == ".txt"
        )
        (
            old_files if replaceable and entry.is_file() and not entry.is_symlink() else foreign
        ).append(entry)
    if foreign:
        raise BundleError(
            f"{path}: holds {', '.join(e.name for e in foreign)}, which are not bundle files; "
            "save the model into an empty (or new) folder"
        )
    for old in old_files:
        old.unlink()
    (path / BUNDLE_JSON).unlink(
        missing_ok=True
    )  # a crash from here on leaves no loadable half-bundle
    name = head_name or _registered_name(head)
    state = _save_state(head, path)
    written = sorted(
        e.name for e in path.iterdir() if e.name not in (BUNDLE_JSON, f".{BUNDLE_JSON}.tmp")
    )
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
    meta["digest"] = meta_digest(meta)
    tmp = path / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False))
    tmp.replace(path / BUNDLE_JSON)
    return path


def _public_params(head: Any) -> dict[str, Any]:
    params = head.get_params(deep=False) if hasattr(head, "get_params") else {}
    # Nested estimators are stored in the state, not as parameters.
    return {
        k: v
        for k, v in params.items()
        if not hasattr(v, "get_params") and not _is_estimator_list(v)
    }


def _is_estimator_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and any(
        hasattr(v, "get_params")
        or (isinstance(v, tuple) and any(hasattr(x, "get_params") for x in v))
        for v in value
    )


def _registered_name(head: Any) -> str:
    from aigvqa.heads.registry import head_name

    return head_name(type(head))


# -- load ---------------------------------------------------------------------------------
def load_bundle(path: str | Path) -> Bundle:
    """Read a bundle folder written by ``save_bundle``; executes no code from the folder.

    Every file is read once and checked against its sha256 in bundle.json before anything
    parses it (see the module docstring); any problem is a ``BundleError`` naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"{path}: not a model bundle (no such folder); train one with `aigvqa train ... --out "
            f"{path}`"
        )
    root = path.resolve()  # the folder may be a link; what is inside may not
    if not (root / BUNDLE_JSON).exists() and not (root / BUNDLE_JSON).is_symlink():
        raise BundleError(
            f"{path}: not a model bundle (no {BUNDLE_JSON}); train one with `aigvqa train ... "
            f"--out {path}`"
        )
    meta_path = path / BUNDLE_JSON
    raw = _read_member(root, BUNDLE_JSON, path)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(
            f"{meta_path}: not valid JSON ({err}); the bundle is damaged, retrain it"
        ) from err
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
