"""The ingest rules, once, as vectorised column rules (polars) that both build the clean frame and find the
bad rows: a timestamp column that parses (`timestamps.parse_timestamps`), value columns of finite numbers
(`parse_numbers`), source names that `storage.SOURCE_RE` takes (`valid_source_names`), one row per (source,
timestamp). `check_columns` applies them to a file's columns (from either reader of `read.py`) and returns the
rows sorted by source and time, the bad rows as `BadRow`s (at most 1000 per rule and column) and notes;
`check_file` reads a file with the fast reader and, when it declines or a row is bad, with the general one
(whose rows and values are as the user wrote them). A file whose rows all pass, one source in strict time
order, costs a few passes over its columns: no per-row Python, no sort.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from nq_dagster.ingest.errors import BadRow, FileRejected, RowProblem
from nq_dagster.ingest.limits import IngestLimits, check_parquet, check_text
from nq_dagster.ingest.read import (
    DEFAULT_OPTIONS,
    SUFFIXES,
    TIMESTAMP_NAMES,
    Columns,
    ReadOptions,
    check_names,
    check_utf8,
    csv_chunks,
    csv_header,
    csv_texts,
    distinct_names,
    read_fast,
    read_user_file,
    renamed_columns,
)
from nq_dagster.ingest.timestamps import out_of_range, parse_timestamps
from nq_dagster.store import STORED_SOURCE_RE

ROWS_NAMED = 1000  # bad rows named per rule and column (a file of a million bad rows is not a million lines)
OVERRIDE_NOTE = "--source {source!r} overrides the file's source column"
SORTED_NOTE = "rows were out of time order and have been sorted"


@dataclass
class Checked:
    """A file's rows after the rules: `clean` (source, timestamp (UTC, microseconds), the value columns as
    floats, `_row`: the row number), sorted by source and time; `bad` sorted by row; `notes` for the user."""

    clean: pl.DataFrame
    bad: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bad_count: int = 0  # rows refused, counted exactly (`bad` names at most ROWS_NAMED per rule and column)


def valid_source_name(name: str | None) -> bool:
    """A source name as stored: a plain name or a tenant's `<tenant>~<name>` (store/names.py). The server
    maps a tenant's names to these after checking them against the plain form, so only the operator's files
    and commands name a namespace directly."""
    return bool(STORED_SOURCE_RE.match(name or ""))


def valid_source_names(names: list[str | None]) -> set[str]:
    """The names of `names` that are valid source names (a column is checked once per distinct name)."""
    return {name for name in names if valid_source_name(name)}


def _as_text(col: pl.Series) -> pl.Series:
    """A column as text, each value as Python writes it (as pandas' `astype("string")` does), null kept."""
    if col.dtype == pl.String:
        return col
    if col.dtype.is_float():
        col = col.fill_nan(None)  # a missing number: null, not the text "nan"
    return pl.Series(col.name, [None if v is None else str(v) for v in col.to_list()], dtype=pl.String)


def parse_numbers(col: pl.Series) -> pl.Series:
    """A value column -> Float64: null where a value is not a number (text that does not parse: the row's
    problem is "missing value" or "not a number"), NaN or infinity where it is not finite. Text is read with
    padding ignored; numbers as they are (a missing one is NaN). Booleans are not numbers, in any format
    (JSON's `true`, Parquet's boolean, CSV's "true"): null, refused by row."""
    if col.dtype == pl.Boolean:
        return pl.repeat(None, len(col), dtype=pl.Float64, eager=True)
    if col.dtype.is_numeric():
        return col.cast(pl.Float64).fill_null(float("nan"))
    text = _as_text(col)
    as_float = text.cast(pl.Float64, strict=False)  # padded numbers ("  1.5") are rare: stripped only then
    if as_float.null_count() == text.null_count():
        return as_float
    return text.str.strip_chars().cast(pl.Float64, strict=False)


def underflows(col: pl.Series, numbers: pl.Series) -> np.ndarray:
    """Where text read as 0.0 is not zero (1e-400 is below the smallest double): a mask. Only text can say;
    the readers hand over as text any number column that may hold one (`read.UNDERFLOW_SHAPE`)."""
    zero = (numbers == 0.0).fill_null(False)
    if col.dtype != pl.String or not zero.any():
        return np.zeros(len(col), dtype=bool)
    mantissa = col.str.strip_chars().str.replace(r"[eE].*$", "")
    return (zero & mantissa.str.contains(r"[1-9]").fill_null(False)).to_numpy()


def finite_number(value) -> bool:
    """The value rule for one value of a tick, as `parse_numbers` reads it: an int or a float, finite. (A
    bool is not one: a tick's `true` is checked as the text "True", which is not a number.)"""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _shown(col: pl.Series, i: int) -> str:
    """A value as a message shows it: as written, a missing one as pandas shows it."""
    v = col[i]
    if v is None:
        return "NaT" if col.dtype.is_temporal() else "nan"
    return str(v)


def _row_numbers(rows: int | np.ndarray, n: int) -> pl.Series:
    if isinstance(rows, np.ndarray):
        return pl.Series("_row", rows, dtype=pl.Int64)
    return pl.int_range(rows, rows + n, dtype=pl.Int64, eager=True).alias("_row")


def _row_of(rows: int | np.ndarray, i: int) -> int:
    return int(rows[i]) if isinstance(rows, np.ndarray) else rows + i


def _named(frame: pl.DataFrame, path: Path) -> tuple[str, str | None, list[str]]:
    """The timestamp column, the source column (or None) and the value columns of a frame."""
    if frame.height == 0 or frame.width == 0:
        raise FileRejected(path, "no_rows")
    cols = {c.lower().strip(): c for c in frame.columns}
    ts_col = next((cols[n] for n in TIMESTAMP_NAMES if n in cols), None)
    if ts_col is None:
        raise FileRejected(path, "no_timestamp", columns=list(frame.columns), names=list(TIMESTAMP_NAMES))
    src_col = cols.get("source")
    value_cols = [c for c in frame.columns if c not in (ts_col, src_col)]
    if not value_cols:
        raise FileRejected(path, "no_values", column=ts_col)
    return ts_col, src_col, value_cols


class _NotAllGood(Exception):
    """`check_columns(..., all_or_nothing=True)` met a row a rule refuses (the caller reads the file
    again)."""


@dataclass
class _Ruled:
    """One frame's rows under the per-row rules (all but the repeat rule): the timestamps and values as
    parsed, the underflow masks, the source of every row (`sources`, or `single` when every row has one
    name), the names the source rule takes, whether no rule refused a row."""

    timestamps: pl.Series
    values: dict[str, pl.Series]
    tiny: dict[str, np.ndarray]
    sources: pl.Series | None
    single: str | None
    valid: set[str]
    all_good: bool

    def typed(self) -> dict[str, pl.Series]:
        """The stored columns: the timestamp, each value column by its stripped name in the file's order (a
        later column of the same name wins)."""
        return {"timestamp": self.timestamps, **{c.strip(): v for c, v in self.values.items()}}


def _per_row_rules(
    frame: pl.DataFrame, path: Path, source_override: str | None, options: ReadOptions, named: tuple
) -> _Ruled:
    ts_col, src_col, value_cols = named
    timestamps = parse_timestamps(frame[ts_col], options.timestamp_format, options.timezone)
    values = {c: parse_numbers(frame[c]) for c in value_cols}
    tiny = {c: underflows(frame[c], v) for c, v in values.items()}
    sources: pl.Series | None = None
    single = None  # the one source of every row, when known without looking at the rows
    if source_override:
        single = source_override
    elif src_col is not None:
        sources = _as_text(frame[src_col]).str.strip_chars().fill_null("")
        names = sources.unique().to_list()
        if len(names) == 1:
            single, sources = names[0], None
    else:
        single = path.stem
    if single is not None:
        names = [single]
    valid = valid_source_names(names)
    all_good = (
        len(valid) == len(names)
        and not timestamps.null_count()
        and not out_of_range(timestamps).any()
        and all(not v.null_count() and v.is_finite().all() for v in values.values())
        and not any(m.any() for m in tiny.values())
    )
    return _Ruled(timestamps, values, tiny, sources, single, valid, all_good)


def _strictly_increasing(timestamps: pl.Series) -> bool:
    return bool((timestamps.cast(pl.Int64).diff().drop_nulls() > 0).all())


def _has_repeats(timestamps: pl.Series) -> bool:
    """Two rows of one time: the times alone sorted (8 bytes a row), not the table."""
    ordered = timestamps.cast(pl.Int64).sort()
    return bool((ordered.diff().drop_nulls() == 0).any())


def _with_source(typed: dict[str, pl.Series], single: str, rows: int | np.ndarray, n: int) -> pl.DataFrame:
    """The clean frame of one source's rows in strict time order: the source a constant (not a million
    strings), the row numbers a range."""
    return pl.DataFrame(typed).select(
        pl.lit(single, dtype=pl.String).alias("source"), pl.all(), _row_numbers(rows, n)
    )


def check_columns(
    columns: Columns,
    path: Path,
    source_override: str | None,
    options: ReadOptions = DEFAULT_OPTIONS,
    all_or_nothing: bool = False,
) -> Checked:
    """Every rule over every row of `columns`; the source is `source_override`, else the file's source column,
    else the file's name. Raises FileRejected when the columns themselves are unusable (no rows, no timestamp
    column, no value column); with `all_or_nothing`, `_NotAllGood` as soon as a rule refuses a row (the fast
    reader's verdict is then thrown away: naming the rows and sorting cost ~3.5x the file for nothing)."""
    frame, rows = columns.frame, columns.rows
    named = _named(frame, path)
    ts_col, src_col, _ = named
    n = frame.height
    notes = [OVERRIDE_NOTE.format(source=source_override)] if source_override and src_col is not None else []
    ruled = _per_row_rules(frame, path, source_override, options, named)
    if all_or_nothing and not ruled.all_good:
        raise _NotAllGood  # (not all_good: a rule names at least one row below)
    single = ruled.single
    if ruled.all_good and single is not None and _strictly_increasing(ruled.timestamps):
        return Checked(_with_source(ruled.typed(), single, rows, n), [], notes)
    if all_or_nothing and single is not None and _has_repeats(ruled.timestamps):
        raise _NotAllGood  # (sorting the whole table to name the repeats cost ~4x the file, for nothing)
    sources = (
        ruled.sources if ruled.sources is not None else pl.repeat(single, n, dtype=pl.String, eager=True)
    )
    bad: list[BadRow] = []
    bad_mask = np.zeros(n, dtype=bool)
    if not ruled.all_good:
        bad_mask = _bad_rows(frame, rows, named, ruled, sources, bad, {})
    table = pl.DataFrame({"source": sources, **ruled.typed(), "_row": _row_numbers(rows, n)})
    clean, repeats, in_order, n_repeats = _sorted_without_repeats(table, bad_mask, single is not None)
    for i, first, _ in repeats.iter_rows():
        shown = _shown(frame[ts_col], i)
        bad.append(BadRow(_row_of(rows, i), ts_col, "duplicate", shown, duplicate_of=first))
    if not in_order:
        notes.append(SORTED_NOTE)
    bad.sort(key=lambda b: b.row)
    return Checked(clean, bad, notes, int(bad_mask.sum()) + n_repeats)


class _Accepted:
    """The accepted rows of a file checked in chunks, as typed columns preallocated for `capacity` rows
    (numpy: pages never written are never resident) and filled in file order: the timestamps (us since the
    epoch), the value columns, the row numbers, the source of each row as a code. Appending chunk after
    chunk into per-chunk frames left ~3x their size resident (their buffers interleaved with each chunk's
    freed text); these arrays are filled in place and become the clean frame without a copy."""

    def __init__(self, capacity: int):
        self.capacity, self.n = capacity, 0
        self.timestamps = np.empty(capacity, dtype=np.int64)
        self.rows = np.empty(capacity, dtype=np.int64)
        self.codes = np.empty(capacity, dtype=np.uint32)
        self.values: dict[str, np.ndarray] = {}
        self.sources: dict[str, int] = {}
        self.ordered = True  # the accepted rows in strict time order (one source: not sorted again)

    def add(self, ruled: _Ruled, rows: int | np.ndarray, keep: np.ndarray | None) -> None:
        n = len(ruled.timestamps)
        m = n if keep is None else int(keep.sum())
        if m == 0:
            return
        if self.n + m > self.capacity:  # (a capacity from the count of line ends cannot be passed)
            raise AssertionError(f"{self.n + m} rows in a file counted as at most {self.capacity}")

        def take(array: np.ndarray) -> np.ndarray:
            return array if keep is None else array[keep]

        at = slice(self.n, self.n + m)
        ts = take(ruled.timestamps.cast(pl.Int64).to_numpy())
        self.ordered = self.ordered and bool(np.all(ts[1:] > ts[:-1]))
        self.ordered = self.ordered and (self.n == 0 or ts[0] > self.timestamps[self.n - 1])
        self.timestamps[at] = ts
        self.rows[at] = take(_row_numbers(rows, n).to_numpy())
        for name, v in ruled.typed().items():
            if name != "timestamp":
                if name not in self.values:
                    self.values[name] = np.empty(self.capacity, dtype=np.float64)
                self.values[name][at] = take(v.to_numpy())
        if ruled.sources is None:
            self.codes[at] = self.sources.setdefault(ruled.single, len(self.sources))
        else:
            for name in ruled.sources.unique().to_list():
                self.sources.setdefault(name, len(self.sources))
            codes = ruled.sources.replace_strict(self.sources, return_dtype=pl.UInt32).to_numpy()
            self.codes[at] = take(codes)
        self.n += m

    def frame(self, value_names: list[str]) -> pl.DataFrame:
        """source, timestamp, the value columns, _row: numpy's memory as it is (a constant source is not
        materialised)."""
        n = self.n
        ts = pl.Series("timestamp", self.timestamps[:n]).cast(pl.Datetime("us", "UTC"))
        values = {
            c: pl.Series(c, self.values[c][:n]) if c in self.values else pl.Series(c, [], dtype=pl.Float64)
            for c in value_names
        }
        table = pl.DataFrame({"timestamp": ts, **values, "_row": pl.Series("_row", self.rows[:n])})
        if len(self.sources) <= 1:
            single = next(iter(self.sources), None)
            return table.select(pl.lit(single, dtype=pl.String).alias("source"), pl.all())
        names = {code: name for name, code in self.sources.items()}
        source = pl.Series("source", self.codes[:n]).replace_strict(names, return_dtype=pl.String)
        return table.select(source, pl.all())


def check_chunks(
    chunks: Iterator[Columns],
    path: Path,
    source_override: str | None,
    capacity: int,
    options: ReadOptions = DEFAULT_OPTIONS,
    rename: dict[str, str] | None = None,
    texts: Callable[[str, set[int]], dict[int, str | None]] | None = None,
) -> Checked:
    """`check_columns` over a file read in chunks (`read.csv_chunks`) of at most `capacity` rows in all, the
    same verdict: each chunk's rows go through the per-row rules as it is read, and only its accepted rows'
    typed columns are kept (`_Accepted`: ~8 bytes a value, not the text of every value); the repeat rule
    and the sort run once over all of them. The bad rows are named up to ROWS_NAMED per rule and column
    over the whole file and counted exactly. A repeated timestamp is shown as written: `texts(column,
    rows)` reads those rows' text again (only when a file has repeats)."""
    accepted = _Accepted(capacity)
    bad: list[BadRow] = []
    named_so_far: dict[tuple[str, str], int] = {}
    bad_count = 0
    mapping: dict[str, str] | None = None
    named = None
    value_names: list[str] = []
    notes: list[str] = []
    for columns in chunks:
        if mapping is None:
            mapping = renamed_columns(path, columns.frame.columns, rename, options.value_column)
        frame = columns.frame.rename(mapping) if mapping else columns.frame
        if named is None:
            named = _named(frame, path)
            if source_override and named[1] is not None:
                notes.append(OVERRIDE_NOTE.format(source=source_override))
        ruled = _per_row_rules(frame, path, source_override, options, named)
        value_names = value_names or [c for c in ruled.typed() if c != "timestamp"]
        keep = None
        if not ruled.all_good:
            per_row = ruled.sources
            if per_row is None:
                per_row = pl.repeat(ruled.single, frame.height, dtype=pl.String, eager=True)
            mask = _bad_rows(frame, columns.rows, named, ruled, per_row, bad, named_so_far)
            bad_count += int(mask.sum())
            keep = ~mask
        accepted.add(ruled, columns.rows, keep)
        del frame, columns, ruled
    if named is None:
        raise FileRejected(path, "no_rows")
    ts_col = named[0]
    one = len(accepted.sources) <= 1
    table = accepted.frame(value_names)
    ordered = accepted.ordered
    del accepted
    if one and ordered:
        return Checked(table, sorted(bad, key=lambda b: b.row), notes, bad_count)
    clean, repeats, in_order, n_repeats = _sorted_without_repeats(
        table, np.zeros(table.height, dtype=bool), one
    )
    del table
    if n_repeats:
        at = repeats["_row"].to_list()
        original = next((old for old, new in (mapping or {}).items() if new == ts_col), ts_col)
        shown = texts(original, set(at)) if texts is not None else {}
        for r, first in zip(at, repeats["_first"].to_list(), strict=True):
            text = shown.get(r)
            bad.append(BadRow(r, ts_col, "duplicate", "nan" if text is None else text, duplicate_of=first))
    if not in_order:
        notes.append(SORTED_NOTE)
    bad.sort(key=lambda b: b.row)
    return Checked(clean, bad, notes, bad_count + n_repeats)


_LEAP_SECOND = re.compile(r"\d{1,2}:\d{2}:60(?:[.,]\d*)?(?:Z|[+-]\d{2}:?\d{2})?\s*$")


def _timestamp_kind(shown: str) -> RowProblem:
    return "leap_second" if _LEAP_SECOND.search(shown) else "timestamp"


def _number_kind(shown: str) -> RowProblem:
    text = shown.strip()
    if text == "":
        return "missing"
    return "boolean" if text.lower() in ("true", "false") else "not_a_number"


def _bad_rows(
    frame, rows, named: tuple, ruled: _Ruled, sources: pl.Series, bad: list, named_so_far: dict
) -> np.ndarray:
    """The rows a rule refuses, as a mask; each named in `bad` up to ROWS_NAMED per rule and column,
    counting those `named_so_far` (per (column, rule): a file checked in chunks names its first ones)."""
    ts_col, src_col, _ = named

    def name(mask: np.ndarray, column: str, rule: str, kind_of, shown_in: pl.Series) -> None:
        done = named_so_far.get((column, rule), 0)
        at = np.flatnonzero(mask)[: max(0, ROWS_NAMED - done)]
        named_so_far[(column, rule)] = done + len(at)
        for i in at:
            shown = _shown(shown_in, int(i))
            kind: RowProblem = kind_of(shown) if callable(kind_of) else kind_of
            bad.append(BadRow(_row_of(rows, int(i)), column, kind, shown))

    timestamps = ruled.timestamps
    mask = timestamps.is_null().to_numpy()
    name(mask, ts_col, "timestamp", _timestamp_kind, frame[ts_col])
    far = out_of_range(timestamps)
    name(far, ts_col, "time_range", "time_range", frame[ts_col])
    mask |= far
    for c, v in ruled.values.items():
        nonnum = v.is_null().to_numpy()
        nonfinite = ~nonnum & ~v.fill_null(0.0).is_finite().to_numpy()
        kind = "boolean" if frame[c].dtype == pl.Boolean else _number_kind
        name(nonnum, c, "number", kind, frame[c])
        name(nonfinite, c, "not_finite", "not_finite", frame[c])
        name(ruled.tiny[c], c, "underflow", "underflow", frame[c])
        mask |= nonnum | nonfinite | ruled.tiny[c]
    invalid = ~sources.is_in(pl.Series(sorted(ruled.valid), dtype=pl.String)).to_numpy()
    name(invalid, src_col or "source", "source", "source", sources)
    return mask | invalid


REPEATS_SCHEMA = {"_i": pl.Int64, "_first": pl.Int64, "_row": pl.Int64}


def _sorted_without_repeats(
    table: pl.DataFrame, bad_mask: np.ndarray, one_source: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame, bool, int]:
    """The rows no other rule refused, sorted by (source, timestamp), less each row that repeats an earlier
    row's (source, timestamp); the repeats as (index in the file, row number of the first), in file order, at
    most ROWS_NAMED, with their own row numbers; whether each source's rows were in time order in the file;
    and how many repeats there were in all. `one_source`: every row has the same source, so the sort is by
    time alone (the same order), and none when the rows are in strict time order already."""
    if one_source:
        kept = table.filter(pl.Series(~bad_mask)) if bad_mask.any() else table
        if (kept["timestamp"].cast(pl.Int64).diff().drop_nulls() > 0).all():
            # one source in strict time order (a good file with a few bad rows): already sorted, no repeats
            # (the sort and its row index added ~2.6x the file: 53 MiB for a 20 MiB CSV)
            return kept, pl.DataFrame(schema=REPEATS_SCHEMA), True, 0
    keyed = table.with_row_index("_i")
    if bad_mask.any():
        keyed = keyed.filter(pl.Series(~bad_mask))
    # stable: the rows of one (source, timestamp) stay in file order, the first one first
    keyed = keyed.sort("timestamp" if one_source else ["source", "timestamp"], maintain_order=True)
    same_source = pl.col("source") == pl.col("source").shift(1)
    repeat = same_source & (pl.col("timestamp") == pl.col("timestamp").shift(1))
    keyed = keyed.with_columns(repeat.fill_null(False).alias("_repeat"))
    repeats = pl.DataFrame(schema=REPEATS_SCHEMA)
    n_repeats = int(keyed["_repeat"].sum())
    if n_repeats:
        first = pl.when(~pl.col("_repeat")).then(pl.col("_row")).fill_null(strategy="forward")
        repeats = keyed.select(pl.col("_i").cast(pl.Int64), first.alias("_first"), "_row", "_repeat")
        repeats = repeats.filter("_repeat")
        repeats = repeats.drop("_repeat").sort("_i").head(ROWS_NAMED)
        keyed = keyed.filter(~pl.col("_repeat"))
    # in time order in the file <=> the sort kept each source's rows in file order
    in_file_order = ~same_source | (pl.col("_i") > pl.col("_i").shift(1))
    in_order = keyed.select(in_file_order.fill_null(True).all()).item()
    return keyed.drop("_i", "_repeat"), repeats, in_order, n_repeats


def check_file(
    path: Path,
    data: bytes,
    source_override: str | None,
    rename: dict[str, str] | None = None,
    options: ReadOptions = DEFAULT_OPTIONS,
    limits: IngestLimits | None = None,
) -> Checked:
    """Read and check a file. The fast reader first; when it declines, or refuses a column or a row, the
    general reader reads the file again and its verdict stands (its row numbers and values are those the
    user wrote, blank lines and padding included; the fast reader's verdict on a good file is the same,
    tests/test_ingest.py checks it). Raises FileRejected for a file that cannot be read or whose columns
    are unusable, or that passes a limit (`limits`: checked on the bytes, the header or the Parquet footer
    before a row is built)."""
    limits = limits or IngestLimits()
    kind = SUFFIXES.get(path.suffix.lower())
    if kind in ("csv", "jsonl"):
        check_text(path, data, kind, limits)
    if kind == "csv":
        header = csv_header(path, data, options)
        if header is not None and data and not data.isspace():  # (strip() would copy the file)
            check_names(path, header, limits)
    elif kind == "parquet":
        names = check_parquet(path, data, limits)
        if names is not None:
            check_names(path, names, limits)
    # a CSV whose value columns are not all numbers to the fast reader is read by the general reader only: its
    # verdict stands whenever a row is bad, and the fast reader's text columns and their check came first and
    # stayed resident (~5x the file: 104 MiB for a 20 MiB CSV; a good file's verdict is the same from either
    # reader, tests/test_ingest.py)
    columns = read_fast(path, data, options, text_values=False)
    if columns is not None:
        try:
            mapping = renamed_columns(path, columns.frame.columns, rename, options.value_column)
            columns.frame = columns.frame.rename(mapping)
            if distinct_names(columns.frame.columns):
                checked = check_columns(columns, path, source_override, options, all_or_nothing=True)
                if not checked.bad:
                    return checked
        except (FileRejected, _NotAllGood):
            pass  # the general reader says it again
        # the fast reader's columns and verdict freed before the general reader reads the file again (they
        # were held beside it)
        columns = checked = None
    if kind == "csv" and data and not data.isspace():
        # checked chunk by chunk as the general reader reads it: one chunk's text at a time beside the
        # accepted rows' typed columns (the whole file's text and its check held ~8x the file)
        check_utf8(path, data)
        capacity = data.count(b"\n") + 1  # (every row ends a line: a bound on the rows, no copy made)
        return check_chunks(
            csv_chunks(path, data, options),
            path,
            source_override,
            capacity,
            options,
            rename,
            lambda column, at: csv_texts(path, data, options, column, at),
        )
    columns = read_user_file(path, data, options, limits)
    mapping = renamed_columns(path, columns.frame.columns, rename, options.value_column)
    columns.frame = columns.frame.rename(mapping)
    return check_columns(columns, path, source_override, options)
