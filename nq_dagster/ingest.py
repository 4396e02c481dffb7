"""Ingestion of user files (CSV, Parquet, JSON lines) into `raw_ticks`.

Every row is checked before anything is stored. A file with a bad row is
quarantined whole (copied or moved to `quarantine/` with a `.reason.txt` that
names the file, row, column and fix) unless `skip_bad_rows` is set, in which
case the good rows are stored and the bad ones recorded next to the file in
quarantine. Accepted rows are written as one Parquet part per (file, source),
named by the file's content hash, so re-ingesting the same bytes is a no-op and
a crash mid-way leaves nothing half-written.

Row numbers in messages are 1-based data rows as a user sees them: for CSV the
line number in the file (header = line 1), for JSON lines the line number, for
Parquet the row index + 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from nq_dagster.store import (
    INGEST_LOG_DDL,
    LIVE_PARTS,
    LOG_PARTITION,
    SOURCE_RE,
    Warehouse,
    atomic_write_bytes,
    check_source_name,
)

VALUE_SHOWN = 200  # characters of a bad value that a message shows
TIMESTAMP_NAMES = ("timestamp", "time", "ts", "datetime", "date")
PRIMARY_NAMES = ("value", "price", "close", "reading")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".json": "jsonl"}


@dataclass
class BadRow:
    row: int
    column: str
    value: str
    problem: str
    fix: str

    def __post_init__(self) -> None:
        # a value is shown, never stored whole in a message: a 5 MB field must not become a 5 MB line
        if len(self.value) > VALUE_SHOWN:
            self.value = f"{self.value[:VALUE_SHOWN]}... ({len(self.value):,} characters)"

    def describe(self, file: str) -> str:
        return f"{file}: row {self.row}, column {self.column!r}: {self.problem} (value {self.value!r}). Fix: {self.fix}"


@dataclass
class FileResult:
    file: str
    content_hash: str
    status: str  # ingested | skipped-duplicate-file | quarantined | ingested-with-bad-rows
    sources: dict[str, int] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def rows_accepted(self) -> int:
        return sum(self.sources.values())


class FileRejected(Exception):
    """The whole file is unusable (empty, unreadable, wrong encoding, missing columns) or has bad rows."""

    def __init__(self, message: str, bad_rows: list[BadRow] | None = None):
        super().__init__(message)
        self.bad_rows = bad_rows or []


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_stat = os.stat  # (a test replaces it)


def _file_digest(path: Path) -> str:
    """`content_hash` of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _row_of_offset(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_user_file(path: Path, data: bytes) -> tuple[pd.DataFrame, int]:
    """Parse bytes into a frame of strings (or typed Parquet columns); returns (frame, row offset).

    The row offset turns a 0-based frame index into the row number a user sees.
    """
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileRejected(f"{path}: unsupported file type {path.suffix!r}. Fix: use .csv, .parquet or .jsonl")
    if not data.strip():
        raise FileRejected(f"{path}: the file is empty. Fix: write a header and at least one data row")
    if kind == "parquet":
        try:
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise FileRejected(f"{path}: not a readable Parquet file ({exc}). Fix: re-export it as Parquet") from exc
        return frame, 1
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = _row_of_offset(data, exc.start)
        raise FileRejected(
            f"{path}: row {row}: byte {exc.start} is not UTF-8 ({exc.reason}). Fix: re-save the file as UTF-8",
            [BadRow(row, "*", repr(data[exc.start:exc.start + 4]), "not UTF-8", "re-save the file as UTF-8")],
        ) from exc
    if kind == "csv":
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
        except pd.errors.ParserError as exc:
            raise FileRejected(f"{path}: malformed CSV ({exc}). Fix: every line needs the header's number of fields") from exc
        except pd.errors.EmptyDataError as exc:
            raise FileRejected(f"{path}: the file is empty. Fix: write a header and at least one data row") from exc
        if not isinstance(frame.index, pd.RangeIndex):  # pandas took the first column as an index: the first data
            n = len(frame.columns)                      # row has more fields than the header
            raise FileRejected(f"{path}: row 2 has more fields than the header's {n}. Fix: every line needs the "
                               f"header's number of fields",
                               [BadRow(2, "*", str(frame.index[0]), f"more fields than the header's {n}",
                                       "every line needs the header's number of fields")])
        return frame, 2
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FileRejected(
                f"{path}: row {lineno}: not valid JSON ({exc.msg}). Fix: one JSON object per line",
                [BadRow(lineno, "*", line[:40], "not valid JSON", "one JSON object per line")],
            ) from exc
        if not isinstance(rec, dict):
            raise FileRejected(f"{path}: row {lineno}: expected a JSON object, got {type(rec).__name__}. Fix: one object per line")
        rec["__line"] = lineno
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    return frame, 0


def _parse_timestamps(col: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Parse ISO 8601 strings or epoch seconds / milliseconds into UTC; returns (parsed, ok mask)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, utc=True)
        return parsed, parsed.notna().to_numpy()
    as_str = col.astype("string").str.strip()
    numeric = pd.to_numeric(as_str, errors="coerce")
    is_num = numeric.notna().to_numpy()
    out = pd.Series(pd.NaT, index=col.index, dtype="datetime64[us, UTC]")
    if is_num.any():
        nums = numeric[is_num].astype(float)
        # epoch milliseconds from 1973 on are above 1e11; epoch seconds stay below it until the year 5138
        ms = nums.abs() >= 1e11
        secs = np.where(ms, nums / 1000.0, nums)
        bad_range = ~np.isfinite(secs) | (np.abs(secs) > 1e11)
        secs = np.where(bad_range, np.nan, secs)
        # whole microseconds (the column's unit): epoch milliseconds / 1000 are not exact in binary
        out[is_num] = pd.to_datetime(np.round(secs * 1e6), unit="us", utc=True, errors="coerce")
    if (~is_num).any():
        # stored in whole microseconds (a finer fraction is cut off)
        out[~is_num] = pd.to_datetime(as_str[~is_num], utc=True, errors="coerce", format="ISO8601").dt.as_unit("us")
    return out, out.notna().to_numpy()


def renamed_columns(path: Path, columns: list[str], rename: dict[str, str] | None) -> dict[str, str]:
    """The column mapping of `--rename old=new` for a file's columns (names compared trimmed, case-insensitive);
    a name the file does not have is an error naming what it has."""
    if not rename:
        return {}
    by_key = {c.strip().lower(): c for c in columns}
    out = {}
    for old, new in rename.items():
        col = by_key.get(old.strip().lower())
        if col is None:
            raise FileRejected(f"{path}: --rename {old}={new}: the file has no column {old!r}; its columns are "
                               f"{list(columns)}. Fix: name one of them")
        out[col] = new.strip()
    return out


def fast_read_validate(path: Path, data: bytes, source_override: str | None, rename: dict[str, str] | None = None
                       ) -> tuple[pl.DataFrame, list[BadRow], list[str]] | None:
    """The whole-file path of ingest, vectorised in polars: read, parse and check every rule of `validate_frame`
    (timestamps, numbers, NaN / infinity, source names, duplicate (source, timestamp)) over whole columns. When
    every row passes, returns what `validate_frame` returns for it (same rows, values and notes), as a polars
    frame that `Ingestor._store` writes through Arrow without a copy (a round trip through pandas cost 35-40 ms
    for a million rows); when anything is unusual (a bad row, an encoding, a shape or timestamp form it does not
    take) returns None, and the row-by-row path runs and names the file, row, column and fix. CSV and Parquet;
    JSON lines take the other path. (tests/test_ingest.py checks both paths give the same result on good files.)"""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind not in ("csv", "parquet") or not data or data.isspace() or data.startswith(b"\xef\xbb\xbf"):
        return None
    try:
        if kind == "csv":
            frame = _read_csv_numbers_typed(data)
            offset = 2
        else:
            frame = pl.read_parquet(data)
            offset = 1
    except Exception:  # noqa: BLE001 - any parse problem: the row-by-row path says what and where
        return None
    if frame.height == 0 or len(set(c.lower().strip() for c in frame.columns)) != frame.width:
        return None
    frame = frame.rename(renamed_columns(path, frame.columns, rename))
    if len(set(c.lower().strip() for c in frame.columns)) != frame.width:
        return None
    cols = {c.lower().strip(): c for c in frame.columns}
    ts_col = next((cols[n] for n in TIMESTAMP_NAMES if n in cols), None)
    src_col = cols.get("source")
    value_cols = [c for c in frame.columns if c not in (ts_col, src_col)]
    if ts_col is None or not value_cols:
        return None
    ts = _fast_timestamps(frame[ts_col])
    if ts is None:
        return None
    out = {"timestamp": ts}
    for c in value_cols:
        col = frame[c]
        if col.dtype == pl.String:
            as_float = col.cast(pl.Float64, strict=False)  # padded numbers ("  1.5") are rare: strip only then
            col = as_float if not as_float.null_count() else col.str.strip_chars().cast(pl.Float64, strict=False)
        elif col.dtype.is_numeric():
            col = col.cast(pl.Float64)
        else:
            return None
        if col.null_count() or not col.is_finite().all():
            return None
        out[c.strip()] = col
    notes = []
    single = None  # the one source of the file, when known without looking at its rows
    if source_override:
        single = source_override
        if src_col is not None:
            notes.append(f"--source {source_override!r} overrides the file's source column")
    elif src_col is not None:
        if frame[src_col].dtype != pl.String:
            return None
        sources = frame[src_col].str.strip_chars()
        if sources.null_count():
            return None
        names = sources.unique().to_list()
        if not all(SOURCE_RE.match(str(name)) for name in names):
            return None
        if len(names) == 1:
            single = names[0]
    else:
        single = path.stem
    if single is not None and not SOURCE_RE.match(single):
        return None
    in_order = bool((out["timestamp"].cast(pl.Int64).diff().drop_nulls() > 0).all())
    if single is not None and in_order:  # the common case, one source in strict order, is done: the source a
        # constant (a scalar column, not a million strings), the row numbers a range
        clean = pl.DataFrame(out).select(pl.lit(single, dtype=pl.String).alias("source"), pl.all(),
                                         pl.int_range(offset, offset + frame.height, dtype=pl.Int64).alias("_row"))
        return clean, [], notes
    if single is not None:
        sources = pl.repeat(single, frame.height, dtype=pl.String, eager=True)
    clean = pl.DataFrame({"source": sources, **out}).with_row_index("_row", offset=offset)
    in_order = clean.group_by("source").agg(pl.col("timestamp").is_sorted().alias("ok"))["ok"].all()
    clean = clean.sort(["source", "timestamp"], maintain_order=True)
    same = (clean["source"] == clean["source"].shift(1)) & (clean["timestamp"] == clean["timestamp"].shift(1))
    if same.any():  # a duplicate (source, timestamp): the other path names both rows
        return None
    if not in_order:
        notes.append("rows were out of time order and have been sorted")
    clean = clean.select(["source", "timestamp", *[c.strip() for c in value_cols], pl.col("_row").cast(pl.Int64)])
    return clean, [], notes


def _read_csv_numbers_typed(data: bytes):
    """The CSV with every column that can only be a value (not a timestamp or source name) parsed as numbers by
    the reader itself (a separate string-to-number cast doubled that column's cost); a value the reader does not
    take as a number: every column as text, and the checks below find it. (The bytes go to polars as they are:
    through io.BytesIO they were copied first, 13 ms for 37 MB.)"""
    header = pl.read_csv(data, n_rows=0, infer_schema=False).columns
    numbers = {c: pl.Float64 for c in header if c.lower().strip() not in (*TIMESTAMP_NAMES, "source")}
    try:
        return pl.read_csv(data, infer_schema=False, schema_overrides=numbers)
    except pl.exceptions.PolarsError:
        return pl.read_csv(data, infer_schema=False)


_ISO_PARTS = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:([T ])(\d{2}:\d{2})(:\d{2})?(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$")


def _fast_timestamps(col):
    """A timestamp column parsed as `_parse_timestamps` parses it, or None where it would take care the fast path
    does not: typed datetimes, ISO 8601 strings in one of `_ISO_EXTENDED`'s forms throughout, or epoch seconds /
    milliseconds as numbers."""
    if col.dtype == pl.Datetime:
        parsed = (col.dt.replace_time_zone("UTC") if col.dtype.time_zone is None else col.dt.convert_time_zone("UTC"))
        parsed = parsed.dt.cast_time_unit("us")
        return None if parsed.null_count() else parsed
    if col.dtype.is_numeric():
        nums = col.cast(pl.Float64)
    elif col.dtype == pl.String:
        if col.null_count():
            return None
        m = _ISO_PARTS.match(col[0].strip())
        if m:
            # one ISO 8601 shape throughout (same length as the first value: same fields, same fraction digits),
            # parsed with that exact format (no cache: every value differs); padded values are rare: stripped
            # only when a value does not parse; anything else takes the other path
            if m.group(5) and len(m.group(5)) > 7:
                return None
            lengths = col.str.len_bytes()
            if lengths.min() != lengths.max():
                col = col.str.strip_chars()
                lengths = col.str.len_bytes()
                if lengths.min() != lengths.max():
                    return None
            fmt = "%Y-%m-%d"
            if m.group(2):
                fmt += m.group(2) + "%H:%M" + (":%S" if m.group(4) else "") + ("%.f" if m.group(5) else "")
            zone = m.group(6)
            # in the lazy engine: it parses the reader's chunks on every core (the Series call ran on one:
            # 32 -> 18 ms for 1M values on 2 cores)
            if zone and zone != "Z":
                expr = pl.first().str.strptime(pl.Datetime("us"), fmt + "%:z", strict=False, cache=False)
                expr = expr.dt.convert_time_zone("UTC")
            else:
                expr = pl.first().str.strptime(pl.Datetime("us"), fmt + ("Z" if zone else ""), strict=False, cache=False)
                expr = expr.dt.replace_time_zone("UTC")
            parsed = col.to_frame().lazy().select(expr).collect().to_series()
            return None if parsed.null_count() else parsed
        col = col.str.strip_chars()
        nums = col.cast(pl.Float64, strict=False)
    else:
        return None
    if nums.null_count() or not nums.is_finite().all():
        return None
    x = nums.to_numpy()
    secs = np.where(np.abs(x) >= 1e11, x / 1000.0, x)  # the rule and arithmetic of `_parse_timestamps`
    if (np.abs(secs) > 1e11).any():
        return None
    return pl.Series(np.round(secs * 1e6).astype(np.int64)).cast(pl.Datetime("us", "UTC"))


def validate_frame(frame: pd.DataFrame, path: Path, row_offset: int, source_override: str | None
                   ) -> tuple[pd.DataFrame, list[BadRow], list[str]]:
    """Check every row; return (clean rows with source, timestamp, values), bad rows, notes."""
    notes: list[str] = []
    lines = frame.pop("__line").to_numpy() if "__line" in frame.columns else np.arange(len(frame)) + row_offset
    cols = {c.lower().strip(): c for c in frame.columns}
    if frame.empty:
        raise FileRejected(f"{path}: no data rows. Fix: add at least one row below the header")
    ts_col = next((cols[n] for n in TIMESTAMP_NAMES if n in cols), None)
    if ts_col is None:
        raise FileRejected(
            f"{path}: missing timestamp column; found columns {list(frame.columns)}. "
            f"Fix: name the time column one of {list(TIMESTAMP_NAMES)} (ISO 8601 or epoch seconds/milliseconds)"
        )
    src_col = cols.get("source")
    value_cols = [c for c in frame.columns if c not in (ts_col, src_col)]
    if not value_cols:
        raise FileRejected(f"{path}: no value columns besides {ts_col!r}. Fix: add at least one numeric column")
    bad: list[BadRow] = []
    bad_mask = np.zeros(len(frame), dtype=bool)

    ts, ok = _parse_timestamps(frame[ts_col])
    for i in np.flatnonzero(~ok)[:1000]:
        bad.append(BadRow(int(lines[i]), ts_col, str(frame[ts_col].iloc[i]), "unparseable timestamp",
                          "use ISO 8601 (2026-01-31T12:00:00Z) or epoch seconds/milliseconds"))
    bad_mask |= ~ok

    values = {}
    for c in value_cols:
        raw = frame[c]
        if pd.api.types.is_numeric_dtype(raw):
            num = pd.to_numeric(raw, errors="coerce").astype(float)
            nonnum = np.zeros(len(raw), dtype=bool)
        else:
            s = raw.astype("string").str.strip()
            num = pd.to_numeric(s, errors="coerce").astype(float)
            nonnum = (num.isna() & ~s.str.lower().isin(["nan", "-nan", "+nan"]).fillna(False)).to_numpy()
        arr = num.to_numpy(dtype=float)
        nonfinite = ~np.isfinite(arr) & ~nonnum
        for i in np.flatnonzero(nonnum)[:1000]:
            v = str(raw.iloc[i])
            bad.append(BadRow(int(lines[i]), c, v, "missing value" if v.strip() == "" else "not a number",
                              "write a decimal number, or drop the row"))
        for i in np.flatnonzero(nonfinite)[:1000]:
            bad.append(BadRow(int(lines[i]), c, str(raw.iloc[i]), "NaN or infinite value",
                              "write a finite number, or drop the row"))
        bad_mask |= nonnum | nonfinite
        values[c] = arr

    if source_override:
        sources = pd.Series(source_override, index=frame.index)
        if src_col is not None:
            notes.append(f"--source {source_override!r} overrides the file's source column")
    elif src_col is not None:
        sources = frame[src_col].astype("string").str.strip().fillna("")
    else:
        sources = pd.Series(path.stem, index=frame.index)
    valid_src = sources.map(lambda s: bool(SOURCE_RE.match(s or ""))).to_numpy(dtype=bool)
    for i in np.flatnonzero(~valid_src)[:1000]:
        bad.append(BadRow(int(lines[i]), src_col or "source", str(sources.iloc[i]), "invalid source name",
                          "use 1-64 letters, digits, '_', '-' or '.'"))
    bad_mask |= ~valid_src

    out = pd.DataFrame({"source": sources.to_numpy(dtype=object), "timestamp": ts.to_numpy()})
    for c in value_cols:
        out[c.strip()] = values[c]
    out["_row"] = lines
    good_ts = ~bad_mask
    dup = np.zeros(len(out), dtype=bool)
    dup[good_ts] = out.loc[good_ts].duplicated(["source", "timestamp"], keep="first").to_numpy()
    if dup.any():
        first = out.loc[good_ts].drop_duplicates(["source", "timestamp"]).set_index(["source", "timestamp"])["_row"]
        for i in np.flatnonzero(dup)[:1000]:
            key = (out["source"].iloc[i], out["timestamp"].iloc[i])
            bad.append(BadRow(int(lines[i]), ts_col, str(frame[ts_col].iloc[i]),
                              f"duplicate (source, timestamp) of row {int(first.loc[key])}",
                              "keep one row per source and timestamp"))
    bad_mask |= dup
    clean = out.loc[~bad_mask]
    if not all(g.is_monotonic_increasing for _, g in clean.groupby("source", sort=False)["timestamp"]):  # per source
        notes.append("rows were out of time order and have been sorted")
    clean = clean.sort_values(["source", "timestamp"], kind="stable").reset_index(drop=True)
    bad.sort(key=lambda b: b.row)
    return clean, bad, notes


_ISO_EXTENDED = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?(?:Z|[+-]\d{2}:\d{2})?$")


def _fast_timestamp_ns(v) -> int | None:
    """The common, unambiguous timestamp forms, parsed as `_parse_timestamps` parses them; None for anything else."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        f = float(v)
        if not math.isfinite(f):
            return None
        secs = f / 1000.0 if abs(f) >= 1e11 else f  # the same epoch rule as _parse_timestamps
        if abs(secs) > 1e11:
            return None
        return int(round(secs * 1e6)) * 1000  # pandas' unit="s" conversion rounds to microseconds the same way
    if isinstance(v, str) and _ISO_EXTENDED.match(v):
        try:
            d = datetime.fromisoformat(v)
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)  # naive times are UTC, as with pd.to_datetime(utc=True)
        return int(d.timestamp()) * 1_000_000_000 + d.microsecond * 1000
    return None


def fast_validate_ticks(rows: list[tuple]) -> list[tuple[str, int, float]] | None:
    """[(source, timestamp, value)] -> [(source, ts_ns, value)] when every row is plainly valid under the rules of
    `validate_frame` (a valid source name, an ISO 8601 or epoch timestamp, a finite number, no repeated (source,
    timestamp)); None when any row is not, and then `validate_frame` decides and words the errors. A shortcut for
    the prediction server's small batches (validate_frame costs milliseconds of pandas set-up per call); it
    accepts a subset of what validate_frame accepts, with the same parsed values (tests/test_ingest.py)."""
    out, seen = [], set()
    for source, ts, value in rows:
        if not isinstance(source, str) or not SOURCE_RE.match(source):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        t = _fast_timestamp_ns(ts)
        if t is None or (source, t) in seen:
            return None
        seen.add((source, t))
        out.append((source, t, float(value)))
    return out


class Ingestor:
    """Ingests files into the warehouse; one instance per batch of files."""

    def __init__(self, warehouse: Warehouse):
        self.wh = warehouse.ensure()
        self.wh.remove_stale_temp_files()  # what an ingest killed mid-write left

    def _already_ingested(self, digest: str, sources: str) -> bool:
        """The same bytes were ingested before for the same sources (names validated: no quote can occur)."""
        for part in self.wh.table_parts("ingest_log", LOG_PARTITION):
            log = self.wh.read_part(part, columns=["content_hash", "status", "sources"]).to_pandas()
            if ((log["content_hash"] == digest) & log["status"].str.startswith("ingested")
                    & (log["sources"] == sources)).any():
                return True
        return False

    def _stored_timestamps(self, source: str, exclude_part: str, lo: int, hi: int) -> pl.Series:
        """The source's stored timestamps within [lo, hi] (the new file's span, ns since the epoch): parts whose
        footer statistics lie outside it are not read, so appending new rows does not re-read the history."""
        out = []
        for p in self.wh.table_parts("raw_ticks", source):
            if p.stem == exclude_part:
                continue
            pmin, pmax, _ = self.wh.part_time_range(p)
            if pmin is not None and (pmax < lo or pmin > hi):
                continue
            ts = pl.from_arrow(self.wh.read_part(p, columns=["timestamp"]))["timestamp"]
            ts = ts.cast(pl.Datetime("us", "UTC"))
            ns = ts.dt.epoch("ns")
            out.append(ts.filter((ns >= lo) & (ns <= hi)))
        return pl.concat(out) if out else pl.Series("timestamp", [], dtype=pl.Datetime("us", "UTC"))

    def ingest_file(self, path: str | Path, source: str | None = None, skip_bad_rows: bool = False,
                    move: bool = False, rename: dict[str, str] | None = None) -> FileResult:
        """Ingest one file. `move` moves it out of the landing zone afterwards (processed or quarantine);
        `rename` maps the file's column names to the source's ({"reading": "value"})."""
        path = Path(path)
        if source is not None:
            check_source_name(source)  # before anything is looked up or stored under it
        with ThreadPoolExecutor(1) as pool:
            # sha256 releases the GIL: a thread reads and hashes the file while this one reads it and parses it (the
            # hash of the bytes read here, after the read, ran beside the parse and slowed it; bench/RESULTS.md has
            # the measured difference); the file's size, modification time and inode before and after tell whether
            # both reads saw the same file, else the bytes parsed here are hashed
            before = _stat(path)
            hashing = pool.submit(_file_digest, path)
            data = path.read_bytes()

            def digest_of_data() -> str:
                digest, after = hashing.result(), _stat(path)  # (after both reads)
                if len(data) != before.st_size or any(getattr(before, a) != getattr(after, a)
                                                      for a in ("st_size", "st_mtime_ns", "st_ino", "st_dev")):
                    return content_hash(data)
                return digest

            if source is not None:  # a known file for a named source: skipped before it is parsed
                digest = digest_of_data()
                if self._already_ingested(digest, source):
                    return self._skip_duplicate(path, FileResult(str(path), digest, "ingested"), move)
            try:
                fast = fast_read_validate(path, data, source, rename)
            except FileRejected:
                fast = None  # the row-by-row path below says it again, with the file's result
            digest = digest_of_data()
        result = FileResult(file=str(path), content_hash=digest, status="ingested")
        part = f"part-{digest[:20]}"
        try:
            if fast is not None:
                clean, bad, notes = fast
            else:
                frame, offset = read_user_file(path, data)
                frame = frame.rename(columns=renamed_columns(path, list(frame.columns), rename))
                clean, bad, notes = validate_frame(frame, path, offset, source)
                clean = pl.from_pandas(clean)
        except FileRejected as exc:
            return self._reject(path, data, result, exc, move)
        # from the check against what is stored to the write: one ingest per source at a time, across processes
        # (the CLI, the daemon's runs), so two overlapping files never both store a (source, timestamp)
        names = sorted(clean["source"].unique().to_list())
        with self.wh.source_locks(names):
            return self._store(path, data, digest, part, clean, names, bad, notes, result, skip_bad_rows, move)

    def _check_columns(self, path: Path, clean: pl.DataFrame, names: list[str]) -> None:
        """A source's value columns are fixed by its first file: a later file with other columns is refused (it
        would be stored as NULLs under the old names plus new columns nothing reads)."""
        found = sorted(c for c in clean.columns if c not in ("source", "timestamp", "_row"))
        for src in names:
            parts = [q for q in self.wh.table_parts("raw_ticks", src) if not q.stem.startswith(LIVE_PARTS)]
            if not parts:
                continue
            names = pq.read_schema(str(parts[0]), filesystem=self.wh.filesystem).names
            expected = sorted(c for c in names if c not in ("source", "timestamp", "file", "content_hash"))
            if found != expected:
                raise FileRejected(f"{path}: value columns {found} differ from source {src!r}'s columns {expected} "
                                   "(fixed by its first file). Fix: name the columns as before (or map them: "
                                   f"`nq ingest FILE --source {src} --rename found=expected`), or ingest it under a "
                                   "new source name")

    def _reject(self, path: Path, data: bytes, result: FileResult, exc: FileRejected, move: bool) -> FileResult:
        result.status = "quarantined"
        result.reason = str(exc)
        result.bad_rows = exc.bad_rows
        self._quarantine(path, data, result, move)
        self._log(result)
        return result

    def _store(self, path, data, digest, part, clean: pl.DataFrame, names, bad, notes, result, skip_bad_rows, move
               ) -> FileResult:
        try:
            if clean.height and self._already_ingested(digest, ",".join(names)):
                return self._skip_duplicate(path, result, move)
            result.notes += notes
            self._check_columns(path, clean, names)
            # duplicates against what is already stored, for each source in the file
            dup_mask = pl.Series("dup", [], dtype=pl.Boolean)
            for src in names:
                span = clean["timestamp"] if len(names) == 1 else clean["timestamp"].filter(clean["source"] == src)
                ns = span.dt.epoch("ns")
                stored = self._stored_timestamps(src, part, ns.min(), ns.max())
                hit = span.is_in(stored) if len(stored) else pl.repeat(False, len(span), dtype=pl.Boolean, eager=True)
                if len(names) == 1:
                    dup_mask = hit
                else:  # back in the frame's row order
                    dup_mask = pl.zeros(clean.height, dtype=pl.Boolean, eager=True) if not len(dup_mask) else dup_mask
                    dup_mask = dup_mask.scatter((clean["source"] == src).arg_true().filter(hit), True)
            if len(dup_mask) and dup_mask.any():  # (a copy of every column otherwise, for nothing)
                dups = clean.filter(dup_mask).head(1000)
                for row, src, ts in zip(dups["_row"].to_list(), dups["source"].to_list(),
                                        dups["timestamp"].to_list(), strict=True):
                    bad.append(BadRow(int(row), "timestamp", str(pd.Timestamp(ts)),
                                      f"(source, timestamp) already stored for source {src!r}",
                                      "drop rows that were ingested before, or use a new timestamp"))
                clean = clean.filter(~dup_mask)
            bad.sort(key=lambda b: b.row)
            result.bad_rows = bad
            if bad and not skip_bad_rows:
                raise FileRejected(f"{path}: {len(bad)} bad row(s); first: {bad[0].describe(str(path))}", bad)
            if clean.height == 0:
                raise FileRejected(f"{path}: no good rows left to ingest", bad)
        except FileRejected as exc:
            return self._reject(path, data, result, exc, move)
        # the stored table, built in Arrow (polars' columns as they are); the file name and hash (and the source,
        # one per part) are constants of the part: dictionary-encoded, written without Arrow's schema, they read
        # back as plain strings
        for src in names:
            rows = clean if len(names) == 1 else clean.filter(pl.col("source") == src)
            table = rows.drop("_row", "source").to_arrow()
            n = table.num_rows

            def const(value: str, n: int = n) -> pa.DictionaryArray:
                # int8 zeros, valid by construction (no bounds pass over a million indices): a quarter of the bytes
                return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value]),
                                                      safe=False)

            table = table.add_column(0, "source", const(str(src)))
            table = table.append_column("file", const(path.name)).append_column("content_hash", const(digest))
            self.wh.write_table("raw_ticks", str(src), table, part=part, store_schema=False)
            result.sources[str(src)] = n
        if bad:
            result.status = "ingested-with-bad-rows"
            self._quarantine(path, data, result, move=False, rows_only=True)
        self._finish(path, result, move)
        self._log(result)
        return result

    def _skip_duplicate(self, path: Path, result: FileResult, move: bool) -> FileResult:
        result.status = "skipped-duplicate-file"
        result.notes.append("the same content was ingested before for the same source(s); nothing to do")
        self._finish(path, result, move)
        return result

    def _reason_text(self, path: Path, result: FileResult) -> str:
        lines = [f"file: {path}", f"sha256: {result.content_hash}", f"status: {result.status}"]
        if result.reason:
            lines.append(f"reason: {result.reason}")
        if result.bad_rows:
            lines.append(f"bad rows ({len(result.bad_rows)}):")
            lines += ["  " + b.describe(path.name) for b in result.bad_rows[:1000]]
        if result.status == "quarantined":
            lines.append("nothing of this file was stored; fix the rows above and ingest it again, "
                         "or ingest with --skip-bad-rows to store the good rows only")
        return "\n".join(lines) + "\n"

    def _quarantine(self, path: Path, data: bytes, result: FileResult, move: bool, rows_only: bool = False) -> None:
        q = self.wh.quarantine
        q.mkdir(parents=True, exist_ok=True)
        target = q / path.name
        if not rows_only:
            if target.exists() and content_hash(target.read_bytes()) != result.content_hash:
                target = q / f"{path.stem}.{result.content_hash[:8]}{path.suffix}"
            if move:
                shutil.move(str(path), target)
            else:
                atomic_write_bytes(target, data)
        atomic_write_bytes(q / f"{target.name}.reason.txt", self._reason_text(path, result).encode())

    def _finish(self, path: Path, result: FileResult, move: bool) -> None:
        if move and path.exists():
            rel = path.relative_to(self.wh.landing) if path.is_relative_to(self.wh.landing) else Path(path.name)
            target = self.wh.processed / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)

    def _log(self, result: FileResult) -> None:
        row = pd.DataFrame([{
            "content_hash": result.content_hash, "file": result.file, "sources": ",".join(sorted(result.sources)),
            "rows_accepted": result.rows_accepted, "rows_rejected": len(result.bad_rows), "status": result.status,
            "reason": result.reason, "ingested_at": datetime.now(UTC),
        }])
        self.wh.append_rows("ingest_log", row, INGEST_LOG_DDL)


def landing_files(wh: Warehouse, source: str | None = None) -> dict[str, list[Path]]:
    """Files waiting in the landing zone, grouped by source.

    A file's source is its sub-directory (`landing/<source>/x.csv`), else its
    stem (`landing/<source>.csv`). Files are returned oldest first.
    """
    groups: dict[str, list[Path]] = {}
    if not wh.landing.exists():
        return groups
    for p in sorted(wh.landing.rglob("*"), key=lambda q: (q.stat().st_mtime_ns, str(q))):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in SUFFIXES:
            continue
        rel = p.relative_to(wh.landing)
        src = rel.parts[0] if len(rel.parts) > 1 else p.stem
        if source is None or src == source:
            groups.setdefault(src, []).append(p)
    return groups


def primary_column(columns: list[str]) -> str:
    """The value column the pipeline predicts: value/price/close/reading, else the first numeric one."""
    skip = {"source", "timestamp", "file", "content_hash"}
    candidates = [c for c in columns if c not in skip]
    for name in PRIMARY_NAMES:
        for c in candidates:
            if c.lower() == name:
                return c
    if not candidates:
        raise ValueError("no value column")
    return candidates[0]


def build_series(raw: pd.DataFrame) -> pd.DataFrame:
    """Sorted, de-duplicated series: timestamp, value (the primary column), and the other value columns."""
    value_col = primary_column(list(raw.columns))
    extra = [c for c in raw.columns if c not in ("source", "timestamp", "file", "content_hash", value_col)]
    out = raw[["timestamp", value_col, *extra]].rename(columns={value_col: "value"})
    out = out.dropna(subset=["value"]).sort_values("timestamp", kind="stable")
    out = out.drop_duplicates("timestamp", keep="first").reset_index(drop=True)
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    out.attrs["value_column"] = value_col
    return out


def rows_after(load_series):
    """The `fusion.predictor.continue_from` callback: (values, timestamps) of a source's rows after a time, from
    the series `load_series()` returns, loaded only if a stream has to be replayed."""
    def rows(ts_ns: int):
        series = load_series()
        later = series[series["timestamp"] > pd.Timestamp(ts_ns, tz="UTC")]
        return later["value"].to_numpy(dtype=float), later["timestamp"].to_numpy()
    return rows
