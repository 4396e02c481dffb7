"""Storage: Parquet is the record, DuckDB the query engine.

`Warehouse` owns the layout of `$NQ_HOME`:

    landing/ processed/ quarantine/    files on their way in
    warehouse/<table>/source=<s>/*.parquet   the record, partitioned by source
    artifacts/<name>/<source>.pkl       models and reservoir states
    nq.duckdb                           views over the Parquet, small tables
    dagster/                            DAGSTER_HOME
    reports/                            validation reports

Every file write goes to a temporary file in the same directory, is fsynced and
then renamed over the target, so a crash leaves either the old file or the new
one, never half of one. Writes to the DuckDB file are serialised by an
inter-process file lock (and, inside Dagster, by the `duckdb` concurrency pool),
because DuckDB allows a single writer per database file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DUCKDB_POOL = "duckdb"
SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_home() -> Path:
    return Path(os.environ.get("NQ_HOME", ".nq")).absolute()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
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


def atomic_write_parquet(path: Path, table: pa.Table | pd.DataFrame) -> None:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_source_name(source: str) -> str:
    if not SOURCE_RE.match(source or ""):
        raise ValueError(
            f"source name {source!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return source


class Warehouse:
    """The data directory and every read and write in it."""

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).absolute() if home else default_home()

    # layout -----------------------------------------------------------------
    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def processed(self) -> Path:
        return self.home / "processed"

    @property
    def quarantine(self) -> Path:
        return self.home / "quarantine"

    @property
    def tables_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def duckdb_path(self) -> Path:
        return self.home / "nq.duckdb"

    def ensure(self) -> Warehouse:
        for p in (self.landing, self.processed, self.quarantine, self.tables_dir, self.artifacts_dir,
                  self.reports, self.dagster_home):
            p.mkdir(parents=True, exist_ok=True)
        return self

    # Parquet tables ---------------------------------------------------------
    def partition_dir(self, table: str, source: str) -> Path:
        return self.tables_dir / table / f"source={check_source_name(source)}"

    def write_table(self, table: str, source: str, df: pd.DataFrame | pa.Table, part: str = "data") -> Path:
        path = self.partition_dir(table, source) / f"{part}.parquet"
        atomic_write_parquet(path, df)
        return path

    def drop_other_parts(self, table: str, source: str, keep: str = "data") -> int:
        """Remove every part of a source partition but `keep` (after a full rewrite replaced them)."""
        n = 0
        for p in self.table_parts(table, source):
            if p.stem != keep:
                p.unlink(missing_ok=True)
                n += 1
        return n

    def table_parts(self, table: str, source: str | None = None) -> list[Path]:
        base = self.tables_dir / table
        if source is not None:
            base = base / f"source={source}"
            return sorted(base.glob("*.parquet")) if base.exists() else []
        return sorted(base.glob("source=*/*.parquet")) if base.exists() else []

    def read_table(self, table: str, source: str | None = None) -> pd.DataFrame:
        parts = self.table_parts(table, source)
        if not parts:
            raise FileNotFoundError(
                f"no data in table {table!r}" + (f" for source {source!r}" if source else "")
                + f" under {self.tables_dir}; ingest data or materialize the asset first"
            )
        tables = [pq.read_table(p) for p in parts]
        return pa.concat_tables(tables, promote_options="default").to_pandas()

    def sources(self, table: str = "raw_ticks") -> list[str]:
        base = self.tables_dir / table
        if not base.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.glob("source=*") if any(p.glob("*.parquet")))

    # artifacts (models, reservoir state) --------------------------------------
    def artifact_path(self, name: str, source: str) -> Path:
        return self.artifacts_dir / name / f"{check_source_name(source)}.pkl"

    def save_artifact(self, name: str, source: str, obj: Any) -> Path:
        path = self.artifact_path(name, source)
        atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        return path

    def load_artifact(self, name: str, source: str) -> Any:
        path = self.artifact_path(name, source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no {name} for source {source!r}; run `nq run` (or `nq demo`) first")
        with open(path, "rb") as fh:
            return pickle.load(fh)

    # DuckDB -------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, exclusive: bool, timeout_s: float) -> Iterator[None]:
        """Readers share, writers exclude, through one lock file: every nq process (runs, sensors, the CLI)
        takes it before opening nq.duckdb, so DuckDB's own file lock never refuses one of them."""
        self.home.mkdir(parents=True, exist_ok=True)
        lock_path = self.home / ".nq.duckdb.lock"
        with open(lock_path, "a+") as lock:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(lock, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        who = "a writer" if not exclusive else "another reader or writer"
                        raise TimeoutError(f"{lock_path}: {who} held the DuckDB lock for {timeout_s}s") from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _connect(self, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
        """Connect, waiting out a process outside nq (a DuckDB shell, say) that holds the file."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return duckdb.connect(str(self.duckdb_path), read_only=read_only)
            except duckdb.IOException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def duckdb_writer(self, timeout_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """The only way to write to nq.duckdb: the exclusive lock, then a short-lived connection."""
        with self._lock(True, timeout_s):
            con = self._connect(False, timeout_s)
            try:
                yield con
            finally:
                con.close()

    def refresh_views(self) -> list[str]:
        """(Re)create one DuckDB view per Parquet table, reading every source partition."""
        names = []
        if self.tables_dir.exists():
            names = sorted(p.name for p in self.tables_dir.iterdir() if p.is_dir() and self.table_parts(p.name))
        with self.duckdb_writer() as con:
            for name in names:
                glob = str(self.tables_dir / name / "source=*" / "*.parquet").replace("'", "''")
                con.execute(
                    f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}', union_by_name=true)"
                )
        return names

    def execute_write(self, sql: str, params: list | None = None) -> None:
        with self.duckdb_writer() as con:
            con.execute(sql, params or [])

    def append_rows(self, table: str, df: pd.DataFrame, ddl: str) -> None:
        """Append rows to a small DuckDB table, created by `ddl` when missing."""
        with self.duckdb_writer() as con:
            con.execute(ddl)
            con.register("_rows", df)
            con.execute(f'INSERT INTO "{table}" SELECT * FROM _rows')
            con.unregister("_rows")

    def query(self, sql: str, timeout_s: float = 60.0) -> pd.DataFrame:
        """Run SQL read-only over the warehouse views and small tables (a shared lock: readers never block
        each other, and wait for a writer to finish)."""
        if not self.duckdb_path.exists():
            self.refresh_views()
        with self._lock(False, timeout_s):
            con = self._connect(True, timeout_s)
            try:
                return con.execute(sql).df()
            finally:
                con.close()
