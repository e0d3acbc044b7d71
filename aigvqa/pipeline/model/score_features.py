"""The features a model bundle needs, for ``aigvqa score`` (``pipeline.model.score``):
recreating them (the extractor configs and checkpoints the bundle recorded), telling which
videos a given cache holds *for the same content*, reading them and predicting rows.

Content identity: a video's features are reused only for the same *content*, not just the
same id (``pipeline.model.score``'s docstring says how). ``work_record`` is how a video is
stored in the work cache; ``_GivenCache`` decides which videos a ``--cache`` holds for the
same file and prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.pipeline.model.score_output import STATUS_FAILED, STATUS_OK, _row
from aigvqa.pipeline.records import (
    FILE_IDENTITY,
    VideoRecord,
    not_the_cached_file,
    prompt_key,
)

IMPORTED = "imported"


# -- what the model needs -----------------------------------------------------------------
def _extractor_configs(bundle) -> tuple[dict[str, dict], dict[str, str]]:
    """{extractor name: config} to recreate the model's features, and {group: why not} for
    groups that cannot be recreated (imported ones). ``weights`` is left out of the configs:
    the bundle keeps only the checkpoint's file name (see ``_weights_option``)."""
    configs, impossible = {}, {}
    for group, prov in bundle.provenance.items():
        name = prov.get("extractor")
        if name == IMPORTED or name is None:
            impossible[group] = (
                f"features of group {group!r} were {prov.get('weights') or 'imported'}; they "
                "cannot be computed here: give --cache holding them for these videos"
            )
            continue
        if name != group:
            impossible[group] = f"group {group!r} was made by extractor {name!r} under another name"
            continue
        config = dict(prov.get("config") or {})
        config.pop("weights", None)
        configs[name] = config
    return configs, impossible


def _recorded_weights(bundle) -> dict[str, str]:
    """{extractor: checkpoint file name} the bundle's features were made with."""
    out = {}
    for group, prov in bundle.provenance.items():
        name = (prov.get("config") or {}).get("weights")
        if isinstance(name, str) and name:
            out[group] = name
    return out


def _weights_option(bundle, configs: Mapping[str, dict], weights) -> Any:
    """``weights=`` for ``extract``: the caller's if given; else, for each extractor whose
    checkpoint file name the bundle recorded, ``$AIGVQA_WEIGHTS/<extractor>/<that name>``
    when it exists; else None (the extractor's own search). The sha256 the bundle recorded
    is checked on the features either way."""
    if weights is not None:
        return weights
    from aigvqa.extractors.weights import weights_root

    root = weights_root()
    if root is None:
        return None
    found = {
        name: str(root / name / file)
        for name, file in _recorded_weights(bundle).items()
        if name in configs and (root / name / file).exists()
    }
    return found or None


def prompt_groups(bundle) -> list[str]:
    """The bundle's groups that encode the prompt (text extractors): they need a prompt."""
    from aigvqa.extractors.registry import get_extractor_class

    out = []
    for group, prov in bundle.provenance.items():
        name = prov.get("extractor")
        if name in (None, IMPORTED):
            continue
        if getattr(get_extractor_class(name), "modality", "video") == "text":
            out.append(group)
    return out


def _weights_advice(bundle, err: Exception) -> str:
    recorded = _recorded_weights(bundle)
    text = str(err)
    if recorded:
        files = ", ".join(
            f"{name}: {file} ({bundle.provenance[name].get('weights')})"
            for name, file in recorded.items()
        )
        text += (
            f" | the model was trained with the checkpoint(s) {files}; give them with "
            "weights=<path> (or put each at $AIGVQA_WEIGHTS/<extractor>/<file name>)"
        )
    return text


