"""What ingest refuses, as data, and the one place that words it. A bad row (`BadRow`) carries its row,
column, `kind`, the value as written and, for a repeat, the row it repeats (`duplicate_of`); a refused file
(`FileRejected`) carries its file, `kind`, the details its message needs and its bad rows. The words come from
the two tables below only, so `nq ingest`, the quarantine's reason files and the server's 422 say the same
thing, and a caller branches on `kind` and `duplicate_of`, never on the text. Row numbers are the ones a user
sees: for CSV the line in the file (header = line 1), for JSON lines the line, for Parquet the row index + 1
(for `ticks.check_ticks`, the 0-based position in the rows it was given).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

VALUE_SHOWN = 200  # characters of a bad value that a message shows

RowProblem = Literal[
    "timestamp",
    "missing",
    "not_a_number",
    "not_finite",
    "source",
    "duplicate",
    "stored",
    "encoding",
    "fields",
    "json",
    "time_range",
    "boolean",
    "underflow",
    "leap_second",
    "surrogate",
]
FileProblem = Literal[
    "unsupported",
    "empty",
    "parquet",
    "encoding",
    "malformed_csv",
    "extra_fields",
    "json",
    "not_object",
    "rename",
    "no_rows",
    "no_timestamp",
    "no_values",
    "columns_differ",
    "bad_rows",
    "no_good_rows",
    "compressed",
    "limit",
    "json_row",
    "duplicate_columns",
    "reserved",
    "column_name",
    "rename_clash",
    "delimiter",
    "value_column",
    "no_value_column",
    "symlink",
]

# kind -> (problem, fix); the problem may name the row's `duplicate_of`, `source` or `fields`
ROW_PROBLEMS: dict[str, tuple[str, str]] = {
    "timestamp": (
        "unparseable timestamp",
        "use ISO 8601 (2026-01-31T12:00:00Z) or epoch seconds/milliseconds, or name the file's format with "
        "--timestamp-format (strftime, e.g. '%b %d %Y')",
    ),
    "leap_second": (
        "a leap second (second 60), which the stores' UTC clock has no place for",
        "write it as second 59 (or 00 of the next minute), or drop the row",
    ),
    "missing": ("missing value", "write a decimal number, or drop the row"),
    "not_a_number": ("not a number", "write a decimal number, or drop the row"),
    "not_finite": ("NaN or infinite value", "write a finite number, or drop the row"),
    "time_range": (
        "timestamp outside the range the stores hold (1677-09-22 to 2262-04-11 UTC)",
        "use a time in that range (epoch numbers are seconds or milliseconds since 1970)",
    ),
    "source": ("invalid source name", "use 1-64 letters, digits, '_', '-' or '.'"),
    "duplicate": (
        "duplicate (source, timestamp) of row {duplicate_of}",
        "keep one row per source and timestamp",
    ),
    "stored": (
        "(source, timestamp) already stored for source {source!r}",
        "drop rows that were ingested before, or use a new timestamp",
    ),
    "encoding": ("not UTF-8", "re-save the file as UTF-8"),
    "surrogate": (
        "a lone UTF-16 surrogate escape, which no UTF-8 text can hold",
        "write the character itself, or a complete surrogate pair",
    ),
    "boolean": (
        "a boolean, not a number (booleans are refused in every format)",
        "write the number (1 or 0) if it is a measurement, or drop the column",
    ),
    "underflow": (
        "a number too small for a double: it would be stored as 0",
        "write 0 if 0 is meant, or rescale the column",
    ),
    "fields": ("more fields than the header's {fields}", "every line needs the header's number of fields"),
    "json": ("not valid JSON", "one JSON object per line"),
}

# kind -> message; `{file}` is the file, the rest are FileRejected's details (`count` and `first` come
# from its bad rows)
FILE_PROBLEMS: dict[str, str] = {
    "unsupported": "{file}: unsupported file type {suffix!r}. Fix: use .csv, .parquet or .jsonl",
    "symlink": (
        "{file}: a symbolic link in the landing zone, refused (never followed: it could point at any file of "
        "the machine). Fix: put the file itself there"
    ),
    "empty": "{file}: the file is empty. Fix: write a header and at least one data row",
    "parquet": "{file}: not a readable Parquet file ({error}). Fix: re-export it as Parquet",
    "encoding": "{file}: row {row}: byte {byte} is not UTF-8 ({reason}). Fix: re-save the file as UTF-8",
    "malformed_csv": "{file}: malformed CSV ({error}). Fix: every line needs the header's number of fields",
    "extra_fields": "{file}: row {row} has more fields than the header's {fields}. Fix: every line needs the "
    "header's number of fields",
    "json": "{file}: row {row}: not valid JSON ({error}). Fix: one JSON object per line",
    "not_object": "{file}: row {row}: expected a JSON object, got {got}. Fix: one object per line",
    "rename": "{file}: --rename {old}={new}: the file has no column {old!r}; its columns are {columns}. "
    "Fix: name one of them",
    "no_rows": "{file}: no data rows. Fix: add at least one row below the header",
    "no_timestamp": "{file}: missing timestamp column; found columns {columns}. Fix: name the time column "
    "one of {names} (ISO 8601 or epoch seconds/milliseconds)",
    "no_values": "{file}: no value columns besides {column!r}. Fix: add at least one numeric column",
    "columns_differ": "{file}: value columns {found} differ from source {source!r}'s columns {expected} "
    "(fixed by its first file). Fix: name the columns as before (or map them: `nq ingest "
    "FILE --source {source} --rename found=expected`), or ingest it under a new source "
    "name",
    "bad_rows": "{file}: {count} bad row(s); first: {first}",
    "compressed": "{file}: {codec}-compressed data in a file named {suffix!r}; ingest reads plain files only "
    "(a decompression bomb must not fill the memory). Fix: decompress it (e.g. `gunzip -c FILE > x{suffix}`) "
    "and ingest that",
    "limit": "{file}: {what} {found:,} is over the limit of {limit:,} ({setting}). Fix: {fix}, or raise "
    "{setting}",
    "json_row": "{file}: row {row}: {problem}. Fix: {fix}",
    "duplicate_columns": "{file}: column names repeat: {names} (names are compared trimmed and "
    "case-insensitive). Fix: give each column its own name",
    "reserved": "{file}: column {column!r} has a name the store keeps for itself ({reserved}). Fix: rename "
    "it (`--rename {column}=NEW`) or drop it",
    "column_name": "{file}: column name {column!r} holds a control character (e.g. NUL). Fix: name the "
    "column with printable characters",
    "rename_clash": "{file}: --rename {old}={new}: the file already has a column {existing!r}. Fix: rename "
    "to a name the file does not use",
    "delimiter": "{file}: the header {header!r} is one column but holds {name} characters: the file seems "
    "{name}-separated. Fix: `nq ingest FILE --delimiter {shown}`, or re-save it comma-separated",
    "value_column": "{file}: {count} value columns ({columns}) and none named 'value' or 'price': which one "
    "to predict is not clear. Fix: choose one with `--value-column NAME` (or name it 'value')",
    "no_value_column": "{file}: --value-column {column!r}: the file has no such column; its columns are "
    "{columns}. Fix: name one of them",
    "no_good_rows": "{file}: no good rows left to ingest",
}


@dataclass
class BadRow:
    """One refused row: `row` as the user counts it, the `column` at fault ("*" for the whole line), what is
    wrong (`kind`, a key of `ROW_PROBLEMS`) and the value as written (cut to `VALUE_SHOWN` characters)."""

    row: int
    column: str
    kind: RowProblem
    value: str
    duplicate_of: int | None = None  # kind "duplicate": the row of the first (source, timestamp)
    source: str | None = None  # kind "stored": the source that already stores the (source, timestamp)
    fields: int | None = None  # kind "fields": the header's number of fields

    def __post_init__(self) -> None:
        # a value is shown, never stored whole in a message: a 5 MB field must not become a 5 MB line
        if len(self.value) > VALUE_SHOWN:
            self.value = f"{self.value[:VALUE_SHOWN]}... ({len(self.value):,} characters)"

    @property
    def problem(self) -> str:
        return ROW_PROBLEMS[self.kind][0].format(
            duplicate_of=self.duplicate_of, source=self.source, fields=self.fields
        )

    @property
    def fix(self) -> str:
        return ROW_PROBLEMS[self.kind][1]

    def describe(self, file: str) -> str:
        """The line a user reads: file, row, column, problem, value and fix."""
        return describe_row(file, self.row, self.column, self.problem, self.value, self.fix)


def describe_row(file: str, row: int, column: str, problem: str, value: str, fix: str) -> str:
    return f"{file}: row {row}, column {column!r}: {problem} (value {value!r}). Fix: {fix}"


class FileRejected(Exception):
    """The whole file is unusable (empty, unreadable, wrong encoding, missing columns) or has bad rows;
    `kind` is a key of `FILE_PROBLEMS`, `detail` the values its message names."""

    def __init__(
        self,
        file: str | Path,
        kind: FileProblem,
        bad_rows: list[BadRow] | None = None,
        bad_count: int | None = None,
        **detail,
    ):
        self.file, self.kind, self.detail = str(file), kind, detail
        self.bad_rows = list(bad_rows or [])
        # the rows refused, counted exactly: `bad_rows` names at most 1,000 per rule and column
        self.bad_count = len(self.bad_rows) if bad_count is None else max(bad_count, len(self.bad_rows))
        first = self.bad_rows[0].describe(self.file) if self.bad_rows else ""
        detail.setdefault("count", self.bad_count)
        message = FILE_PROBLEMS[kind].format(file=self.file, first=first, **detail)
        # one line, whatever a library's error text holds (pandas' tokenizer ends its message with a newline)
        super().__init__(" ".join(message.split()))


class IngestFailed(Exception):
    """An ingest that could not finish for a reason outside the file (another ingest holds the source's lock,
    the disk is full): one line with the fix. The file is left where it was and nothing of it is stored, so
    running the ingest again later is the remedy; it is never quarantined for this."""
