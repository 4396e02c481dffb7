"""Reading a user's file (CSV, Parquet, JSON lines) into columns and the row numbers a user sees, before any
rule is checked. Two readers: `read_fast` (polars; CSV with the value columns parsed as numbers by the reader,
Parquet with its types) for the common file, which declines (None) anything unusual in its shape, and
`read_user_file` (pandas' CSV reader, pyarrow, `json`), which takes every file, names what makes a file
unreadable, and keeps the rows and values exactly as the user wrote them (blank lines, padding, short rows),
so its words are the ones a user is shown. Both give polars columns of text, numbers, booleans and datetimes;
`rules.check_columns` checks either the same way.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq

from nq_dagster.ingest.errors import BadRow, FileRejected
from nq_dagster.ingest.limits import IngestLimits, check_columns_count

TIMESTAMP_NAMES = ("timestamp", "time", "ts", "datetime", "date")
SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


# names the store gives its own columns of raw_ticks (and the rules their row numbers): a value column so
# named would be overwritten or break the write
RESERVED_NAMES = ("file", "content_hash", "_row")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# a number whose exponent is -308 or below can round to 0.0 (1e-400): such text is read by the general reader,
# whose text the rules check
UNDERFLOW_SHAPE = re.compile(rb"[eE]-0*[1-9][0-9]{2}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


@dataclass(frozen=True)
class ReadOptions:
    """How a user says to read a file (`nq ingest`'s options): the CSV field delimiter, a strftime format for
    the timestamps, the time zone of naive timestamps (default UTC), the column to predict (stored as
    `value`)."""

    delimiter: str = ","
    timestamp_format: str | None = None
    timezone: str | None = None
    value_column: str | None = None


DEFAULT_OPTIONS = ReadOptions()


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


def read_fast(
    path: Path, data: bytes, options: ReadOptions = DEFAULT_OPTIONS, text_values: bool = True
) -> Columns | None:
    """CSV or Parquet read by polars, or None when the file is not plainly readable that way: a UTF-8
    byte-order mark, no rows, a reader error, column names that differ only in case or padding, a column
    type the rules do not take as it is, a source column that is not text (the general reader names it as
    pandas writes it). `text_values=False`: None too for a CSV whose value columns are not all numbers to
    the reader (the caller reads it with the general reader, without a second text copy held beside it)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind not in ("csv", "parquet") or not data or data.isspace() or data.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        if kind == "csv":
            frame = _read_csv_numbers_typed(data, options.delimiter, text_values)
        else:
            frame = pl.read_parquet(data)
    except Exception:  # noqa: BLE001 - any parse problem: the general reader says what and where
        return None
    if frame is None:
        return None
    if kind == "csv" and _may_underflow(frame, data):
        return None
    if frame.height == 0 or not distinct_names(frame.columns):
        return None
    if not all(_fast_dtype(t) for t in frame.dtypes):
        return None
    if any(c.lower().strip() == "source" and t != pl.String for c, t in frame.schema.items()):
        return None
    return Columns(frame, 2 if kind == "csv" else 1)


def _may_underflow(frame: pl.DataFrame, data: bytes) -> bool:
    """A number column read as floats holds a 0.0 and the file has a number with a 3-digit negative exponent:
    it may be 1e-400 read as 0 (the reader's floats no longer say), so the general reader's text decides."""
    zeros = [c for c, t in frame.schema.items() if t.is_float() and (frame[c] == 0.0).any()]
    return bool(zeros) and UNDERFLOW_SHAPE.search(data) is not None


def _read_csv_numbers_typed(data: bytes, sep: str = ",", text_values: bool = True) -> pl.DataFrame | None:
    """The CSV with every column that can only be a value (not a timestamp or source name) parsed as
    numbers by the reader itself (a separate string-to-number cast doubled that column's cost); a value the
    reader does not take as a number: every column as text, and the rules find it. (The bytes go to polars
    as they are: through io.BytesIO they were copied first.)"""
    header = pl.read_csv(data, n_rows=0, infer_schema=False, separator=sep).columns
    numbers = {c: pl.Float64 for c in header if c.lower().strip() not in (*TIMESTAMP_NAMES, "source")}
    numbers.update(_epoch_timestamp_column(data, header, sep))
    try:
        return pl.read_csv(data, infer_schema=False, schema_overrides=numbers, separator=sep)
    except pl.exceptions.PolarsError:
        if not text_values:
            return None
        return pl.read_csv(data, infer_schema=False, separator=sep)


_EPOCH_TEXT = re.compile(r"-?[0-9]{1,13}(?:\.[0-9]*)?")


def _epoch_timestamp_column(data: bytes, header: list[str], sep: str) -> dict[str, pl.DataType]:
    """{the timestamp column: Float64} when the first row's timestamp is a plain epoch number, else {}: the
    reader then parses the column as numbers (8 bytes a row, where text held 16 or more and its parse made
    a stripped copy; ~25% of a good file's peak). `parse_timestamps` reads numbers as the same epoch values;
    a later row that is not a number fails the typed read, and the general reader decides."""
    names = [c.lower().strip() for c in header]
    at = next((names.index(n) for n in TIMESTAMP_NAMES if n in names), None)
    start = data.find(b"\n") + 1
    end = data.find(b"\n", start)
    if at is None or start == 0:
        return {}
    line = data[start : end if end != -1 else len(data)].decode("utf-8", "replace").rstrip("\r")
    fields = next(csv.reader([line], delimiter=sep), [])
    if at < len(fields) and _EPOCH_TEXT.fullmatch(fields[at]):
        return {header[at]: pl.Float64}
    return {}


# values per chunk of the general CSV reader: a chunk's Python strings (~60 bytes each) are held at once;
# 2**16 was faster than 2**19 too (0.27 s vs 0.34 s for a 20 MiB file) and left 91 MiB resident, not 119
CSV_CHUNK_VALUES = 1 << 16


def _next_chunk(reader, size: int) -> pd.DataFrame | None:
    try:
        return reader.get_chunk(size)
    except StopIteration:
        return None


def _row_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def from_pandas(frame: pd.DataFrame) -> pl.DataFrame:
    """pandas' columns as the rules take them: numbers as floats, booleans, datetimes, anything else as text
    (`astype("string")`, a missing value null; Arrow-backed text as it is)."""
    out = {}
    for name in list(frame.columns):
        col = frame.pop(name)  # (each column's Python objects freed once converted, not held to the end)
        if pd.api.types.is_bool_dtype(col):
            out[name] = pl.Series(col.to_numpy(dtype=bool))
        elif pd.api.types.is_numeric_dtype(col):
            out[name] = pl.Series(pd.to_numeric(col, errors="coerce").to_numpy(dtype=float))
        elif pd.api.types.is_datetime64_any_dtype(col):
            out[name] = pl.from_pandas(col)
        elif isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "pyarrow":
            # the CSV reader's text (pandas 3's `str`) is Arrow already: taken as it is (`astype("string")`
            # would make a Python object of every value)
            out[name] = pl.from_pandas(col).cast(pl.String)
        else:
            out[name] = pl.from_pandas(col.astype("string")).cast(pl.String)
    return pl.DataFrame(out)


def check_names(path: Path, names: list[str], limits: IngestLimits) -> None:
    """A file's column names as written: not too many, no control character (a NUL in a name breaks the
    columnar libraries), none repeated once trimmed and lower-cased (`value,Value` would be stored as two
    columns, or one renamed behind the user's back), none of the store's own (`RESERVED_NAMES`)."""
    check_columns_count(path, len(names), limits)
    for n in names:
        if _CONTROL.search(n):
            raise FileRejected(path, "column_name", column=n)
    seen: dict[str, str] = {}
    repeated = []
    for n in names:
        key = n.strip().lower()
        if key in seen:
            repeated.append(f"{seen[key]!r} and {n!r}")
        seen.setdefault(key, n)
    if repeated:
        raise FileRejected(path, "duplicate_columns", names=", ".join(repeated[:5]))
    for n in names:
        if n.strip().lower() in RESERVED_NAMES:
            raise FileRejected(path, "reserved", column=n, reserved=", ".join(RESERVED_NAMES))


def csv_header(path: Path, data: bytes, options: ReadOptions) -> list[str] | None:
    """The names of a CSV file's header line as written (the readers rename repeated names), None when the
    line is not UTF-8 (the general reader names the byte). One column whose name holds a `;`, tab or `|`
    while the delimiter is the default comma is a file in another dialect: refused with the hint."""
    line = data[: data.find(b"\n")] if b"\n" in data else data
    try:
        text = line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        return None
    names = next(csv.reader([text], delimiter=options.delimiter), [])
    if len(names) == 1 and options.delimiter == ",":
        for sep, name in DELIMITERS.items():
            if sep in names[0]:
                shown = "'\\t'" if sep == "\t" else repr(sep)
                raise FileRejected(path, "delimiter", header=names[0][:80], name=name, shown=shown)
    return [n.strip() if options.delimiter == "," else n for n in names]


class _JsonRowProblem(ValueError):
    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are distinct: `{"value": 1, "value": 999}` is refused, never the last kept."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _JsonRowProblem(f"key {key!r} appears twice in one object", "write each key once per object")
    return out


def _float_or_text(text: str) -> float | str:
    """A JSON number as a float, or as its text when it rounds to 0.0 but is not 0 (1e-400): the rules then
    refuse it by row and column with the value as written."""
    x = float(text)
    if x == 0.0 and re.search(r"[1-9]", text.split("e")[0].split("E")[0]):
        return text
    return x


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_DECODER_EXACT = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_float_or_text)


