"""Pooling for the classical heads: a FeatureSet of padded sequences -> one row of statistics
per video (``pool_sequences``).

Per named feature, the mean and std over the valid time steps (``lengths`` masks padding),
optionally min / max and percentiles. A feature that is one vector per video (T = 1, e.g.
imported VIDEVAL features) is passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aigvqa.errors import HeadParameterError
from aigvqa.heads.featureset import FeatureSet

POOL_STATS = ("mean", "std", "min", "max")


def as_featureset(X) -> FeatureSet:
    """A FeatureSet as is; a plain [N, D] or [N, T, D] array as the single feature ``"x"``."""
    if isinstance(X, FeatureSet):
        return X
    return FeatureSet({"x": np.asarray(X)})


def pool_sequences(
    X: FeatureSet,
    stats: Sequence[str] = ("mean", "std"),
    percentiles: Sequence[float] = (),
    features: Sequence[str] | None = None,
    chunk_rows: int = 1024,
) -> tuple[np.ndarray, list[str]]:
    """[N, F] float64 statistics over each feature's valid time steps, and the column names.

    Columns are grouped by feature (in ``features`` order), then statistic, then dimension.
    Rows with length 0 get zeros. Features with T = 1 give their D values once (every
    statistic of one step is that step, or 0 for std). Rows are processed ``chunk_rows`` at a
    time so float16 caches of long token sequences are not expanded to float64 all at once.
    """
    X = as_featureset(X)
    stats = tuple(stats)
    unknown = [s for s in stats if s not in POOL_STATS]
    if unknown:
        raise HeadParameterError(f"unknown pooling statistics {unknown}; choose from {POOL_STATS}")
    names = list(X.names if features is None else features)
    missing = [n for n in names if n not in X.arrays]
    if missing:
        raise HeadParameterError(
            f"features {missing} are not in the feature set (it has {X.names})"
        )
    blocks, columns = [], []
    for name in names:
        a, lengths = X.arrays[name], X.lengths[name]
        t, d = a.shape[1], a.shape[2]
        if t == 1:
            one = np.where(lengths[:, None] > 0, a[:, 0, :].astype(np.float64), 0.0)
            blocks.append(one)
            columns += [f"{name}[{i}]" for i in range(d)]
            continue
        parts = [
            _pool_chunk(a[r : r + chunk_rows], lengths[r : r + chunk_rows], stats, percentiles)
            for r in range(0, len(X), chunk_rows)
        ]
        blocks.append(
            np.concatenate(parts, axis=0)
            if parts
            else np.zeros((0, d * (len(stats) + len(percentiles))))
        )
        labels = list(stats) + [f"p{q:g}" for q in percentiles]
        columns += [f"{name}.{s}[{i}]" for s in labels for i in range(d)]
    return np.concatenate(blocks, axis=1), columns


def _pool_chunk(a: np.ndarray, lengths: np.ndarray, stats, percentiles) -> np.ndarray:
    a = a.astype(np.float64)
    valid = (np.arange(a.shape[1])[None, :] < lengths[:, None])[..., None]  # [n, T, 1]
    count = np.maximum(lengths, 1)[:, None].astype(np.float64)
    empty = (lengths == 0)[:, None]
    zeroed = np.where(valid, a, 0.0)  # where(), not a product: NaN in padding must not leak
    mean = zeroed.sum(axis=1) / count
    out = []
    for s in stats:
        if s == "mean":
            out.append(mean)
        elif s == "std":
            out.append(
                np.sqrt((np.where(valid, a - mean[:, None, :], 0.0) ** 2).sum(axis=1) / count)
            )
        elif s == "min":
            out.append(np.where(empty, 0.0, np.min(a, axis=1, where=valid, initial=np.inf)))
        else:
            out.append(np.where(empty, 0.0, np.max(a, axis=1, where=valid, initial=-np.inf)))
    if len(percentiles):
        masked = np.where(valid, a, np.nan)
        masked[lengths == 0, 0, :] = 0.0  # an empty row pools to zeros, without all-NaN warnings
        q = np.nanpercentile(masked, list(percentiles), axis=1)  # [P, n, D]
        out.extend(q)
    return np.concatenate(out, axis=1)
