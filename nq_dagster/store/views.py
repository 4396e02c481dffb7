"""SQL over the warehouse: every query runs in a new in-memory DuckDB (no database file, nothing to lock:
parts are immutable or replaced atomically) with one view per table the SQL names, over the table's live parts
listed when the query starts, so a moved data directory just works and a compaction is seen at once. `query`
is the code's own SQL; `user_query` is `nq query`'s sandbox: SELECT only, and no file outside the warehouse.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from nq_dagster.store.backends import Backend
from nq_dagster.store.names import FIRST_STEP, unknown_name
from nq_dagster.store.parts import table_names, table_parts
from nq_dagster.store.schemas import LOG_TABLES

CATALOGUE = {"information_schema", "duckdb_tables", "duckdb_views", "duckdb_columns"}
# the tables the pipeline writes (a table shows in `nq query` once it has rows); the logs are always there
PIPELINE_TABLES = (
    "raw_ticks",
    "series",
    "patterns",
    "features",
    "predictions",
    "validation_metrics",
    "portfolio",
)


class QueryRefused(ValueError):
    """A user query the sandbox does not run (a statement other than SELECT, a file outside the warehouse)."""


def register_views(con: duckdb.DuckDBPyConnection, store: Backend, sql: str) -> set[str]:
    """One view per table the SQL names, over the table's live parts (schemas unified by name); the log
    tables are queryable while empty. Returns the table names."""
    names = set()
    existing = table_names(store)
    named = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
    if named & CATALOGUE:  # a query of the catalogue sees every table
        named |= {n.lower() for n in [*existing, *LOG_TABLES]}
    for name in existing:
        if name.lower() not in named:
            continue
        parts = table_parts(store, name)
        if not parts:
            continue
        names.add(name)
        if store.local:  # DuckDB's own Parquet reader on the files
            files = ", ".join("'" + str(q).replace("'", "''") + "'" for q in parts)
            if name in LOG_TABLES or "source" in pq.read_schema(str(parts[0])).names:
                con.execute(
                    f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{files}], union_by_name=true, '
                    "hive_partitioning=false)"
                )
            else:  # a table whose rows do not name their source (series, features, ...): the partition does
                con.execute(
                    f'CREATE VIEW "{name}" AS SELECT * EXCLUDE (filename), '
                    "regexp_extract(filename, '/source=([^/]+)/[^/]*$', 1) AS source "
                    f"FROM read_parquet([{files}], union_by_name=true, hive_partitioning=false, "
                    "filename=true)"
                )
        else:
            schema = pa.unify_schemas(
                [pq.read_schema(str(q), filesystem=store.fs) for q in parts], promote_options="permissive"
            )
            kw = {}
            if name not in LOG_TABLES and "source" not in schema.names:
                # as on local disk: a table whose rows do not name their source takes it from the partition
                schema = schema.append(pa.field("source", pa.string()))
                kw = {
                    "partitioning": pads.partitioning(pa.schema([("source", pa.string())]), flavor="hive"),
                    "partition_base_dir": str(parts[0].parent.parent),
                }
            con.register(
                name,
                pads.dataset(
                    [str(q) for q in parts], schema=schema, format="parquet", filesystem=store.fs, **kw
                ),
            )
    for n, ddl in LOG_TABLES.items():
        if n not in names and n in named:
            con.execute(ddl)
            names.add(n)
    return names


def query(store: Backend, sql: str) -> pd.DataFrame:
    """Run SQL over the warehouse's tables in a new in-memory DuckDB."""
    con = duckdb.connect()
    try:
        register_views(con, store, sql)
        return con.execute(sql).df()
    finally:
        con.close()


@dataclass(frozen=True)
class QueryLimits:
    """What one `nq query` may use: wall time (the query is interrupted), memory (DuckDB's memory_limit, with
    spilling to disk off), threads, and the rows it returns (more are cut, and the frame says so in
    `attrs["truncated"]`)."""

    timeout_s: float = 60.0
    memory_limit: str = "2GB"
    threads: int = 2
    max_rows: int = 100_000