# -- content identity ---------------------------------------------------------------------
def file_identity(path: Path) -> tuple[str, int, int] | None:
    """(resolved path, size, mtime_ns), or None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), int(st.st_size), int(st.st_mtime_ns)


def work_record(record: VideoRecord) -> VideoRecord:
    """``record`` as it is stored in the work cache: its id carries the file's identity and
    its prompt id is a hash of the prompt text (see the module docstring)."""
    identity = file_identity(record.path) or (os.path.realpath(record.path), -1, -1)
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    groups = dict(record.groups)
    groups.pop("prompt", None)
    if (record.prompt or "").strip():
        groups["prompt"] = prompt_key(record.prompt)
    return replace(record, video_id=f"{record.video_id}@{digest}", groups=groups)


class _GivenCache:
    """Which videos a ``--cache`` holds for the same content (module docstring)."""

    def __init__(self, cache: Path, groups: Sequence[str]):
        from aigvqa.cache import FeatureCache

        store = FeatureCache(cache)
        self.cache = cache
        self.videos = {v["video_id"]: v for v in store.videos()}
        self.ids = _ids_with_groups(store, self.videos, groups)
        self.written_ns = cache.stat().st_mtime_ns
        have = store.groups()
        self.by_prompt = any(store.group_info(g).keyed_by == "prompt" for g in groups if g in have)

    def mismatch(self, record: VideoRecord) -> str | None:
        """None when the cached features of ``record.video_id`` are those of this video; else
        why not (an empty string when the cache simply lacks the id)."""
        if record.video_id not in self.ids:
            return ""
        video = self.videos.get(record.video_id, {})
        why = not_the_cached_file(video, record.path)
        if why == "moved":
            stored = video["path"]
            return f"{self.cache} holds {record.video_id!r} for {stored}, not for {record.path}"
        if why == "changed":  # extract recorded another size / mtime_ns when it decoded it
            return f"{record.path} changed after {self.cache} extracted it"
        if video.get("path") and not video.get(FILE_IDENTITY):
            # a cache written before FILE_IDENTITY was recorded: its mtime must do
            identity = file_identity(record.path)
            if identity is not None and identity[2] > self.written_ns:
                return f"{record.path} was modified after {self.cache} was written"
        if (
            self.by_prompt
            and (record.prompt or "").strip()
            and (record.prompt or "").strip() != (video.get("prompt") or "").strip()
        ):
            return f"{self.cache} holds {record.video_id!r} with another prompt"
        return None


# -- reading features ---------------------------------------------------------------------
def _cached_ids(cache: Path | None, groups: Sequence[str]) -> set[str]:
    """Video ids that have every group in ``cache``."""
    from aigvqa.cache import FeatureCache

    if cache is None or not cache.exists():
        return set()
    store = FeatureCache(cache)
    return _ids_with_groups(store, {v["video_id"]: v for v in store.videos()}, groups)


def _ids_with_groups(store, videos: dict[str, dict], groups: Sequence[str]) -> set[str]:
    """Ids of ``videos`` (the cache's rows by id) that have every group in ``store``."""
    have = store.groups()
    if any(g not in have for g in groups):
        return set()
    present = None
    for g in groups:
        info = store.group_info(g)
        stored = set(store.ids(g))
        if info.keyed_by == "prompt":
            stored = {vid for vid, v in videos.items() if v["prompt_id"] in stored}
        present = stored if present is None else present & stored
    return present or set()


def _check_cache(bundle, cache: Path, *, missing_ok: bool = False) -> None:
    """Refuse a cache whose groups were made otherwise than the model's. ``missing_ok``: a
    group the cache lacks is no error (the work cache after a batch whose videos all failed)."""
    from aigvqa.cache import FeatureCache

    if missing_ok and not cache.exists():
        return
    store = FeatureCache(cache)
    have = store.groups()
    provenance = {g: store.group_info(g).provenance for g in bundle.groups if g in have}
    bundle.check_provenance(provenance, source=str(cache), present_only=missing_ok)


def _failure_text(cache: Path | None, vid: str, groups: Sequence[str]) -> str:
    from aigvqa.cache import FeatureCache

    if cache is not None and cache.exists():
        errors = [
            f"[{f.extractor}] {f.error}"
            for f in FeatureCache(cache).failures()
            if f.id == vid and (f.extractor in groups or f.extractor == "*")
        ]
        if errors:
            return " | ".join(errors)
    return f"features missing for {', '.join(groups)}"


def _nonfinite_features(X, names: Sequence[str]) -> dict[int, list[str]]:
    """{row: feature names} of rows with NaN / inf in their valid time steps."""
    bad: dict[int, list[str]] = {}
    for name in names:
        values, lengths = X.arrays[name], X.lengths[name]
        valid = np.arange(values.shape[1])[None, :] < lengths[:, None]
        rows = np.flatnonzero((~np.isfinite(values) & valid[:, :, None]).any(axis=(1, 2)))
        for row in rows:
            bad.setdefault(int(row), []).append(name)
    return bad


def _predict_rows(
    bundle, source: Path, pairs: Sequence[tuple[VideoRecord, str]]
) -> dict[str, dict[str, Any]]:
    """Rows for ``pairs`` of (record, its id in ``source``), every one present in ``source``.

    Videos whose features are not finite, and videos the model gives a non-finite score,
    become failed rows: a score is written ``ok`` only when every value is a finite number.
    """
    from aigvqa.cache import FeatureCache
    from aigvqa.pipeline.training_data import featureset_from_cache

    store = FeatureCache(source)
    data = store.read(bundle.groups, ids=[key for _, key in pairs])
    provenance = {g: store.group_info(g).provenance for g in bundle.groups}  # column ranges
    X = featureset_from_cache(data, provenance)
    X.ids = np.asarray(
        [r.video_id for r, _ in pairs], dtype=object
    )  # the head names videos by their own ids
    rows: dict[str, dict[str, Any]] = {}
    bad = _nonfinite_features(X, bundle.feature_names)
    for i, names in bad.items():
        record = pairs[i][0]
        rows[record.video_id] = _row(
            record,
            STATUS_FAILED,
            error=(
                f"features {', '.join(names)} hold NaN or inf ({source}); the cache or the "
                "extractor output is damaged: re-extract this video"
            ),
        )
    keep = [i for i in range(len(pairs)) if i not in bad]
    if not keep:
        return rows
    pred = bundle.predict(X[np.asarray(keep)])
    for i, p in zip(keep, pred):
        record = pairs[i][0]
        if not np.isfinite(p).all():
            rows[record.video_id] = _row(
                record,
                STATUS_FAILED,
                error=(
                    "the model predicted a non-finite score "
                    f"({', '.join(f'{n}={v}' for n, v in zip(bundle.label_names, p.tolist()))}); "
                    "the model is damaged or was trained on non-finite features: retrain it"
                ),
            )
        else:
            rows[record.video_id] = _row(
                record, STATUS_OK, dict(zip(bundle.label_names, p.tolist()))
            )
    return rows
