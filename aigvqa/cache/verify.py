"""Checking every byte of a cache file: what ``aigvqa info --verify`` runs.

``verify_file`` (``FeatureCache.verify``) reads every dataset in full, in blocks of about
``VERIFY_BLOCK_BYTES``: HDF5 checks the Fletcher-32 checksums as it reads; the sha256 of
every utf-8 dataset, the attribute digests and the structure are checked here. It never
raises for a damaged file: the ``VerifyReport`` lists each damaged part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from aigvqa.cache.access import (
    H5_ERRORS,
    check_group,
    file_format,
    group_meta,
    group_versions,
    open_h5,
    read_failures,
    read_videos,
)
from aigvqa.cache.schema import FAILURES, VIDEOS, read_attrs, read_str
from aigvqa.errors import CacheError

VERIFY_BLOCK_BYTES = 64 << 20  # ``verify`` reads big datasets in blocks of about this size


@dataclass
class VerifyReport:
    """What ``FeatureCache.verify`` found: ``problems`` empty means every byte checked out."""

    path: Path
    format_version: int | None = None
    checksums: bool = False  # the file carries checksums (format 2); False: values unverified
    datasets: int = 0  # datasets read in full
    problems: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # datasets read without a checksum
    # not damage, but what heads refuse and scoring marks failed: NaN / inf in valid steps
    nonfinite: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            head = f"{self.path}: DAMAGED: {len(self.problems)} problem(s)"
            lines = [head] + [f"  {p}" for p in self.problems]
            lines.append(
                "Restore the file from a copy, or re-create it (`aigvqa extract MANIFEST --cache "
                f"{self.path} --overwrite`, or into a new --cache file)."
            )
            return "\n".join(lines)
        if not self.checksums:
            return (
                f"{self.path}: readable, UNVERIFIED: format {self.format_version} was written "
                f"without checksums, so damaged values cannot be detected ({self.datasets} "
                "datasets read; the structure is sound). The next merge into it (any extract "
                "or import-features run) rewrites it with checksums."
            )
        text = f"{self.path}: OK: {self.datasets} datasets read in full, every checksum matches"
        if self.nonfinite:
            text += "; but some features hold NaN or inf (heads refuse those videos):"
            text += "".join(f"\n  {line}" for line in self.nonfinite)
        return text


def _read_blocks(ds: h5py.Dataset, inspect=None) -> int:
    """Read a dataset in full (in row blocks: bounded memory); return its element count.
    ``inspect(start, block)`` sees each block of rows as it is read."""
    if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype) is not None:
        return len(read_str(ds))
    if ds.shape is None or ds.ndim == 0:
        ds[()]
        return 1
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, VERIFY_BLOCK_BYTES // row_bytes)
    for start in range(0, ds.shape[0], step):
        block = ds[start : start + step]
        if inspect is not None:
            inspect(start, block)
    return int(ds.size)


def verify_file(path: str | Path) -> VerifyReport:
    """Read every dataset of the file in full and check it: Fletcher-32 checksums (HDF5
    verifies them on read), the sha256 of every utf-8 dataset, and the structure
    (equal row counts, unique ids, lengths in 1..T_max, parseable attributes). Never
    raises for a damaged file: the report lists each damaged part."""
    path = Path(path)
    report = VerifyReport(path)
    try:
        f = open_h5(path)
    except CacheError as err:
        report.problems.append(str(err))
        return report
    with f:
        try:
            report.format_version = file_format(f)
            names = list(f.keys())
        except H5_ERRORS as err:
            report.problems.append(
                f"the file's root group cannot be read ({type(err).__name__}: {err})"
            )
            return report
        report.checksums = report.format_version >= 2
        for name in names:
            _verify_group(f, name, path, report)
    return report


def _verify_group(f: h5py.File, name: str, path: Path, report: VerifyReport) -> None:
    try:
        g = f[name]
        keys = sorted(g.keys())
    except H5_ERRORS as err:
        report.problems.append(f"group {name!r} cannot be opened ({type(err).__name__}: {err})")
        return
    sound = True
    bad_rows: list[np.ndarray] = []
    inspect = None
    if name not in (VIDEOS, FAILURES) and {"values", "lengths", "ids"} <= set(keys):
        try:
            lengths = g["lengths"][()]
        except H5_ERRORS:
            lengths = None  # reported when the loop reads it
        if lengths is not None and g["values"].ndim == 3 and g["values"].dtype.kind == "f":

            def inspect(start, block):
                steps = np.arange(block.shape[1])[None, :]
                valid = steps < lengths[start : start + len(block), None]
                hit = ((~np.isfinite(block)).any(-1) & valid).any(1)
                bad_rows.append(start + np.flatnonzero(hit))

    for key in keys:
        try:
            ds = g[key]
            _read_blocks(ds, inspect if key == "values" else None)
            read_attrs(ds)
            report.datasets += 1
            if ds.dtype.kind not in "OSU" and not ds.fletcher32:
                report.unverified.append(f"{name}/{key}")
        except H5_ERRORS as err:
            sound = False
            report.problems.append(f"{name}/{key}: cannot be read ({type(err).__name__}: {err})")
    if not sound:
        return
    rows = np.concatenate(bad_rows) if bad_rows else np.zeros(0, dtype=np.int64)
    if rows.size:
        ids = read_str(g["ids"])
        shown = ", ".join(str(ids[i]) for i in rows[:5]) + (" ..." if rows.size > 5 else "")
        report.nonfinite.append(
            f"group {name!r}: NaN or inf in {rows.size} of {len(ids)} rows ({shown})"
        )
    try:
        read_attrs(g)
        if name == VIDEOS:
            read_videos(f)
        elif name == FAILURES:
            read_failures(f)
        else:
            group_meta(g)
            group_versions(g)
            check_group(g, name, path)
    except CacheError as err:
        report.problems.append(str(err))
    except H5_ERRORS as err:
        report.problems.append(f"group {name!r}: {type(err).__name__}: {err}")
