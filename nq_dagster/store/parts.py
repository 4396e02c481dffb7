"""Parquet parts: the record. A table is `warehouse/<table>/source=<s>/<part>.parquet` on a backend; this
module writes a part whole, lists a table's live parts (every part file less those a compacted part of the
same partition replaces, named in its footer), reads parts and tables (pruning by the footers' time
statistics), and answers from footers alone: a part's rows, its time range, the rows stored for a source.
Every function takes the backend (`backends.LocalStore` or `ObjectStore`) and works the same on both.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nq_dagster.store.backends import Backend
from nq_dagster.store.schemas import LOG_PARTITION, is_compacted, partition_name

# (store url, part path) -> the part names a compacted part replaces (compacted parts never change)
_REPLACES: dict[tuple[str, str], list[str]] = {}


def ns(t) -> int:
    """A timestamp (datetime, pandas Timestamp, numpy datetime64, or Parquet statistics' value) as ns since
    the epoch, UTC where it has no zone."""
    ts = pd.Timestamp(t)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).value


def tables_root(store: Backend) -> str:
    return store.path("warehouse")


def write_part(
    store: Backend,
    table: str,
    source: str,
    df: pd.DataFrame | pa.Table,
    part: str = "data",
    store_schema: bool = True,
) -> PurePosixPath:
    """Write one part of a source's partition, whole or not at all (the backend's `put_parquet`)."""
    key = PurePosixPath(tables_root(store), table, f"source={partition_name(source)}", f"{part}.parquet")
    tbl = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    store.put_parquet(str(key), tbl, store_schema)
    return key


def delete_part(store: Backend, part: PurePosixPath) -> None:
    with contextlib.suppress(FileNotFoundError):
        store.fs.delete_file(str(part))


def part_files(store: Backend, table: str, source: str | None = None) -> list[PurePosixPath]:
    """Every part file of a table (or of one source's partition), temporary files of writes in progress
    (`.<name>.*.tmp`) left out."""
    base = PurePosixPath(tables_root(store), table)
    if source is not None:
        base = base / f"source={source}"
    infos = store.fs.get_file_info(pafs.FileSelector(str(base), recursive=True, allow_not_found=True))
    parts = [
        PurePosixPath(i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    ]
    return sorted(p for p in parts if p.parent.name.startswith("source=") and not p.name.startswith("."))


def replaces(store: Backend, part: PurePosixPath) -> list[str]:
    """The part names a compacted part replaces (its footer's `nq_replaces`); compacted parts never change
    once written (a new name each time), so this is read once per process."""
    key = (store.url(), str(part))
    if key not in _REPLACES:
        meta = pq.read_schema(str(part), filesystem=store.fs).metadata or {}
        _REPLACES[key] = json.loads(meta.get(b"nq_replaces", b"[]"))
    return _REPLACES[key]


def table_parts(store: Backend, table: str, source: str | None = None) -> list[PurePosixPath]:
    """The live Parquet parts of a table (one source's partition, or all): every part file, less those a
    compacted part of the same partition replaces (`compaction.compact`)."""
    parts = part_files(store, table, source)
    replaced: set[tuple[str, str]] = set()
    for q in parts:
        if is_compacted(q.stem):
            replaced.update((q.parent.name, stem) for stem in replaces(store, q))
    return [q for q in parts if (q.parent.name, q.stem) not in replaced]


def drop_other_parts(
    store: Backend, table: str, source: str, keep: str = "data", keep_prefixes: tuple = ()
) -> int:
    """Remove every part of a source partition but `keep` and those named with `keep_prefixes`."""
    n = 0
    for p in table_parts(store, table, source):
        if p.stem != keep and not p.stem.startswith(keep_prefixes or ("\0",)):
            delete_part(store, p)
            n += 1
    return n


def part_mtime(store: Backend, part: PurePosixPath) -> float:
    info = store.fs.get_file_info(str(part))
    return info.mtime.timestamp() if info.mtime else time.time()


def read_part(store: Backend, part: PurePosixPath, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(str(part), columns=columns, filesystem=store.fs)


def footer(store: Backend, part: PurePosixPath) -> pq.FileMetaData:
    with store.fs.open_input_file(str(part)) as fh:
        return pq.ParquetFile(fh).metadata


def part_rows(store: Backend, part: PurePosixPath) -> int:
    return footer(store, part).num_rows


def part_time_range(
    store: Backend, part: PurePosixPath, column: str = "timestamp"
) -> tuple[int | None, int | None, int]:
    """(min, max, rows) of a part's `column` (as ns since the epoch) from its footer statistics: no data read.
    min / max are None where the part has no statistics (then every time filter reads it)."""
    meta = footer(store, part)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if column not in names or meta.num_rows == 0:
        return None, None, meta.num_rows
    j = names.index(column)
    lo = hi = None
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(j).statistics
        if st is None or not st.has_min_max:
            return None, None, meta.num_rows
        a, b = ns(st.min), ns(st.max)
        lo, hi = (a if lo is None else min(lo, a)), (b if hi is None else max(hi, b))
    return lo, hi, meta.num_rows


def stored_rows(store: Backend, table: str, source: str) -> int:
    """Rows of a source's partition, from the parts' footers: the one answer to "rows stored for a source"."""
    return sum(part_rows(store, p) for p in table_parts(store, table, source))


def read_table(
    store: Backend,
    table: str,
    source: str | None = None,
    after: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """A table (one source's partition, or all), or only its rows with after < timestamp <= until: parts
    whose footer statistics lie outside the window are not opened, the others are read with the filter, so
    the cost of reading new rows does not grow with the history."""
    parts = table_parts(store, table, source)
    if not parts:
        raise FileNotFoundError(
            f"no data in table {table!r}"
            + (f" for source {source!r}" if source else "")
            + f" under {store.url()}; ingest data or materialize the asset first"
        )
    if after is None and until is None:
        tables = [read_part(store, p, columns) for p in parts]
    else:
        lo, hi = ns(after) if after is not None else None, ns(until) if until is not None else None
        tables = []
        for p in parts:
            pmin, pmax, _ = part_time_range(store, p)
            if (lo is not None and pmax is not None and pmax <= lo) or (
                hi is not None and pmin is not None and pmin > hi
            ):
                continue
            t = read_part(store, p, columns)
            ts = t.column("timestamp")
            keep = None
            if lo is not None:
                keep = pc.greater(ts, pa.scalar(pd.Timestamp(lo, tz="UTC"), ts.type))
            if hi is not None:
                le = pc.less_equal(ts, pa.scalar(pd.Timestamp(hi, tz="UTC"), ts.type))
                keep = le if keep is None else pc.and_(keep, le)
            tables.append(t.filter(keep))
        if not tables:  # nothing in the window: an empty frame with the table's columns
            tables = [read_part(store, parts[-1], columns).slice(0, 0)]
    # permissive: parts written from pandas (large_string) and from the record schema (string) read as one
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def sources(store: Backend, table: str = "raw_ticks") -> list[str]:
    names = {p.parent.name.split("=", 1)[1] for p in table_parts(store, table)}
    return sorted(names - {LOG_PARTITION})


def table_names(store: Backend) -> list[str]:
    return sorted({p.parent.parent.name for p in part_files(store, "")} - {""})
