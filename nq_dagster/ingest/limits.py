"""What one ingest may cost, checked before a file's rows are materialised: its size on disk, compressed
content in a plain file's name (a 4 MB gzip named .csv would be decompressed to 4 GiB by the CSV reader), the
longest line, the number of columns and rows; for Parquet the footer's row and column counts and its
uncompressed size, read before a page is. Each refusal is a `FileRejected` of kind "limit" or "compressed"
naming the setting to raise. The limits are `Settings` fields (`NQ_INGEST_MAX_*`), passed down as
`IngestLimits`; the memory of an ingest is then bounded by a small multiple of `max_bytes` (bench/RESULTS.md).
"""

from __future__ import annotations

import codecs
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from nq_dagster.ingest.errors import FileRejected

# magic numbers of the formats a reader would decompress silently (polars reads gzip, zlib and zstd CSV)
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
    b"\x04\x22\x4d\x18": "lz4",
}
# zlib streams start with 0x78 then one of these, with a header sum divisible by 31 (so does text beginning
# "x^": whether the first 4 KiB are UTF-8 decides)
_ZLIB_SECOND = {0x01, 0x5E, 0x9C, 0xDA}


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on one file: bytes on disk (and a Parquet file's uncompressed bytes), bytes in one line,
    columns, rows; and how long its ingest waits for a source's lock (seconds) before it gives up in one line
    (the file left where it is). The defaults are `Settings`' (NQ_INGEST_MAX_BYTES, _LINE_BYTES, _COLUMNS,
    _ROWS, NQ_INGEST_LOCK_TIMEOUT_S)."""

    max_bytes: int = 256 * 1024**2
    max_line_bytes: int = 1024**2
    max_columns: int = 1000
    max_rows: int = 20_000_000
    lock_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings) -> IngestLimits:
        return cls(
            max_bytes=settings.ingest_max_bytes,
            max_line_bytes=settings.ingest_max_line_bytes,
            max_columns=settings.ingest_max_columns,
            max_rows=settings.ingest_max_rows,
            lock_timeout_s=settings.ingest_lock_timeout_s,
        )


def _over(path: Path, what: str, found: int, limit: int, setting: str, fix: str) -> FileRejected:
    return FileRejected(path, "limit", what=what, found=found, limit=limit, setting=setting, fix=fix)


def check_size(path: Path, size: int, limits: IngestLimits) -> None:
    """Before the file is read: its size on disk."""
    if size > limits.max_bytes:
        raise _over(path, "size in bytes", size, limits.max_bytes, "NQ_INGEST_MAX_BYTES", "split the file")


def compression(data: bytes) -> str | None:
    """The codec whose magic number starts `data`, or None."""
    for magic, name in COMPRESSED_MAGIC.items():
        if data.startswith(magic):
            return name
    if len(data) >= 2 and data[0] == 0x78 and data[1] in _ZLIB_SECOND and (data[0] * 256 + data[1]) % 31 == 0:
        try:  # a header may begin "x^" too: text that is UTF-8 is not a compressed stream
            codecs.getincrementaldecoder("utf-8")().decode(data[:4096], final=False)
        except UnicodeDecodeError:
            return "zlib"
    return None


def longest_line_over(data: bytes, limit: int) -> tuple[int, int] | None:
    """(1-based line number, length in bytes) of a line longer than `limit` bytes, or None. A line longer
    than `limit` holds a whole aligned block of `limit // 2` bytes, so one `find` per block (which stops at
    the block's first newline) rules out almost every block: a few dozen C calls for a 30 MB file, no
    per-line work."""
    half = max(1, limit // 2)
    for lo in range(0, len(data), half):
        hi = min(lo + half, len(data))
        if data.find(b"\n", lo, hi) != -1:
            continue
        start = data.rfind(b"\n", 0, lo) + 1
        end = data.find(b"\n", hi)
        length = (len(data) if end == -1 else end) - start
        if length > limit:
            return data.count(b"\n", 0, start) + 1, length
    return None


def check_text(path: Path, data: bytes, kind: str, limits: IngestLimits) -> None:
    """A CSV or JSON-lines file's bytes before they are parsed: not compressed, no line longer than
    `max_line_bytes`, at most `max_rows` rows (its lines, less the header)."""
    codec = compression(data)
    if codec is not None:
        raise FileRejected(path, "compressed", codec=codec, suffix=path.suffix)
    long = longest_line_over(data, limits.max_line_bytes) if len(data) > limits.max_line_bytes else None
    if long is not None:
        raise _over(
            path,
            f"row {long[0]}: bytes in one line",
            long[1],
            limits.max_line_bytes,
            "NQ_INGEST_MAX_LINE_BYTES",
            "check the line ends (one record per line)",
        )
    if len(data) <= 2 * limits.max_rows:
        return  # every line holds a byte and its newline: this file cannot hold more rows than the limit
    # numpy counts the newlines at 4x the speed of bytes.count (bench/RESULTS.md)
    lines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10)) + (not data.endswith(b"\n"))
    rows = lines - (1 if kind == "csv" else 0)
    if rows > limits.max_rows:
        raise _over(path, "rows", rows, limits.max_rows, "NQ_INGEST_MAX_ROWS", "split the file")


def check_columns_count(path: Path, n: int, limits: IngestLimits) -> None:
    if n > limits.max_columns:
        raise _over(
            path,
            "columns",
            n,
            limits.max_columns,
            "NQ_INGEST_MAX_COLUMNS",
            "keep the columns to predict from",
        )


def check_parquet(path: Path, data: bytes, limits: IngestLimits) -> list[str] | None:
    """A Parquet file's footer before any page is read: rows, columns and uncompressed bytes (a few MB of
    pages can hold hundreds of millions of rows); its column names, or None when the footer is unreadable (the
    readers then say what is wrong)."""
    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        names = meta.schema.to_arrow_schema().names
    except Exception:  # noqa: BLE001 - the general reader names what is wrong
        return None
    check_columns_count(path, meta.num_columns, limits)
    if meta.num_rows > limits.max_rows:
        raise _over(path, "rows", meta.num_rows, limits.max_rows, "NQ_INGEST_MAX_ROWS", "split the file")
    raw = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if raw > limits.max_bytes:
        raise _over(
            path, "uncompressed size in bytes", raw, limits.max_bytes, "NQ_INGEST_MAX_BYTES", "split the file"
        )
    return names
