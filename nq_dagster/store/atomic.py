"""Files written whole or not at all: the one family of atomic writes (bytes, text, Parquet) every module uses
for a file another process may read while it is written. A write goes to a temporary file `.<name>.*.tmp` in
the target's directory, is fsynced and renamed over the target; `remove_stale_temp_files` deletes what a
killed process left. Also how a Parquet part is encoded (`parquet_options`), shared by the local and the
bucket writes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def parquet_options(schema: pa.Schema) -> dict:
    """How a part is encoded, by column type: strings (and a part's dictionary-encoded constants) by
    dictionary; timestamps and integers as deltas (ticks are regular: a few bits each); floats split by byte
    (so the compressor finds the repeated exponent bytes); snappy (zstd wrote slower for a little less size).
    Footer statistics (min / max) only for timestamps, integers and the source column: what readers prune by
    (time ranges, sources; the views read with hive partitioning off); on floats and on a part's constant file
    name and hash they cost write time and nothing prunes by them. The measurements against pyarrow's defaults
    are in bench/RESULTS.md (bench/ingest_bench.py). Every reader (DuckDB, polars, pyarrow) decodes these
    standard encodings."""
    dictionary, encoding, stats = [], {}, []
    for col in schema:
        t = col.type
        if pa.types.is_dictionary(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
            dictionary.append(col.name)
        elif pa.types.is_timestamp(t) or pa.types.is_integer(t):
            encoding[col.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_floating(t):
            encoding[col.name] = "BYTE_STREAM_SPLIT"
        if pa.types.is_timestamp(t) or pa.types.is_integer(t) or col.name == "source":
            stats.append(col.name)
    return {
        "compression": "snappy",
        "use_dictionary": dictionary,
        "column_encoding": encoding or None,
        "write_statistics": stats,
    }


def atomic_write_parquet(
    path: str | os.PathLike, table: pa.Table | pd.DataFrame, store_schema: bool = True
) -> None:
    """Write a Parquet file whole or not at all. `store_schema=False` leaves Arrow's own schema out of the
    file: dictionary-encoded columns (constants of a part) then read back as plain strings."""
    path = Path(path)
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, store_schema=store_schema, **parquet_options(table.schema))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temp_files(bases: Iterable[Path], max_age_s: float = 3600.0) -> int:
    """Delete the temporary files of atomic writes that a killed process left behind (`.<name>.*.tmp` under
    `bases`, older than `max_age_s`, so a write in progress is never touched). Returns how many."""
    now, n = time.time(), 0
    for base in bases:
        if not base.exists():
            continue
        for p in base.rglob(".*.tmp"):
            try:
                if now - p.stat().st_mtime > max_age_s:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                continue
    return n