def _json_line(line: str, exact: bool):
    """One line's JSON value; every way Python's reader fails (nesting too deep, an integer of thousands of
    digits, repeated keys, a lone surrogate) is a `_JsonRowProblem` or a JSONDecodeError."""
    try:
        rec = (_DECODER_EXACT if exact else _DECODER).decode(line)
    except RecursionError:
        raise _JsonRowProblem(
            "nested too deep for the JSON reader", "write one flat JSON object per line"
        ) from None
    except json.JSONDecodeError:
        raise
    except _JsonRowProblem:
        raise
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise _JsonRowProblem(
            f"a number that cannot be read ({str(exc)[:80]})",
            "write it as a decimal with an exponent (1.5e30)",
        ) from None
    if _SURROGATE_ESCAPE.search(line):
        try:
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _JsonRowProblem(
                "a lone UTF-16 surrogate escape (\\uD800-\\uDFFF), which UTF-8 text cannot hold",
                "write the character itself, or a complete surrogate pair",
            ) from None
    return rec


def csv_chunks(path: Path, data: bytes, options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[Columns]:
    """A CSV file (valid UTF-8: `read_user_file` checks it) read by the general reader as polars text, in
    chunks of ~CSV_CHUNK_VALUES values, each with the row number of its first row: the parser makes a Python
    object of every value before its Arrow text, so one chunk's objects are alive at a time (the whole file
    at once left 141 MiB resident for a 20 MiB file), and a caller that checks each chunk before the next
    holds one chunk's text at a time. The same parser over the same stream, so the same values, errors and
    row numbers as one read."""
    try:
        reader = pd.read_csv(
            io.BytesIO(data),
            encoding="utf-8-sig",
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            sep=options.delimiter,
            iterator=True,
        )
        first = reader.get_chunk(1024)
        if not isinstance(first.index, pd.RangeIndex):
            # pandas took the first column as an index: the first data row has more fields than the header
            n = len(first.columns)
            extra = BadRow(2, "*", "fields", str(first.index[0]), fields=n)
            raise FileRejected(path, "extra_fields", [extra], row=2, fields=n)
        size = max(1024, CSV_CHUNK_VALUES // max(1, len(first.columns)))
        row = 2 + len(first)
        columns = Columns(from_pandas(first), 2)
        del first  # (each chunk's pandas objects freed before the caller checks its text)
        yield columns
        del columns
        while (chunk := _next_chunk(reader, size)) is not None:
            n = len(chunk)
            columns = Columns(from_pandas(chunk), row)
            del chunk
            yield columns
            del columns
            row += n
    except pd.errors.ParserError as exc:
        raise FileRejected(path, "malformed_csv", error=exc) from exc
    except pd.errors.EmptyDataError as exc:
        raise FileRejected(path, "empty") from exc


def csv_texts(path: Path, data: bytes, options: ReadOptions, column: str, at: set[int]) -> dict[int, str]:
    """The text of one column of a CSV file at some rows (row numbers as `csv_chunks` gives them), as the
    general reader reads it: the values a message shows for rows whose checked columns no longer hold it."""
    out: dict[int, str] = {}
    for columns in csv_chunks(path, data, options):
        start = int(columns.rows)
        for r in sorted(x for x in at if start <= x < start + columns.frame.height):
            out[r] = columns.frame[column][r - start]
        if len(out) == len(at):
            break
    return out


UTF8_BLOCK = 1 << 20


def check_utf8(path: Path, data: bytes) -> None:
    """The bytes are UTF-8 text, else refused naming the row and byte: checked in blocks of UTF8_BLOCK (a
    decoded copy of the whole file was as big as the file, or 4x), the file decoded whole only to word the
    refusal."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for lo in range(0, len(data), UTF8_BLOCK):
            decoder.decode(data[lo : lo + UTF8_BLOCK], final=lo + UTF8_BLOCK >= len(data))
        return
    except UnicodeDecodeError:
        pass
    try:
        data.decode("utf-8-sig")
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


def read_user_file(
    path: Path, data: bytes, options: ReadOptions = DEFAULT_OPTIONS, limits: IngestLimits | None = None
) -> Columns:
    """Any supported file as its columns and row numbers; a file that cannot be read is refused with the
    reason, the row and the fix (FileRejected)."""
    limits = limits or IngestLimits()
    kind = _kind(path)
    if not data or data.isspace():  # (strip() would copy the file)
        raise FileRejected(path, "empty")
    if kind == "parquet":
        try:
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise FileRejected(path, "parquet", error=exc) from exc
        return Columns(from_pandas(frame), 1)
    check_utf8(path, data)
    text = data.decode("utf-8-sig")
    if kind == "csv":
        del text  # (the parser reads the bytes: a StringIO of the text held 4 bytes a character)
        parts = [c.frame for c in csv_chunks(path, data, options)]
        return Columns(pl.concat(parts, how="vertical", rechunk=False) if len(parts) > 1 else parts[0], 2)
    records, lines = [], []
    exact = UNDERFLOW_SHAPE.search(data) is not None
    keys: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = _json_line(line, exact)
        except json.JSONDecodeError as exc:
            raise FileRejected(
                path, "json", [BadRow(lineno, "*", "json", line[:40])], row=lineno, error=exc.msg
            ) from exc
        except _JsonRowProblem as exc:
            raise FileRejected(
                path,
                "json_row",
                [BadRow(lineno, "*", "json", line[:40])],
                row=lineno,
                problem=exc.problem,
                fix=exc.fix,
            ) from None
        if not isinstance(rec, dict):
            raise FileRejected(path, "not_object", row=lineno, got=type(rec).__name__)
        if len(keys) <= limits.max_columns:  # (the union of keys: a column per key)
            keys.update(dict.fromkeys(rec))
        records.append(rec)
        lines.append(lineno)
    check_names(path, list(keys), limits)
    return Columns(from_pandas(pd.DataFrame.from_records(records)), np.asarray(lines, dtype=np.int64))


def renamed_columns(
    path: Path, columns: list[str], rename: dict[str, str] | None, value_column: str | None = None
) -> dict[str, str]:
    """The column mapping of `--rename old=new` and `--value-column NAME` (NAME stored as `value`) for a
    file's columns (names compared trimmed, case-insensitive); a name the file does not have is an error
    naming what it has, and so is a new name that another column keeps (`--rename value=timestamp`) or that
    the store keeps for itself."""
    rename = dict(rename or {})
    by_key = {c.strip().lower(): c for c in columns}
    if value_column is not None:
        if value_column.strip().lower() not in by_key:
            raise FileRejected(path, "no_value_column", column=value_column, columns=list(columns))
        if value_column.strip().lower() != "value":
            rename[value_column] = "value"
    if not rename:
        return {}
    out = {}
    for old, new in rename.items():
        col = by_key.get(old.strip().lower())
        if col is None:
            raise FileRejected(path, "rename", old=old, new=new, columns=list(columns))
        out[col] = new.strip()
    if any(new.lower() in RESERVED_NAMES for new in out.values()):
        new = next(n for n in out.values() if n.lower() in RESERVED_NAMES)
        raise FileRejected(path, "reserved", column=new, reserved=", ".join(RESERVED_NAMES))
    kept = {c.strip().lower(): c for c in columns if c not in out}
    targets: dict[str, str] = {}
    for old, new in out.items():
        key = new.lower()
        if key in kept or key in targets:
            existing = kept.get(key) or targets[key]
            raise FileRejected(path, "rename_clash", old=old, new=new, existing=existing)
        targets[key] = old
    return out