def user_query(store: Backend, tables_dir: Path, sql: str, limits: QueryLimits | None = None) -> pd.DataFrame:
    """Run a user's SQL (`nq query`) in a sandbox: an in-memory DuckDB with one view per warehouse table (the
    log tables included), that may read the warehouse's Parquet and nothing else. Only SELECT
    statements run (COPY, EXPORT, ATTACH, INSTALL / LOAD, SET / RESET, CREATE ... are refused before anything
    executes); file access outside `tables_dir` is refused by DuckDB itself (`enable_external_access=false`
    with the warehouse as the one allowed directory, then `lock_configuration=true`), and the query runs
    within `limits`. Raises QueryRefused with a one-line reason."""
    limits = limits or QueryLimits()
    # in memory, no spill directory (DuckDB's default is .tmp/ under the working directory): nothing the query
    # does reaches a file but the warehouse's Parquet, and memory_limit is a real bound
    con = duckdb.connect(
        config={"temp_directory": "", "memory_limit": limits.memory_limit, "threads": limits.threads}
    )
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryRefused(f"not valid SQL: {str(exc).splitlines()[0]}") from None
        if not statements:
            raise QueryRefused("no statement to run")
        for st in statements:
            if st.type != duckdb.StatementType.SELECT:
                raise QueryRefused(
                    f"only SELECT queries run here (the warehouse is read-only to `nq query`)"
                    f"; refused a {st.type.name} statement. To export, use "
                    "`--format csv > file`"
                )
        register_views(con, store, sql)
        allowed = str(tables_dir).replace("'", "''") + "/"
        con.execute(f"SET allowed_directories = ['{allowed}']")
        con.execute("SET enable_external_access = false")
        con.execute("SET enable_progress_bar = false")  # (a long query drew its bar over the refusal line)
        con.execute("SET lock_configuration = true")
        timer = threading.Timer(limits.timeout_s, con.interrupt)
        timer.start()
        try:
            # one row past the cap says whether the answer was cut, without building all of it
            df = con.sql(sql).limit(limits.max_rows + 1).df()
        except duckdb.PermissionException as exc:
            raise QueryRefused(
                f"the query reads outside the warehouse, which `nq query` does not allow "
                f"({str(exc).splitlines()[0]})"
            ) from None
        except duckdb.CatalogException as exc:
            raise QueryRefused(_catalog_message(store, str(exc))) from None
        except duckdb.InterruptException:
            raise QueryRefused(
                f"the query ran past its time limit of {limits.timeout_s:g} s and was stopped. "
                "Fix: add a WHERE or LIMIT, or raise NQ_QUERY_TIMEOUT_S"
            ) from None
        except duckdb.OutOfMemoryException:
            raise QueryRefused(
                f"the query needs more than its memory limit of {limits.memory_limit}. Fix: "
                "aggregate or filter in SQL, or raise NQ_QUERY_MEMORY"
            ) from None
        finally:
            timer.cancel()
        df.attrs["truncated"] = len(df) > limits.max_rows
        return df.iloc[: limits.max_rows]
    finally:
        con.close()


def _catalog_message(store: Backend, error: str) -> str:
    """DuckDB's Catalog Error in the warehouse's words: an unknown table named with the tables that exist (and
    the nearest), a table of the pipeline that holds no rows yet, an empty warehouse with its first step."""
    first = error.splitlines()[0].removeprefix("Catalog Error: ")
    m = re.match(r"Table with name (\S+) does not exist", first)
    if not m:  # an unknown function, type, schema: DuckDB's first line, without its prefix
        return first
    name = m.group(1)
    present = [n for n in table_names(store) if table_parts(store, n)]
    known = sorted({*present, *LOG_TABLES})
    if name in PIPELINE_TABLES:
        return f"table {name!r} holds no rows yet (the pipeline writes it when a source is run). Fix: " + (
            "`nq run`" if "raw_ticks" in present else FIRST_STEP
        )
    fix = "use one of the tables listed" if present else f"the warehouse is empty: {FIRST_STEP}"
    return unknown_name("table", name, known, fix)
