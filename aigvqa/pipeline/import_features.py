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

Subsets: ``keep_ids`` / ``drop_ids`` (video ids) and ``keep_rows`` / ``drop_rows`` (1-based
row numbers of the feature file, as VIDEVAL lists YouTube-UGC's 57 grayscale videos) import
only some rows. Labels can be renamed (``label_columns={"MOSFull": "mos"}``).

Every imported video's row in the feature file (0-based, counted before any row is dropped)
is stored as its ``source_order`` in the cache's videos table: VIDEVAL's splits index the
rows of the metadata file in that order, and ``evaluate`` uses it for them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigvqa.errors import AigvqaError
from aigvqa.pipeline.records import file_sha256


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
    rows: np.ndarray | None = None  # each kept row's 0-based row in the feature file
    dropped: int = 0  # rows left out by a keep / drop list

    def provenance(self) -> dict:
        return {
            "extractor": "imported",
            "config": {
                "file": self.source.name if self.source else None,
                "variable": self.variable,
            },
            "view": None,
            "weights": (
                f"imported from {self.source.name if self.source else '?'} sha256 {self.sha256}"
            ),
            "sha256": self.sha256,
        }


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
    labels = {
        name: _floats(path, rows, _column(path, header, name, "label"), name)
        for name in label_columns
    }
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
        labels = {
            n: _floats(path, rows, _column(path, header, n, "label"), n) for n in label_columns
        }
        groups = {
            n: [row[_column(path, header, n, "group")].strip() for row in rows]
            for n in group_columns
        }
        taken = {id_name, *label_columns, *group_columns}
        names = feature_columns or [h for h in header if h not in taken]
        if not names:
            raise ImportFeaturesError(
                f"{path}: no feature columns left after the id/label/group columns"
            )
        values = np.stack(
            [_floats(path, rows, _column(path, header, n, "feature"), n) for n in names], axis=1
        )
    else:
        raise ImportFeaturesError(
            f"{path}: import-features reads .mat, .npy or .csv files, not {suffix!r}"
        )
    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise ImportFeaturesError(f"{path}: features must be numeric, got dtype {values.dtype}")
    if values.ndim == 2:
        values = values[:, None, :]
    if values.ndim != 3:
        raise ImportFeaturesError(
            f"{path}: expected an [N, D] or [N, T, D] matrix, got shape {values.shape}"
        )
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
    matrices = {
        k: v for k, v in contents.items() if not k.startswith("__") and isinstance(v, np.ndarray)
    }
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
    label_columns: Iterable[str] | Mapping[str, str] = (),
    group_columns: list[str] = (),
    nan: str = "zero",
    subset: Mapping[str, Iterable | None] | None = None,
) -> ForeignFeatures:
    """Read the feature file, attach ids / labels / groups, keep the rows ``subset`` (the
    keywords of ``select_rows``) allows, and deal with non-finite values in those rows.

    ``label_columns``: columns to take as labels, or {column: label name} to rename them."""
    if nan not in ("zero", "error"):
        raise ValueError(f"nan must be 'zero' or 'error', got {nan!r}")
    renames = (
        dict(label_columns) if isinstance(label_columns, Mapping) else {c: c for c in label_columns}
    )
    label_columns = list(renames)
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
    names = list(renames.values())
    if len(set(names)) != len(names):
        raise ImportFeaturesError(
            f"label names {names} repeat; give each label column its own name"
        )
    feats.labels = {renames[col]: values for col, values in feats.labels.items()}
    duplicates = (
        sorted({i for i in feats.ids if feats.ids.count(i) > 1})
        if len(set(feats.ids)) != len(feats.ids)
        else []
    )
    if duplicates:
        raise ImportFeaturesError(
            f"{ids_from or path}: duplicate video ids {duplicates[:5]}; ids must be unique"
        )
    if subset and any(v is not None for v in subset.values()):
        feats = select_rows(feats, **subset)
    bad = ~np.isfinite(feats.values)
    if bad.any():
        if nan == "error":
            rows = sorted(set(np.nonzero(bad)[0].tolist()))
            if feats.rows is not None:  # rows of the file, not of the kept subset
                rows = [int(feats.rows[r]) for r in rows]
            raise ImportFeaturesError(
                f"{path}: {int(bad.sum())} NaN/Inf values in rows {rows[:10]}; fix the file or "
                "pass --nan zero to replace them by 0"
            )
        feats.values = np.where(bad, 0.0, feats.values)
        feats.replaced_nonfinite = int(bad.sum())
    return feats


