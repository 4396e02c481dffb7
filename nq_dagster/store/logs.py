"""The small log tables (`ingest_log`, `run_failures`): Parquet parts like every table, in the partition
`_log` (there is no database file). An append is one more part, written atomically; past `COMPACT_LOG_PARTS`
parts the log is compacted into one. A data directory from before this layout kept the logs in `nq.duckdb`:
`migrate_duckdb_file` moves their rows into parts once.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import duckdb
import pandas as pd

from nq_dagster.store.backends import Backend
from nq_dagster.store.compaction import LOCK_TIMEOUT_S, compact
from nq_dagster.store.parts import table_parts, write_part
from nq_dagster.store.schemas import LOG_PARTITION, LOG_TABLES

COMPACT_LOG_PARTS = 64  # a log table past this many parts is compacted into one


def append_log_rows(
    store: Backend, table: str, df: pd.DataFrame, grace_s: float = 60.0, big_rows: int = 1_000_000
) -> None:
    """Append rows to a log table: one more part named by time (and a random suffix, so two writers in the
    same microsecond never collide); past COMPACT_LOG_PARTS parts the log is compacted into one."""
    part = f"{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
    write_part(store, table, LOG_PARTITION, df, part=part)
    if len(table_parts(store, table, LOG_PARTITION)) > COMPACT_LOG_PARTS:
        compact(store, table, LOG_PARTITION, grace_s, big_rows)


def migrate_duckdb_file(store: Backend, home: Path) -> None:
    """A data directory from before this layout kept the log tables in `nq.duckdb`: copy them into Parquet
    parts once, then rename the file to `nq.duckdb.migrated` (nothing reads it afterwards)."""
    old = home / "nq.duckdb"
    if not old.exists():
        return
    with store.lock([LOG_PARTITION], LOCK_TIMEOUT_S):
        if not old.exists():
            return
        con = duckdb.connect(str(old), read_only=True)
        try:
            present = {
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
                ).fetchall()
            }
            copies = {
                n: con.execute(f'SELECT * FROM "{n}"').to_arrow_table() for n in LOG_TABLES if n in present
            }
        finally:
            con.close()
        for n, tbl in copies.items():
            if tbl.num_rows:
                write_part(store, n, LOG_PARTITION, tbl, part="migrated-from-nq-duckdb")
        os.replace(old, home / "nq.duckdb.migrated")
