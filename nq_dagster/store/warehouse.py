"""The `Warehouse`: one data directory and its backend, the object every layer above passes around. It owns
the layout of the data directory

    landing/ processed/ quarantine/          files on their way in
    warehouse/<table>/source=<s>/*.parquet   the record, partitioned by source (on the backend)
    artifacts/<name>/<source>.npz            models and reservoir states (npz + JSON: loading runs no code)
    dagster/                                 DAGSTER_HOME
    reports/                                 validation reports

and delegates the work: Parquet parts to `parts`, compaction to `compaction` (its limits are this object's
parameters), the log tables to `logs`, SQL to `views`, the artifact codec to `artifacts`, writes and locks to
the backend (`backends`: local files or a bucket). Landing, processed, quarantine and reports stay in the
local data directory whatever the backend. The backend is what the caller passes (or `from_settings` chooses);
nothing here reads the environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from nq_dagster.settings import Settings
from nq_dagster.store import artifacts, compaction, logs, parts, views
from nq_dagster.store.atomic import remove_stale_temp_files
from nq_dagster.store.backends import Backend, LocalStore, ObjectStore
from nq_dagster.store.schemas import ARTIFACT_SUFFIX, check_source_name, partition_name


class Warehouse:
    """The data directory `home` and every read and write in it.

    home: the data directory (required; a composition root passes `Settings.home`). store: where tables and
    artifacts go, `LocalStore(home)` when None. compact_parts: a source's parts past this many are compacted
    after a write (`compact_if_many`). compact_big_rows: a part of this many rows or more is never merged
    again. compact_grace_s: seconds the files a compacted part replaces stay for queries that listed them."""

    def __init__(
        self,
        home: str | Path,
        store: Backend | None = None,
        *,
        compact_parts: int = 64,
        compact_big_rows: int = 1_000_000,
        compact_grace_s: float = 60.0,
    ):
        if home is None or str(home) == "":
            raise ValueError("Warehouse needs its data directory (home); pass Settings.home")
        self.home = Path(home).absolute()
        self.store: Backend = store if store is not None else LocalStore(self.home)
        self.fs = self.store.fs
        self.compact_parts = compact_parts
        self.compact_big_rows = compact_big_rows
        self.compact_grace_s = compact_grace_s
        self._migration_checked = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Warehouse:
        """The data directory `settings.home`, on the bucket `settings.s3_bucket` names (else local files),
        with the settings' compaction limits."""
        return cls(
            settings.home,
            ObjectStore.from_settings(settings),
            compact_parts=settings.compact_parts,
            compact_big_rows=settings.compact_big_rows,
            compact_grace_s=settings.compact_grace_s,
        )

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

    def ensure(self) -> Warehouse:
        for p in (
            self.landing,
            self.processed,
            self.quarantine,
            self.tables_dir,
            self.artifacts_dir,
            self.reports,
            self.dagster_home,
        ):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def remove_stale_temp_files(self, max_age_s: float = 3600.0) -> int:
        """Delete the temporary files of atomic writes that a killed process left behind under warehouse/ and
        artifacts/ (older than `max_age_s`, so a write in progress is never touched)."""
        return remove_stale_temp_files((self.tables_dir, self.artifacts_dir), max_age_s)

    @property
    def where(self) -> str:
        return self.store.url()

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow file system of the tables and artifacts (local or the bucket's)."""
        return self.fs

    # Parquet tables (`parts`) -----------------------------------------------
    def partition_dir(self, table: str, source: str) -> Path:
        return self.tables_dir / table / f"source={partition_name(source)}"

    def write_table(
        self,
        table: str,
        source: str,
        df: pd.DataFrame | pa.Table,
        part: str = "data",
        store_schema: bool = True,
    ) -> PurePosixPath:
        """Write one part of a source's partition, whole or not at all."""
        return parts.write_part(self.store, table, source, df, part, store_schema)

    def drop_other_parts(self, table: str, source: str, keep: str = "data", keep_prefixes: tuple = ()) -> int:
        """Remove every part of a source partition but `keep` and those named with `keep_prefixes`."""
        return parts.drop_other_parts(self.store, table, source, keep, keep_prefixes)

    def table_parts(self, table: str, source: str | None = None) -> list[PurePosixPath]:
        """The live Parquet parts of a table (one source's partition, or all)."""
        return parts.table_parts(self.store, table, source)

    def read_part(self, part: PurePosixPath, columns: list[str] | None = None) -> pa.Table:
        return parts.read_part(self.store, part, columns)

    def part_rows(self, part: PurePosixPath) -> int:
        return parts.part_rows(self.store, part)

    def part_time_range(
        self, part: PurePosixPath, column: str = "timestamp"
    ) -> tuple[int | None, int | None, int]:
        """(min, max, rows) of a part's `column` (ns since the epoch) from its footer statistics."""
        return parts.part_time_range(self.store, part, column)

    def read_table(
        self,
        table: str,
        source: str | None = None,
        after: pd.Timestamp | None = None,
        until: pd.Timestamp | None = None,
        columns: list[str] | None = None,
    ) -> pd.DataFrame:
        """A table (one source's partition, or all), or only its rows with after < timestamp <= until."""
        return parts.read_table(self.store, table, source, after, until, columns)

    def stored_rows(self, table: str, source: str) -> int:
        """Rows of a source's partition, from the parts' footers."""
        return parts.stored_rows(self.store, table, source)

    def sources(self, table: str = "raw_ticks") -> list[str]:
        return parts.sources(self.store, table)

    def table_names(self) -> list[str]:
        return parts.table_names(self.store)

    # compaction (`compaction`) ----------------------------------------------
    def compact(self, table: str, source: str, grace_s: float | None = None) -> dict:
        """Merge a source's small parts into one compacted part (`compaction.compact`); `grace_s` defaults to
        this warehouse's `compact_grace_s`. Returns what it did."""
        grace = self.compact_grace_s if grace_s is None else grace_s
        return compaction.compact(self.store, table, source, grace, self.compact_big_rows)

    def compact_if_many(self, table: str, source: str, limit: int | None = None) -> dict | None:
        """`compact` once the partition holds more than `limit` (default `compact_parts`) parts to merge: what
        the writers of many small parts call after a write, so reads stay a few files whatever the uptime."""
        limit = self.compact_parts if limit is None else limit
        return compaction.compact_if_many(
            self.store, table, source, limit, self.compact_grace_s, self.compact_big_rows
        )

    # artifacts (models, reservoir state; the codec in `artifacts`) ------------
    def artifact_path(self, name: str, source: str) -> Path:
        """Where an artifact lies in a local data directory (`artifacts/<name>/<source>.npz`)."""
        return self.artifacts_dir / name / f"{check_source_name(source)}{ARTIFACT_SUFFIX}"

    def _artifact_key(self, name: str, source: str) -> str:
        return self.store.path("artifacts", name, f"{check_source_name(source)}{ARTIFACT_SUFFIX}")

    def _artifact_info(self, name: str, source: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self._artifact_key(name, source))

    def has_artifact(self, name: str, source: str) -> bool:
        return self._artifact_info(name, source).type == pafs.FileType.File

    def artifact_mtime_ns(self, name: str, source: str) -> int:
        """When the artifact was last written (0 if it does not exist): how a long-lived reader sees a new
        one."""
        info = self._artifact_info(name, source)
        return int(info.mtime_ns or 0) if info.type == pafs.FileType.File else 0

    def artifact_sources(self, name: str) -> list[str]:
        selector = pafs.FileSelector(self.store.path("artifacts", name), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(
            PurePosixPath(i.path).stem
            for i in infos
            if i.type == pafs.FileType.File and i.path.endswith(ARTIFACT_SUFFIX)
        )

    def save_artifact(self, name: str, source: str, obj: Any) -> str:
        key = self._artifact_key(name, source)
        self.store.put_bytes(key, artifacts.dumps(obj))
        return key

    def load_artifact(self, name: str, source: str) -> Any:
        key = self._artifact_key(name, source)
        if not self.has_artifact(name, source):
            raise FileNotFoundError(
                f"{self.store.describe(key)}: no {name} for source {source!r}; run "
                "`nq run` (or `nq demo`) first"
            )
        with self.fs.open_input_stream(key) as fh:
            return artifacts.loads(fh.read(), self.store.describe(key))

    # locks ------------------------------------------------------------------
    @contextlib.contextmanager
    def source_locks(self, sources: list[str], timeout_s: float = 120.0) -> Iterator[None]:
        """Exclusive inter-process locks on sources, taken in name order (`locks.file_locks`). Object storage
        has no such lock: there, one writer per source is the deployment's job (the run queue's one run per
        source)."""
        with self.store.lock([partition_name(s) for s in sources], timeout_s):
            yield

    # log tables and SQL (`logs`, `views`) -----------------------------------
    def _migrate_once(self) -> None:
        """The old `nq.duckdb` of this data directory into Parquet parts (`logs.migrate_duckdb_file`), checked
        once per Warehouse, before its first log append or query."""
        if not self._migration_checked:
            logs.migrate_duckdb_file(self.store, self.home)
            self._migration_checked = True

    def append_rows(self, table: str, df: pd.DataFrame, ddl: str | None = None) -> None:
        """Append rows to a small log table (`ingest_log`, `run_failures`): one more Parquet part, written
        atomically; a long log is compacted (`logs.append_log_rows`)."""
        self._migrate_once()
        logs.append_log_rows(self.store, table, df, self.compact_grace_s, self.compact_big_rows)

    def query(self, sql: str, timeout_s: float = 60.0) -> pd.DataFrame:
        """Run SQL over the warehouse's tables in a new in-memory DuckDB (`views.query`)."""
        self._migrate_once()
        return views.query(self.store, sql)

    def user_query(self, sql: str, limits: views.QueryLimits | None = None) -> pd.DataFrame:
        """Run a user's SQL (`nq query`) in the sandbox (`views.user_query`): SELECT only, no file outside
        `warehouse/`, within `limits` (time, memory, rows). Raises QueryRefused with a one-line reason."""
        self._migrate_once()
        return views.user_query(self.store, self.tables_dir, sql, limits)