def read_id_list(path: str | Path) -> list[str]:
    """Video ids from a text file: one per line; blank lines and ``#`` comments ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as err:
        raise ImportFeaturesError(f"{path}: no such id list") from err
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def parse_rows(text: str | Iterable[int] | None, what: str) -> list[int] | None:
    """1-based row numbers: "3,6,10", a file of such numbers (commas / whitespace / lines;
    ``#`` comments ignored), or a list of ints. A bad entry is named with the file's name
    and line (not the file's contents)."""
    if text is None:
        return None
    if not isinstance(text, str):
        return [int(r) for r in text]
    source = Path(text) if Path(text).is_file() else None
    lines = (
        [line.split("#", 1)[0] for line in source.read_text(encoding="utf-8-sig").splitlines()]
        if source is not None
        else [text]
    )
    rows = []
    for number, line in enumerate(lines, start=1):
        for token in line.replace(",", " ").split():
            try:
                rows.append(int(token))
            except ValueError as err:
                where = f"{source}, line {number}" if source is not None else repr(text[:60])
                raise ImportFeaturesError(
                    f"{what} {where}: {token!r} is not a 1-based row number; give numbers "
                    "separated by commas, spaces or lines (e.g. 3,6,10)"
                ) from err
    return rows


def select_rows(
    feats: ForeignFeatures,
    *,
    keep_ids: Iterable[str] | None = None,
    drop_ids: Iterable[str] | None = None,
    keep_rows: Iterable[int] | None = None,
    drop_rows: Iterable[int] | None = None,
) -> ForeignFeatures:
    """Keep the rows the lists allow (row numbers are 1-based, of the feature file); ids or
    row numbers that are not in the file are an error, so a list for another file is caught."""
    n = len(feats.ids)
    keep = np.ones(n, dtype=bool)
    position = {vid: i for i, vid in enumerate(feats.ids)}
    for ids, wanted in ((keep_ids, True), (drop_ids, False)):
        if ids is None:
            continue
        ids = list(ids)
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise ImportFeaturesError(
                f"{len(unknown)} id(s) of the {'keep' if wanted else 'drop'} list are not in the "
                f"file (first: {unknown[:5]}); the list must name ids of this file's --id-column"
            )
        listed = np.zeros(n, dtype=bool)
        listed[[position[i] for i in ids]] = True
        keep &= listed if wanted else ~listed
    for rows, wanted in ((keep_rows, True), (drop_rows, False)):
        if rows is None:
            continue
        rows = list(rows)
        bad = [r for r in rows if not 1 <= r <= n]
        if bad:
            raise ImportFeaturesError(
                f"row numbers {bad[:5]} are outside 1..{n} (rows are 1-based)"
            )
        listed = np.zeros(n, dtype=bool)
        listed[np.asarray(rows, dtype=int) - 1] = True
        keep &= listed if wanted else ~listed
    if not keep.any():
        raise ImportFeaturesError("the keep / drop lists leave no row to import")
    index = np.flatnonzero(keep)
    feats.rows = (np.arange(n) if feats.rows is None else feats.rows)[index]
    feats.dropped += int(n - index.size)
    feats.ids = [feats.ids[i] for i in index]
    feats.values = feats.values[index]
    feats.labels = {k: v[index] for k, v in feats.labels.items()}
    feats.groups = {k: [v[i] for i in index] for k, v in feats.groups.items()}
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
    dropped: int = 0

    def summary(self) -> str:
        text = (
            f"imported {self.rows} videos x {self.steps} step(s) x {self.dim} features into group "
            f"{self.group!r} of {self.cache}"
        )
        if self.labels:
            text += f"; labels: {', '.join(self.labels)}"
        if self.dropped:
            text += f"; {self.dropped} rows left out by the keep/drop lists"
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
    label_columns: Iterable[str] | Mapping[str, str] = (),
    group_columns: list[str] = (),
    nan: str = "zero",
    dtype: str = "float32",
    overwrite: bool = False,
    keep_ids: Iterable[str] | None = None,
    drop_ids: Iterable[str] | None = None,
    keep_rows: Iterable[int] | None = None,
    drop_rows: Iterable[int] | None = None,
) -> ImportReport:
    """Import a foreign feature file into cache group ``group`` (see the module docstring).

    Labels, groups and each video's ``source_order`` go to the cache's videos table. A video
    the cache already knows keeps its path, prompt and other labels: imported labels are
    added to them.
    Re-importing the same file is a no-op (ids already cached are skipped) unless
    ``overwrite``; importing a *different* file into an existing group is refused by the
    cache (its provenance differs) unless ``overwrite``.
    """
    from aigvqa.cache import FeatureCache, GroupData, merge_shards, write_shard

    cache = Path(cache)
    feats = load_foreign_features(
        file,
        variable=variable,
        ids_from=ids_from,
        id_column=id_column,
        feature_columns=feature_columns,
        label_columns=label_columns if isinstance(label_columns, Mapping) else list(label_columns),
        group_columns=list(group_columns),
        nan=nan,
        subset={
            "keep_ids": keep_ids,
            "drop_ids": drop_ids,
            "keep_rows": keep_rows,
            "drop_rows": drop_rows,
        },
    )
    rows = np.arange(len(feats.ids)) if feats.rows is None else feats.rows
    known = {v["video_id"]: v for v in FeatureCache(cache).videos()} if cache.exists() else {}
    videos = []
    for i, vid in enumerate(feats.ids):
        row = dict(known.get(vid, {"video_id": vid}))
        labels = dict(row.get("labels", {}))
        labels.update({k: float(v[i]) for k, v in feats.labels.items() if np.isfinite(v[i])})
        groups = dict(row.get("groups", {}))
        groups.update({k: v[i] for k, v in feats.groups.items()})
        row.update(labels=labels, groups=groups, source_order=int(rows[i]))
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
    return ImportReport(
        cache,
        group,
        len(feats.ids),
        feats.values.shape[2],
        feats.values.shape[1],
        sorted(feats.labels),
        feats.replaced_nonfinite,
        merge,
        feats.dropped,
    )
