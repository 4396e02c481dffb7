"""Reading a user's file (CSV, Parquet, JSON lines) into columns and the row numbers a user sees, before any
rule is checked. Two readers: `read_fast` (polars; CSV with the value columns parsed as numbers by the reader,
Parquet with its types) for the common file, which declines (None) anything unusual in its shape, and
`read_user_file` (pandas' CSV reader, pyarrow, `json`), which takes every file, names what makes a file
unreadable, and keeps the rows and values exactly as the user wrote them (blank lines, padding, short rows),
so its words are the ones a user is shown. Both give polars columns of text, numbers, booleans and datetimes;
`rules.check_columns` checks either the same way.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from nq_dagster.ingest.errors import BadRow, FileRejected

TIMESTAMP_NAMES = ("timestamp", "time", "ts", "datetime", "date")
SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


@dataclass
class Columns:
    """A file's columns as read, and its rows' numbers: `rows` is the number of the first row when the rows
    follow one another (CSV: 2, the header being line 1; Parquet: 1), else each row's number (JSON lines,
    whose blank lines are skipped; the server's ticks)."""

    frame: pl.DataFrame
    rows: int | np.ndarray


def _kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileRejected(path, "unsupported", suffix=path.suffix)
    return kind


def distinct_names(columns: list[str]) -> bool:
    """No two column names equal once trimmed and lower-cased (the rules find columns by such names)."""
    return len({c.lower().strip() for c in columns}) == len(columns)


def _fast_dtype(dtype: pl.DataType) -> bool:
    return dtype == pl.String or dtype == pl.Datetime or dtype == pl.Date or dtype.is_numeric()


def read_fast(path: Path, data: bytes) -> Columns | None:
    """CSV or Parquet read by polars, or None when the file is not plainly readable that way: a UTF-8
    byte-order mark, no rows, a reader error, column names that differ only in case or padding, a column
    type the rules do not take as it is, a source column that is not text (the general reader names it as
    pandas writes it)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind not in ("csv", "parquet") or not data or data.isspace() or data.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        frame = _read_csv_numbers_typed(data) if kind == "csv" else pl.read_parquet(data)
    except Exception:  # noqa: BLE001 - any parse problem: the general reader says what and where
        return None
    if frame.height == 0 or not distinct_names(frame.columns):
        return None
    if not all(_fast_dtype(t) for t in frame.dtypes):
        return None
    if any(c.lower().strip() == "source" and t != pl.String for c, t in frame.schema.items()):
        return None
    return Columns(frame, 2 if kind == "csv" else 1)


def _read_csv_numbers_typed(data: bytes) -> pl.DataFrame:
    """The CSV with every column that can only be a value (not a timestamp or source name) parsed as
    numbers by the reader itself (a separate string-to-number cast doubled that column's cost); a value the
    reader does not take as a number: every column as text, and the rules find it. (The bytes go to polars
    as they are: through io.BytesIO they were copied first.)"""
    header = pl.read_csv(data, n_rows=0, infer_schema=False).columns
    numbers = {c: pl.Float64 for c in header if c.lower().strip() not in (*TIMESTAMP_NAMES, "source")}
    try:
        return pl.read_csv(data, infer_schema=False, schema_overrides=numbers)
    except pl.exceptions.PolarsError:
        return pl.read_csv(data, infer_schema=False)


def _row_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def from_pandas(frame: pd.DataFrame) -> pl.DataFrame:
    """pandas' columns as the rules take them: numbers as floats, booleans, datetimes, anything else as text
    (`astype("string")`, a missing value null)."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_bool_dtype(col):
            out[name] = pl.Series(col.to_numpy(dtype=bool))
        elif pd.api.types.is_numeric_dtype(col):
            out[name] = pl.Series(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float))
        elif pd.api.types.is_datetime64_any_dtype(col):
            out[name] = pl.from_pandas(col)
        else:
            out[name] = pl.from_pandas(col.astype("string")).cast(pl.String)
    return pl.DataFrame(out)


def read_user_file(path: Path, data: bytes) -> Columns:
    """Any supported file as its columns and row numbers; a file that cannot be read is refused with the
    reason, the row and the fix (FileRejected)."""
    kind = _kind(path)
    if not data.strip():
        raise FileRejected(path, "empty")
    if kind == "parquet":
        try:
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise FileRejected(path, "parquet", error=exc) from exc
        return Columns(from_pandas(frame), 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = _row_of_offset(data, exc.start)
        shown = repr(data[exc.start : exc.start + 4])
        raise FileRejected(
            path,
            "encoding",
            [BadRow(row, "*", "encoding", shown)],
            row=row,
            byte=exc.start,
            reason=exc.reason,
        ) from exc
    if kind == "csv":
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
        except pd.errors.ParserError as exc:
            raise FileRejected(path, "malformed_csv", error=exc) from exc
        except pd.errors.EmptyDataError as exc:
            raise FileRejected(path, "empty") from exc
        if not isinstance(frame.index, pd.RangeIndex):
            # pandas took the first column as an index: the first data row has more fields than the header
            n = len(frame.columns)
            extra = BadRow(2, "*", "fields", str(frame.index[0]), fields=n)
            raise FileRejected(path, "extra_fields", [extra], row=2, fields=n)
        return Columns(from_pandas(frame), 2)
    records, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FileRejected(
                path, "json", [BadRow(lineno, "*", "json", line[:40])], row=lineno, error=exc.msg
            ) from exc
        if not isinstance(rec, dict):
            raise FileRejected(path, "not_object", row=lineno, got=type(rec).__name__)
        records.append(rec)
        lines.append(lineno)
    return Columns(from_pandas(pd.DataFrame.from_records(records)), np.asarray(lines, dtype=np.int64))


def renamed_columns(path: Path, columns: list[str], rename: dict[str, str] | None) -> dict[str, str]:
    """The column mapping of `--rename old=new` for a file's columns (names compared trimmed,
    case-insensitive); a name the file does not have is an error naming what it has."""
    if not rename:
        return {}
    by_key = {c.strip().lower(): c for c in columns}
    out = {}
    for old, new in rename.items():
        col = by_key.get(old.strip().lower())
        if col is None:
            raise FileRejected(path, "rename", old=old, new=new, columns=list(columns))
        out[col] = new.strip()
    return out
