"""``aigvqa import-features``: foreign per-video feature matrices into a cache group.

Accepted files:

- ``.mat`` (MATLAB v5/v7, read with scipy): the named ``variable`` (default: the only
  matrix in the file), [N, D] or [N, T, D];
- ``.npy``: [N, D] or [N, T, D];
- ``.csv``: one row per video, an id column and numeric feature columns (all other
  columns, or the ones named in ``feature_columns``); label columns named in
  ``label_columns`` are taken as labels, not features.

Rows of .mat / .npy files carry no ids: ``ids_from`` names a CSV whose rows are in the same
order (e.g. VIDEVAL's ``KONVID_1K_metadata.csv``), with ``id_column`` and optional
``label_columns`` (MOS) and ``group_columns`` (prompt, generator). The group's provenance
records the source file name and its sha256 (``"imported from FILE sha256"``), so one
cache group never mixes rows of two files. The file is where the rows came from, not how
the features were made: cross-dataset evaluation and a model scoring features imported
from another file compare the rest (``variable``, the group's shape), not the file.

NaN / Inf values: ``nan="zero"`` (default, as the VIDEVAL authors do) replaces them by 0 and
says how many it replaced; ``nan="error"`` refuses the file.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigvqa.errors import AigvqaError


class ImportFeaturesError(AigvqaError, ValueError):
    """A feature file or its id table cannot be imported as asked."""


@dataclass
class ForeignFeatures:
    """Features read from a foreign file, rows aligned with ``ids``."""

    ids: list[str]
    values: np.ndarray  # [N, T, D] float32
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    source: Path | None = None
    sha256: str = ""
    variable: str | None = None
    replaced_nonfinite: int = 0

    def provenance(self) -> dict:
        return {
            "extractor": "imported",
            "config": {"file": self.source.name if self.source else None, "variable": self.variable},
            "view": None,
            "weights": f"imported from {self.source.name if self.source else '?'} sha256 {self.sha256}",
            "sha256": self.sha256,
        }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError as err:
        raise ImportFeaturesError(f"{path}: no such file") from err
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ImportFeaturesError(f"{path}: needs a header row and at least one data row")
    return [h.strip() for h in rows[0]], rows[1:]


def _column(path: Path, header: list[str], name: str, what: str) -> int:
    if name not in header:
        raise ImportFeaturesError(f"{path}: no {what} column {name!r}; columns are {header}")
    return header.index(name)


def _floats(path: Path, rows: list[list[str]], col: int, name: str) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        text = row[col].strip() if col < len(row) else ""
        try:
            out[i] = float(text) if text not in ("", "na", "NA", "nan", "NaN") else np.nan
        except ValueError as err:
            raise ImportFeaturesError(
                f"{path}: line {i + 2}, column {name!r}: {text!r} is not a number"
            ) from err
    return out


def read_id_table(
    path: str | Path,
    *,
    id_column: str | None = None,
    label_columns: list[str] = (),
    group_columns: list[str] = (),
) -> tuple[list[str], dict[str, np.ndarray], dict[str, list[str]]]:
    """Ids (first column unless ``id_column``), labels and groups from a metadata CSV."""
    path = Path(path)
    header, rows = _read_csv_table(path)
    id_col = _column(path, header, id_column, "id") if id_column else 0
    ids = [row[id_col].strip() for row in rows]
    labels = {name: _floats(path, rows, _column(path, header, name, "label"), name) for name in label_columns}
    groups = {
        name: [row[c].strip() for row in rows]
        for name in group_columns
        for c in [_column(path, header, name, "group")]
    }
    return ids, labels, groups


def read_feature_file(
    path: str | Path,
    *,
    variable: str | None = None,
    id_column: str | None = None,
    feature_columns: list[str] | None = None,
    label_columns: list[str] = (),
    group_columns: list[str] = (),
) -> ForeignFeatures:
    """Read a .mat / .npy / .csv feature file. Ids are filled only for .csv files."""
    path = Path(path)
    if not path.is_file():
        raise ImportFeaturesError(f"{path}: no such feature file")
    suffix = path.suffix.lower()
    ids: list[str] = []
    labels: dict[str, np.ndarray] = {}
    groups: dict[str, list[str]] = {}
    if suffix == ".mat":
        values, variable = _read_mat(path, variable)
    elif suffix == ".npy":
        # allow_pickle=False: an object array in a .npy would run code on load.
        try:
            values = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ImportFeaturesError(f"{path}: not a plain numeric .npy array ({err})") from err
    elif suffix == ".csv":
        header, rows = _read_csv_table(path)
        id_name = id_column or header[0]
        id_col = _column(path, header, id_name, "id")
        ids = [row[id_col].strip() for row in rows]
        labels = {n: _floats(path, rows, _column(path, header, n, "label"), n) for n in label_columns}
        groups = {n: [row[_column(path, header, n, "group")].strip() for row in rows] for n in group_columns}
        taken = {id_name, *label_columns, *group_columns}
        names = feature_columns or [h for h in header if h not in taken]
        if not names:
            raise ImportFeaturesError(f"{path}: no feature columns left after the id/label/group columns")
        values = np.stack([_floats(path, rows, _column(path, header, n, "feature"), n) for n in names], axis=1)
    else:
        raise ImportFeaturesError(f"{path}: import-features reads .mat, .npy or .csv files, not {suffix!r}")
    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise ImportFeaturesError(f"{path}: features must be numeric, got dtype {values.dtype}")
    if values.ndim == 2:
        values = values[:, None, :]
    if values.ndim != 3:
        raise ImportFeaturesError(f"{path}: expected an [N, D] or [N, T, D] matrix, got shape {values.shape}")
    return ForeignFeatures(
        ids=ids,
        values=values.astype(np.float64),
        labels=labels,
        groups=groups,
        source=path,
        sha256=file_sha256(path),
        variable=variable,
    )


def _read_mat(path: Path, variable: str | None) -> tuple[np.ndarray, str]:
    import scipy.io

    try:
        contents = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise ImportFeaturesError(
            f"{path}: a MATLAB v7.3 (HDF5) file; re-save it with `save(..., '-v7')` or export the "
            "matrix to .npy"
        ) from err
    matrices = {k: v for k, v in contents.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    if variable is None:
        if len(matrices) != 1:
            raise ImportFeaturesError(
                f"{path}: holds {sorted(matrices)}; name the one to import with --variable"
            )
        variable = next(iter(matrices))
    if variable not in matrices:
        raise ImportFeaturesError(f"{path}: no variable {variable!r}; it holds {sorted(matrices)}")
    return matrices[variable], variable


def load_foreign_features(
    path: str | Path,
    *,
    variable: str | None = None,
    ids_from: str | Path | None = None,
    id_column: str | None = None,
    feature_columns: list[str] | None = None,
    label_columns: list[str] = (),
    group_columns: list[str] = (),
    nan: str = "zero",
) -> ForeignFeatures:
    """Read the feature file, attach ids / labels / groups, and deal with non-finite values."""
    if nan not in ("zero", "error"):
        raise ValueError(f"nan must be 'zero' or 'error', got {nan!r}")
    path = Path(path)
    in_file = path.suffix.lower() == ".csv" and ids_from is None
    feats = read_feature_file(
        path,
        variable=variable,
        id_column=id_column,
        feature_columns=feature_columns,
        label_columns=label_columns if in_file else (),
        group_columns=group_columns if in_file else (),
    )
    if ids_from is not None:
        ids, labels, groups = read_id_table(
            ids_from, id_column=id_column, label_columns=label_columns, group_columns=group_columns
        )
        if len(ids) != len(feats.values):
            raise ImportFeaturesError(
                f"{ids_from} has {len(ids)} rows but {path} has {len(feats.values)}; the id table "
                "must list the videos in the feature file's row order"
            )
        feats.ids, feats.labels, feats.groups = ids, labels, groups
    elif not feats.ids:
        raise ImportFeaturesError(
            f"{path}: rows of a {path.suffix} file have no video ids; pass --ids-from a CSV "
            "listing the videos in the same order (and --id-column)"
        )
    duplicates = sorted({i for i in feats.ids if feats.ids.count(i) > 1}) if len(set(feats.ids)) != len(feats.ids) else []
    if duplicates:
        raise ImportFeaturesError(f"{ids_from or path}: duplicate video ids {duplicates[:5]}; ids must be unique")
    bad = ~np.isfinite(feats.values)
    if bad.any():
        if nan == "error":
            rows = sorted(set(np.nonzero(bad)[0].tolist()))
            raise ImportFeaturesError(
                f"{path}: {int(bad.sum())} NaN/Inf values in rows {rows[:10]}; fix the file or "
                "pass --nan zero to replace them by 0"
            )
        feats.values = np.where(bad, 0.0, feats.values)
        feats.replaced_nonfinite = int(bad.sum())
    return feats


@dataclass
class ImportReport:
    cache: Path
    group: str
    rows: int
    dim: int
    steps: int
    labels: list[str]
    replaced_nonfinite: int
    merge: object  # aigvqa.cache.MergeReport

    def summary(self) -> str:
        text = (
            f"imported {self.rows} videos x {self.steps} step(s) x {self.dim} features into group "
            f"{self.group!r} of {self.cache}"
        )
        if self.labels:
            text += f"; labels: {', '.join(self.labels)}"
        if self.replaced_nonfinite:
            text += f"; {self.replaced_nonfinite} NaN/Inf values replaced by 0"
        return text + f"\n{self.merge}"


def import_features(
    file: str | Path,
    cache: str | Path,
    group: str,
    *,
    variable: str | None = None,
    ids_from: str | Path | None = None,
    id_column: str | None = None,
    feature_columns: list[str] | None = None,
    label_columns: list[str] = (),
    group_columns: list[str] = (),
    nan: str = "zero",
    dtype: str = "float32",
    overwrite: bool = False,
) -> ImportReport:
    """Import a foreign feature file into cache group ``group`` (see the module docstring).

    Labels and groups go to the cache's videos table. A video the cache already knows
    keeps its path, prompt and other labels: imported labels are added to them.
    Re-importing the same file is a no-op (ids already cached are skipped) unless
    ``overwrite``; importing a *different* file into an existing group is refused by the
    cache (its provenance differs) unless ``overwrite``.
    """
    from aigvqa.cache import FeatureCache, GroupData, merge_shards, write_shard

    cache = Path(cache)
    feats = load_foreign_features(
        file, variable=variable, ids_from=ids_from, id_column=id_column, feature_columns=feature_columns,
        label_columns=list(label_columns), group_columns=list(group_columns), nan=nan,
    )
    known = {v["video_id"]: v for v in FeatureCache(cache).videos()} if cache.exists() else {}
    videos = []
    for i, vid in enumerate(feats.ids):
        row = dict(known.get(vid, {"video_id": vid}))
        labels = dict(row.get("labels", {}))
        labels.update({k: float(v[i]) for k, v in feats.labels.items() if np.isfinite(v[i])})
        groups = dict(row.get("groups", {}))
        groups.update({k: v[i] for k, v in feats.groups.items()})
        row.update(labels=labels, groups=groups)
        if "prompt" in groups and not row.get("prompt_id"):
            row["prompt_id"] = groups["prompt"]
        videos.append(row)
    data = GroupData(
        name=group,
        keyed_by="video",
        ids=list(feats.ids),
        values=[np.asarray(v, dtype=np.float32) for v in feats.values],
        provenance=feats.provenance(),
    )
    shard = cache.with_name(f".{cache.name}.import-{feats.sha256[:12]}.h5")
    write_shard(shard, [data], videos=videos, dtype=dtype)
    try:
        merge = merge_shards(cache, [shard], overwrite=overwrite, remove_shards=True)
    finally:
        shard.unlink(missing_ok=True)
    return ImportReport(cache, group, len(feats.ids), feats.values.shape[2], feats.values.shape[1],
                        sorted(feats.labels), feats.replaced_nonfinite, merge)
