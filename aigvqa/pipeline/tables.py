"""Tables written as CSV, JSON Lines or Parquet: what ``aigvqa score --out`` and the tables
of ``aigvqa dump --format csv / jsonl / parquet`` share.

The three hold the same columns in the same order and the same values:

- CSV: a header line, then one line per row; an empty cell where a value is missing.
- JSONL: one JSON object per line, its keys the CSV's columns in order. Numbers are written
  with the CSV's text (the shortest that reads back as the same number in its own dtype),
  ``null`` where the CSV cell is empty and where a number is not finite (JSON has no NaN or
  infinity: pandas reads either back as NaN). Written as ASCII (non-ASCII characters
  escaped), so a line torn by a kill can never end in half a UTF-8 character. (pandas'
  ``read_json`` guesses column types: ids that look like numbers, "0001", need
  ``dtype={"video_id": str}``.)
- Parquet: needs pyarrow, an optional dependency (``pip install pyarrow``, or the
  ``aigvqa[parquet]`` extra). Typed columns: text as strings, numbers in their own float
  dtype (float16 widened to float32, which holds it exactly: not every Parquet reader
  takes float16), missing values null.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aigvqa.cache.files import publish

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


def table_format(path: Path, error: type[Exception], option: str = "--out") -> str:
    """The format ``path``'s suffix (any case) names: "csv", "jsonl" or "parquet"; raises
    ``error`` naming the file and the suffixes accepted otherwise."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        has = f"the suffix {suffix!r}" if suffix else "no suffix"
        raise error(
            f"{option} {path} has {has}, which names no output format: give another "
            f"{option} ending in {', '.join(TABLE_SUFFIXES)} (the suffix picks the format)"
        )
    return suffix[1:]


def import_pyarrow(path: Path, error: type[Exception]):
    """(pyarrow, pyarrow.parquet), or ``error`` saying how to install it: called before
    anything is written, so a run never works for hours and then cannot write its output."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise error(
            f"writing {path} as Parquet needs pyarrow, which is not installed ({err}): "
            "pip install pyarrow (or pip install 'aigvqa[parquet]'), or write a .csv or "
            ".jsonl file instead"
        ) from None
    return pyarrow, pyarrow.parquet


def number_text(x) -> str:
    """The shortest text that reads back as the same number in its own dtype (float16,
    float32 or float64 alike)."""
    if isinstance(x, np.floating):
        return (
            np.format_float_positional(x, unique=True, trim="-")
            if np.isfinite(x)
            else str(float(x))
        )
    return repr(float(x))


def json_value(value: Any) -> str:
    """``value`` as JSON text: numbers as ``number_text`` writes them (null when not finite),
    None as null, anything else that is not a bool or a number as a string."""
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return number_text(value) if math.isfinite(float(value)) else "null"
    return json.dumps(value if isinstance(value, str) else str(value))


def json_line(row: dict[str, Any]) -> str:
    """One JSON object on one line, keys in ``row``'s order, newline included."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json_value(v)}" for k, v in row.items()) + "}\n"


# -- writing a table chunk by chunk -------------------------------------------------------
# A chunk is given as columns, each (values, present): values a 1-D numpy array or a list of
# Python values (None: missing), present a bool array (False: missing) or None (all there).


class TableWriter:
    """Writes a table of ``header`` to ``path`` in ``fmt`` ("csv", "jsonl" or "parquet"),
    one ``write(columns)`` chunk at a time, so memory holds one chunk.

    CSV and JSONL are written in place, as the CSV always was. Parquet goes to a hidden
    ``.<name>.tmp`` beside it, one row group per chunk, and is renamed over ``path`` only
    by a successful ``close``: an interrupted write leaves no corrupt Parquet file. Column
    types come from the first chunk (a numpy column its dtype, a list what pyarrow infers,
    text where every value is missing); write one empty chunk for a table without rows.
    """

    def __init__(self, path: Path, fmt: str, header: Sequence[str], error: type[Exception]):
        self.path, self.fmt, self.header = Path(path), fmt, list(header)
        self.fh = None
        self.parquet = None
        if fmt == "parquet":
            self.pa, self.pq = import_pyarrow(self.path, error)
            self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        else:
            self.fh = open(self.path, "w", newline="", encoding="utf-8")
            if fmt == "csv":
                self.csv = csv.writer(self.fh)
                self.csv.writerow(self.header)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, columns: Sequence[tuple[Any, Any]]) -> None:
        if len(columns) != len(self.header):
            raise ValueError(f"{len(columns)} columns given for a header of {len(self.header)}")
        if self.fmt == "parquet":
            self._write_parquet(columns)
            return
        cells = [_cells(values, present, self.fmt) for values, present in columns]
        if self.fmt == "csv":
            self.csv.writerows(zip(*cells))
        else:
            keys = [json.dumps(k) for k in self.header]
            self.fh.write(
                "".join(
                    "{" + ", ".join(f"{k}: {v}" for k, v in zip(keys, row)) + "}\n"
                    for row in zip(*cells)
                )
            )

    def _write_parquet(self, columns: Sequence[tuple[Any, Any]]) -> None:
        pa = self.pa
        if self.parquet is None:  # the first chunk sets the column types
            arrays = [_arrow(pa, values, present) for values, present in columns]
            arrays = [a.cast(pa.string()) if a.type == pa.null() else a for a in arrays]
            self.schema = pa.schema(list(zip(self.header, (a.type for a in arrays))))
            self.parquet = self.pq.ParquetWriter(self.tmp, self.schema)
        else:
            arrays = [
                _arrow(pa, values, present, field.type)
                for (values, present), field in zip(columns, self.schema)
            ]
        self.parquet.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            return
        if self.parquet is None:  # no chunk: an empty table of text columns
            self._write_parquet([([], None)] * len(self.header))
        self.parquet.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        """Close after a failure: CSV and JSONL keep what was written, Parquet's temporary
        file is removed (``path`` keeps whatever it held before)."""
        if self.fh is not None:
            self.fh.close()
            return
        if self.parquet is not None:
            with contextlib.suppress(OSError):
                self.parquet.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _cells(values, present, fmt: str) -> list:
    """One column's cells as CSV (what csv.writer takes) or JSON text."""
    missing = "" if fmt == "csv" else "null"
    if present is None:
        present = [True] * len(values)
    if fmt == "csv":
        return [
            missing
            if not there or v is None
            else number_text(v)
            if isinstance(v, (float, np.floating))
            else v
            for v, there in zip(values, present)
        ]
    return [json_value(v) if there else missing for v, there in zip(values, present)]


def _arrow(pa, values, present, arrow_type=None):
    """A column as a pyarrow array: float16 widened to float32, missing cells null; a list
    whose values pyarrow cannot type alike (mixed kinds) becomes text."""
    if isinstance(values, np.ndarray):
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        mask = None if present is None else ~np.asarray(present, dtype=bool)
        return pa.array(values, mask=mask, type=arrow_type)
    values = list(values)
    if present is not None:
        values = [v if there else None for v, there in zip(values, present)]
    try:
        return pa.array(values, type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if arrow_type is not None and arrow_type != pa.string():
            raise
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
