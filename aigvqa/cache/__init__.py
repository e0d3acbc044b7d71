"""The HDF5 feature store: schema, atomic shard writer, merge, reader.

The on-disk layout (the contract) is documented in ``aigvqa.cache.schema``.
This package never imports torch.
"""

from aigvqa.cache.reader import CacheData, FeatureCache, GroupInfo
from aigvqa.cache.schema import (
    ALL_EXTRACTORS,
    FORMAT_VERSION,
    RANDOM_INIT,
    RUNTIME_KEYS,
    Failure,
    GroupData,
    describe_differences,
)
from aigvqa.cache.store import MergeReport, merge_shards, write_shard

__all__ = [
    "ALL_EXTRACTORS",
    "FORMAT_VERSION",
    "RANDOM_INIT",
    "RUNTIME_KEYS",
    "CacheData",
    "Failure",
    "FeatureCache",
    "GroupData",
    "GroupInfo",
    "MergeReport",
    "describe_differences",
    "merge_shards",
    "write_shard",
]
