"""Identity of extractors and shards, and the provenance checks made before any work.

A shard's file name is a hash of its ids and its extractors' provenance, so a task Dask
re-runs after a worker died finds the shard it already wrote; a run whose extractor
config or weights differ from what a cache group holds is refused before any video is
decoded (``merge_shards`` would refuse it too, but only after the whole dataset ran).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aigvqa.errors import ProvenanceMismatchError
from aigvqa.extractors.base import Extractor

SHARD_GLOB = "shard-*.h5"


def shard_dir_for(cache: str | os.PathLike) -> Path:
    """Where the shards of ``cache`` live while a run is in flight: ``<cache>.shards/``."""
    cache = Path(cache)
    return cache.with_name(cache.name + ".shards")


def extractor_key(extractor: Extractor) -> str:
    """Identity of a configured extractor: class + full config (what a worker caches by)."""
    cls = type(extractor)
    blob = json.dumps(extractor.config(), sort_keys=True, default=str)
    return f"{cls.__module__}.{cls.__qualname__}:{extractor.name}:{blob}"


def _digest(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def shard_name(kind: str, ids: Sequence[str], provenances: Sequence[Mapping[str, Any]]) -> str:
    """Deterministic shard file name from its ids and its extractors' provenance."""
    config = json.dumps(list(provenances), sort_keys=True, default=str)
    return f"shard-{kind}-{_digest(config, *ids)}.h5"


def check_provenance(cache: Path, provenance: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, before any work, to add features of another config/weights to a group.

    ``merge_shards`` refuses the same mismatch; checking first means a run with a changed
    config fails in seconds instead of after computing a whole dataset."""
    if not cache.exists():
        return
    from aigvqa.cache.schema import RUNTIME_KEYS, describe_differences
    from aigvqa.cache.store import FeatureCache

    reader = FeatureCache(cache)
    present = set(reader.groups())
    problems = []
    for name, prov in provenance.items():
        if name in present:
            diffs = describe_differences(
                reader.group_info(name).provenance, prov, ignore=RUNTIME_KEYS
            )
            if diffs:
                problems.append(f"  {name} (cache vs this run): " + "; ".join(diffs))
    if problems:
        raise ProvenanceMismatchError(
            f"{cache}: features of a different configuration or weights are already in this "
            "cache, and mixing them in one group is refused:\n"
            + "\n".join(problems)
            + "\nUse another --cache file for the new settings, or run with the settings "
            "the cache was made with."
        )


def check_leftover_shard(
    path: Path, shard_dir: Path, group: str, found: Mapping[str, Any], wanted: Mapping[str, Any]
) -> None:
    """A shard an interrupted run left must hold features of this run's settings."""
    from aigvqa.cache.schema import RUNTIME_KEYS, describe_differences

    diffs = describe_differences(found, wanted, ignore=RUNTIME_KEYS)
    if diffs:
        raise ProvenanceMismatchError(
            f"{path} (left by an interrupted run) holds {group!r} features made "
            f"with other settings ({'; '.join(diffs)}); re-run with those "
            f"settings to finish that run, or delete {shard_dir} to drop it"
        )
