"""The X every head takes: named ragged sequences padded to [N, T, D] plus lengths.

Slicing by row index returns another FeatureSet, and ``shape`` / ``__len__`` make it
indexable by scikit-learn's cross-validation utilities, so ``fit(X[train], y[train])``,
``cross_val_predict`` and ``GridSearchCV`` work on deep and classical heads alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from aigvqa.errors import TargetValueError


class FeatureSet:
    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        lengths: Mapping[str, np.ndarray] | None = None,
        ids: Iterable[str] | None = None,
    ) -> None:
        if not arrays:
            raise ValueError("a FeatureSet needs at least one named array")
        self.arrays: dict[str, np.ndarray] = {}
        n = None
        for name, a in arrays.items():
            a = np.asarray(a)
            if a.ndim == 2:  # [N, D] -> [N, 1, D]: every feature is a sequence
                a = a[:, None, :]
            if a.ndim != 3:
                raise ValueError(f"feature {name!r} must be [N, T, D] or [N, D], got {a.shape}")
            if n is not None and a.shape[0] != n:
                raise ValueError(f"feature {name!r} has {a.shape[0]} rows, expected {n}")
            n = a.shape[0]
            self.arrays[name] = a
        self.lengths: dict[str, np.ndarray] = {}
        for name, a in self.arrays.items():
            given = None if lengths is None else lengths.get(name)
            if given is None:
                given = np.full(a.shape[0], a.shape[1], dtype=np.int64)
            given = np.asarray(given, dtype=np.int64)
            if given.shape != (a.shape[0],) or (given > a.shape[1]).any() or (given < 0).any():
                raise ValueError(f"lengths of {name!r} must be [N] ints in [0, {a.shape[1]}]")
            self.lengths[name] = given
        self.ids = (
            np.asarray(list(ids), dtype=object)
            if ids is not None
            else np.arange(n).astype(str).astype(object)
        )
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} rows")

    # -- container protocol ----------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    @property
    def shape(self) -> tuple[int]:
        return (len(self.ids),)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> FeatureSet:
        if isinstance(index, str):
            raise TypeError("use fs.arrays[name] for a named array; fs[rows] slices rows")
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return FeatureSet(
            {k: v[idx] for k, v in self.arrays.items()},
            {k: v[idx] for k, v in self.lengths.items()},
            self.ids[idx],
        )

    def select(self, names: Iterable[str]) -> FeatureSet:
        """A FeatureSet with only the named features (for feature-subset ablations)."""
        names = list(names)
        missing = [n for n in names if n not in self.arrays]
        if missing:
            raise KeyError(f"features {missing} not in this set (have {self.names})")
        return FeatureSet(
            {k: self.arrays[k] for k in names}, {k: self.lengths[k] for k in names}, self.ids
        )

    def mask(self, name: str) -> np.ndarray:
        """[N, T] boolean: True where a time step holds data."""
        t = self.arrays[name].shape[1]
        return np.arange(t)[None, :] < self.lengths[name][:, None]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}{tuple(v.shape[1:])}" for k, v in self.arrays.items())
        return f"FeatureSet(n={len(self)}, {parts})"


def target_overflow(y: np.ndarray, ids: Sequence[str] | None = None) -> str | None:
    """Why finite targets ``y`` [N, k] cannot be standardised -- their mean or std overflows
    float64 (a label of 1e308) -- or None when they can. Heads standardise targets (deep
    heads always, classical ones with ``scale_target``): an infinite std makes every
    prediction NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        spread = np.concatenate([y.mean(0), y.std(0)])
    if np.isfinite(spread).all():
        return None
    big = np.abs(y).max(axis=1)
    at = int(np.argmax(big))
    where = f"video {ids[at]}" if ids is not None else f"row {at}"
    return (
        f"the target (MOS) is too large to standardise: its mean or std is not a finite float64 "
        f"(largest |value| {big[at]:.3g}, {where}); check the label column, or rescale the "
        "labels (e.g. to 0..100) before fitting"
    )


def check_targets(y: np.ndarray, ids: Sequence[str]) -> None:
    """Refuse training targets ``y`` [N, k] that hold NaN / inf or are too large to
    standardise (``TargetValueError`` naming the videos): what every head fits on."""
    if len(y) != len(ids):
        return  # the caller's shape check says it better
    bad = ~np.isfinite(y).all(1)
    if bad.any():
        shown = ", ".join(str(i) for i in np.asarray(ids)[bad][:5]) + (
            f" and {bad.sum() - 5} more" if bad.sum() > 5 else ""
        )
        raise TargetValueError(
            f"the target (MOS) is NaN or inf for {bad.sum()} videos ({shown}); "
            "drop those rows before fitting"
        )
    overflow = target_overflow(y, ids)
    if overflow:
        raise TargetValueError(overflow)


def nonfinite_rows(
    X: FeatureSet, names: Sequence[str], chunk_rows: int = 1024
) -> dict[str, np.ndarray]:
    """name -> rows of ``X`` whose valid steps (t < length) of that feature hold NaN or inf
    (padding is never looked at): what the classical heads refuse, naming the videos."""
    found = {}
    for name in names:
        a, lengths = X.arrays[name], X.lengths[name]
        steps = np.arange(a.shape[1])[None, :]
        bad = [
            start
            + np.flatnonzero(
                (
                    (~np.isfinite(a[start : start + chunk_rows])).any(-1)
                    & (steps < lengths[start : start + chunk_rows, None])
                ).any(1)
            )
            for start in range(0, len(a), chunk_rows)
        ]
        rows = np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
        if rows.size:
            found[name] = rows
    return found


def nonfinite_text(X: FeatureSet, names: Sequence[str]) -> str | None:
    """Why a classical head cannot use ``X`` -- the features and videos whose valid steps
    hold NaN or inf -- or None."""
    found = nonfinite_rows(X, names)
    if not found:
        return None
    return nonfinite_message(
        found,
        X.ids,
        "Drop those videos (or re-extract them), or replace the values when importing the "
        "features (VIDEVAL sets them to 0)",
    )


def nonfinite_message(found: dict[str, np.ndarray], ids: Sequence[str], advice: str) -> str:
    """The message naming, per feature, the videos (rows of ``ids``) in ``found`` whose
    values are NaN or inf, then ``advice``."""
    parts = []
    for name, rows in found.items():
        shown = ", ".join(str(ids[i]) for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        parts.append(f"{name!r} in {len(rows)} videos ({shown}{more})")
    return f"features hold NaN or inf: {'; '.join(parts)}. {advice}"
