"""Storage: Parquet is the record, DuckDB the query engine.

`Warehouse` owns the layout of `$NQ_HOME`:

    landing/ processed/ quarantine/    files on their way in
    warehouse/<table>/source=<s>/*.parquet   the record, partitioned by source
    artifacts/<name>/<source>.npz       models and reservoir states (npz + JSON: loading runs no code)
    dagster/                            DAGSTER_HOME
    reports/                            validation reports

One storage layer over pyarrow's file systems: `LocalStore` (the data directory, pyarrow's LocalFileSystem)
or `ObjectStore` (with `NQ_S3_BUCKET` set, or the `warehouse` resource's `s3_bucket`: an S3-compatible bucket,
`s3://<bucket>/<NQ_S3_PREFIX>/warehouse/...`, `.../artifacts/...`, endpoint `NQ_S3_ENDPOINT`, credentials from
the usual AWS variables). `Warehouse` lists, reads, deletes and writes through the store's `fs` with the same
code in both; a store says only how a write is made atomic (local: a temporary file in the same directory,
fsynced and renamed over the target; the bucket: a single PUT), whether lock files work (local only), and
whether DuckDB reads its files itself (local) or through pyarrow datasets (the bucket). Landing, processed,
quarantine and reports stay under `$NQ_HOME`.

There is no database file: the small log tables (`ingest_log`, `run_failures`) are
Parquet parts too (partition `_log`), and every query runs in a new in-memory DuckDB
with one view per table over the table's live parts, listed when the query starts
(on relative-free absolute paths of this run, so a moved `$NQ_HOME` just works).
A source's many small parts are merged by `Warehouse.compact` (`nq compact`, and
automatically past NQ_COMPACT_PARTS parts): the compacted part names the parts it
replaces in its footer, so readers switch to it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nq_dagster import artifacts

ARTIFACT_SUFFIX = ".npz"

LOG_PARTITION = "_log"
COMPACT_LOG_PARTS = 64  # a log table past this many parts is compacted into one
COMPACT_PARTS = int(os.environ.get("NQ_COMPACT_PARTS", "64"))  # raw_ticks of a source past this: compacted
COMPACT_BIG_ROWS = int(os.environ.get("NQ_COMPACT_BIG_ROWS", "1000000"))  # a part this big is left as it is
COMPACT_PREFIX = "compact-"  # a compacted part: its footer names the parts it replaces (Warehouse.compact)
_REPLACES: dict[tuple[str, str], list[str]] = {}
# parts of `predictions` / `raw_ticks` written by the streaming job and the server
LIVE_PARTS = ("stream-", "serve-")
LIVE_COMPACT_PREFIX = "stream-compact-"  # a compacted part of `predictions`' live parts (still a live part)


def is_compacted(stem: str) -> bool:
    return stem.startswith((COMPACT_PREFIX, LIVE_COMPACT_PREFIX))


@dataclass(frozen=True)
class ObjectStore:
    """Where tables and artifacts go in the k8s deployment: an S3-compatible bucket (pyarrow's S3 client)."""

    bucket: str
    prefix: str
    endpoint: str | None
    fs: pafs.FileSystem

    @classmethod
    def from_env(cls) -> ObjectStore | None:
        _secrets_from_files()
        bucket = os.environ.get("NQ_S3_BUCKET", "").strip()
        if not bucket:
            return None
        return cls.connect(bucket, os.environ.get("NQ_S3_PREFIX", "nq"), os.environ.get("NQ_S3_ENDPOINT", ""))

    @classmethod
    def connect(cls, bucket: str, prefix: str = "nq", endpoint: str = "") -> ObjectStore:
        """The bucket through pyarrow's S3 client; credentials from the usual AWS variables (or
        NQ_SECRETS_DIR)."""
        _secrets_from_files()
        endpoint = endpoint.strip() or None
        kw: dict[str, Any] = {"region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))}
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            kw.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            if not host:
                raise ValueError(f"NQ_S3_ENDPOINT={endpoint!r}: expected http(s)://host[:port]")
            kw.update(endpoint_override=host, scheme=scheme)
        return cls(bucket.strip(), prefix.strip("/"), endpoint, pafs.S3FileSystem(**kw))

    local: ClassVar[bool] = False  # DuckDB reads these parts through pyarrow datasets (the bucket's client)

    def path(self, *parts: str) -> str:
        return "/".join(p for p in (self.bucket, self.prefix, *parts) if p)

    def url(self) -> str:
        return f"s3://{self.path()}" + (f" at {self.endpoint}" if self.endpoint else "")

    def describe(self, key: str) -> str:
        return f"s3://{key}"

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.fs.open_output_stream(key) as fh:  # one PUT: the object appears whole or not at all
            fh.write(data)

    def put_parquet(self, key: str, table: pa.Table, store_schema: bool = True) -> None:
        pq.write_table(table, key, filesystem=self.fs, store_schema=store_schema, **parquet_options(table.schema))

    @contextlib.contextmanager
    def lock(self, names: list[str], timeout_s: float) -> Iterator[None]:
        """A bucket has no lock: one writer per source is the deployment's job (the run queue's one run per
        source, the server's one owner per source)."""
        yield


@dataclass(frozen=True)
class LocalStore:
    """Tables and artifacts in the data directory on a local (or mounted) file system, through pyarrow's
    LocalFileSystem: every read, listing and delete is the same call as on the bucket (`ObjectStore`). What
    differs is how a write is made atomic (a temporary file in the same directory, fsynced and renamed over
    the
    target; a bucket's PUT is atomic by itself) and that lock files work here."""

    home: Path
    fs: pafs.FileSystem = field(default_factory=pafs.LocalFileSystem)
    local: ClassVar[bool] = True  # DuckDB reads these parts with its own Parquet reader

    def path(self, *parts: str) -> str:
        return "/".join(p for p in (str(self.home), *parts) if p)

    def url(self) -> str:
        return str(self.home)

    def describe(self, key: str) -> str:
        return key

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(Path(key), data)

    def put_parquet(self, key: str, table: pa.Table, store_schema: bool = True) -> None:
        atomic_write_parquet(Path(key), table, store_schema)

    @contextlib.contextmanager
    def lock(self, names: list[str], timeout_s: float) -> Iterator[None]:
        """Exclusive inter-process locks (lock files under the data directory, taken in name order so two
        holders
        never wait on each other)."""
        d = self.home / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                fh = stack.enter_context(open(d / f"source-{name}.lock", "a+"))
                deadline = time.monotonic() + timeout_s
                while True:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"source {name!r}: another ingest held its lock for {timeout_s:g} s"
                                               ) from None
                        time.sleep(0.02)
                stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
            yield


def _secrets_from_files() -> None:
    """With NQ_SECRETS_DIR set (a Kubernetes secret mounted as files), each file there named like a variable
    this
    module reads (NQ_S3_*, AWS_*) sets it unless the environment already does."""
    d = os.environ.get("NQ_SECRETS_DIR")
    if not d or not os.path.isdir(d):
        return
    for name in os.listdir(d):
        if (name.startswith(("NQ_S3_", "AWS_"))) and name not in os.environ:
            with open(os.path.join(d, name), encoding="utf-8") as fh:
                os.environ[name] = fh.read().strip()


SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_home() -> Path:
    return Path(os.environ.get("NQ_HOME", ".nq")).absolute()


def _ns(t) -> int:
    """A timestamp (datetime, pandas Timestamp, numpy datetime64, or Parquet statistics' value) as ns since
    the
    epoch, UTC where it has no zone."""
    ts = pd.Timestamp(t)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).value


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


def parquet_options(schema: pa.Schema) -> dict:
    """How a part is encoded, by column type: strings (and a part's dictionary-encoded constants) by
    dictionary;
    timestamps and integers as deltas (ticks are regular: a few bits each); floats split by byte (so the
    compressor finds the repeated exponent bytes); snappy (zstd made parts 5 % smaller and the write 25 %
    slower).
    Footer statistics (min / max) for timestamps, integers and the source column: what readers prune by (time
    ranges, sources; the views read with hive partitioning off); on floats they cost a quarter of the write,
    on a
    part's constant file name and hash 6 ms per million rows, and nothing prunes by them. Against pyarrow's
    defaults on a 1M-tick part: 4x faster to write, half the size (bench/ingest_bench.py). Every reader
    (DuckDB,
    polars, pyarrow) decodes these standard encodings."""
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
    return {"compression": "snappy", "use_dictionary": dictionary, "column_encoding": encoding or None,
            "write_statistics": stats}


def atomic_write_parquet(path: str | os.PathLike, table: pa.Table | pd.DataFrame, store_schema: bool = True) -> None:
    """Write a Parquet file whole or not at all. `store_schema=False` leaves Arrow's own schema out of the
    file:
    dictionary-encoded columns (constants of a part) then read back as plain strings."""
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


class QueryRefused(ValueError):
    """A user query the sandbox does not run (a statement other than SELECT, a file outside the warehouse)."""


def check_source_name(source: str) -> str:
    if not SOURCE_RE.match(source or ""):
        raise ValueError(
            f"source name {source!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return source


class Warehouse:
    """The data directory and every read and write in it."""

    def __init__(self, home: str | Path | None = None, store: ObjectStore | LocalStore | None = None):
        self.home = Path(home).absolute() if home else default_home()
        self.store = store if store is not None else (ObjectStore.from_env() or LocalStore(self.home))
        self.fs = self.store.fs

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
        for p in (self.landing, self.processed, self.quarantine, self.tables_dir, self.artifacts_dir,
                  self.reports, self.dagster_home):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def remove_stale_temp_files(self, max_age_s: float = 3600.0) -> int:
        """Delete the temporary files of atomic writes that a killed process left behind (`.<name>.*.tmp`
        under
        warehouse/ and artifacts/, older than `max_age_s`, so a write in progress is never touched)."""
        now, n = time.time(), 0
        for base in (self.tables_dir, self.artifacts_dir):
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

    @property
    def where(self) -> str:
        return self.store.url()

    def _tables_root(self) -> str:
        return self.store.path("warehouse")

    # Parquet tables ---------------------------------------------------------
    def partition_dir(self, table: str, source: str) -> Path:
        # '_log' is no valid source name
        name = source if source == LOG_PARTITION else check_source_name(source)
        return self.tables_dir / table / f"source={name}"

    def write_table(self, table: str, source: str, df: pd.DataFrame | pa.Table, part: str = "data",
                    store_schema: bool = True) -> PurePosixPath:
        """Write one part of a source's partition, whole or not at all (`put_parquet`)."""
        # '_log' is no valid source name
        name = source if source == LOG_PARTITION else check_source_name(source)
        key = PurePosixPath(self._tables_root(), table, f"source={name}", f"{part}.parquet")
        tbl = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
        self.store.put_parquet(str(key), tbl, store_schema)
        return key

    def drop_other_parts(self, table: str, source: str, keep: str = "data", keep_prefixes: tuple = ()) -> int:
        """Remove every part of a source partition but `keep` and those named with `keep_prefixes`."""
        n = 0
        for p in self.table_parts(table, source):
            if p.stem != keep and not p.stem.startswith(keep_prefixes or ("\0",)):
                self._delete(p)
                n += 1
        return n

    def _delete(self, part: PurePosixPath) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(str(part))

    def table_parts(self, table: str, source: str | None = None) -> list[PurePosixPath]:
        """The live Parquet parts of a table (one source's partition, or all): every part file, less those a
        compacted part of the same partition replaces (`compact`)."""
        parts = self._part_files(table, source)
        replaced: set[tuple[str, str]] = set()
        for q in parts:
            if is_compacted(q.stem):
                replaced.update((q.parent.name, stem) for stem in self._replaces(q))
        return [q for q in parts if (q.parent.name, q.stem) not in replaced]

    def _part_files(self, table: str, source: str | None = None) -> list[PurePosixPath]:
        """Every part file of a table (or of one source's partition), temporary files of writes in progress
        (`.<name>.*.tmp`) left out."""
        base = PurePosixPath(self._tables_root(), table)
        if source is not None:
            base = base / f"source={source}"
        infos = self.fs.get_file_info(pafs.FileSelector(str(base), recursive=True, allow_not_found=True))
        parts = [PurePosixPath(i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
        return sorted(p for p in parts if p.parent.name.startswith("source=") and not p.name.startswith("."))

    def _replaces(self, part: Path | PurePosixPath) -> list[str]:
        """The part names a compacted part replaces (its footer's `nq_replaces`); compacted parts never change
        once written (a new name each time), so this is read once per process."""
        key = (str(self.where), str(part))
        if key not in _REPLACES:
            meta = pq.read_schema(str(part), filesystem=self.fs).metadata or {}
            _REPLACES[key] = json.loads(meta.get(b"nq_replaces", b"[]"))
        return _REPLACES[key]

    def compact(self, table: str, source: str, grace_s: float | None = None) -> dict:
        """Merge a source's parts of an append-only table (`raw_ticks`, the logs) into one compacted part,
        atomically; of `predictions`, only the append-only live parts (the streaming job's and the server's,
        named
        with LIVE_PARTS), into one live part (`stream-compact-...`): training's `data` part is rewritten by
        name
        and stays as it is.

        The compacted part is written whole (a temporary file renamed into place, or one PUT) under a new
        name,
        with the names of the parts it replaces in its footer; from the moment it exists every reader
        (`table_parts`, the DuckDB views, `nq query`) sees it instead of them, so a query sees the table
        either
        before or after, never both or a half. The replaced files stay `grace_s` (default NQ_COMPACT_GRACE_S,
        60 s) for queries that listed them before, and are deleted by a later compaction; a replaced name
        written
        again (a writer re-flushing a part by name) stays hidden. Parts of COMPACT_BIG_ROWS rows or more (1M;
        NQ_COMPACT_BIG_ROWS) are left as they are: what compaction saves is the cost per file, and merging the
        small new parts into the whole history again would make every compaction (the server's flusher runs
        one
        per source every 64 flushes) cost the history's size. One compaction or ingest of a source at a time
        (the
        source lock). Returns what it did."""
        if table not in ("raw_ticks", "ingest_log", "run_failures", "predictions"):
            raise ValueError(f"only the append-only tables (raw_ticks, the logs) and the live parts of predictions "
                             f"are compacted; {table!r} has parts rewritten by name (training's 'data' part)")
        grace = float(os.environ.get("NQ_COMPACT_GRACE_S", "60")) if grace_s is None else grace_s
        live_only = table == "predictions"
        with self.source_locks([source]):
            removed = self._remove_replaced(table, source, grace)
            parts = self.table_parts(table, source)
            if live_only:
                parts = [q for q in parts if q.stem.startswith(LIVE_PARTS)]
            sizes = {q: self.part_time_range(q)[2] for q in parts}
            out = {"source": source, "parts_before": len(parts), "rows": sum(sizes.values()), "removed_files": removed}
            parts = [q for q in parts if sizes[q] < COMPACT_BIG_ROWS]
            rows_before = sum(sizes[q] for q in parts)
            out["rows_merged"] = rows_before
            if len(parts) < 2:
                return {**out, "parts_after": out["parts_before"], "compacted": None}
            merged = pa.concat_tables([self.read_part(q) for q in parts], promote_options="permissive")
            if "timestamp" in merged.column_names:
                merged = merged.sort_by("timestamp")
            names = {q.stem for q in parts}
            for q in parts:
                if is_compacted(q.stem):
                    names.update(self._replaces(q))
            meta = dict(merged.schema.metadata or {})
            meta[b"nq_replaces"] = json.dumps(sorted(names)).encode()
            merged = merged.replace_schema_metadata(meta)
            if merged.num_rows != rows_before:
                raise AssertionError(f"{source}: compaction read {merged.num_rows} rows of {rows_before}")
            prefix = LIVE_COMPACT_PREFIX if live_only else COMPACT_PREFIX
            name = f"{prefix}{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
            self.write_table(table, source, merged, part=name)
            return {**out, "parts_after": len(self.table_parts(table, source)), "compacted": name}

    def compact_if_many(self, table: str, source: str, limit: int | None = None) -> dict | None:
        """`compact` once the partition holds more than `limit` (NQ_COMPACT_PARTS, 64) parts to merge: what
        the
        writers of many small parts (ingest, the streaming job, the server's flusher) call after a write, so
        reads stay a few files whatever the uptime."""
        limit = COMPACT_PARTS if limit is None else limit
        parts = self.table_parts(table, source)
        if table == "predictions":
            parts = [q for q in parts if q.stem.startswith(LIVE_PARTS)]
        return self.compact(table, source) if len(parts) > limit else None

    def _remove_replaced(self, table: str, source: str, grace_s: float) -> int:
        """Delete the files that compacted parts older than `grace_s` replace."""
        files = self._part_files(table, source)
        by_stem = {q.stem: q for q in files}
        now, n = time.time(), 0
        for q in files:
            if not is_compacted(q.stem) or q.stem not in by_stem or now - self._mtime(q) < grace_s:
                continue
            for stem in self._replaces(q):
                old = by_stem.pop(stem, None)
                if old is not None and old != q:
                    self._delete(old)
                    n += 1
        return n

    def _mtime(self, part: PurePosixPath) -> float:
        info = self.fs.get_file_info(str(part))
        return info.mtime.timestamp() if info.mtime else time.time()

    def read_part(self, part: PurePosixPath, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(str(part), columns=columns, filesystem=self.fs)

    def _footer(self, part: PurePosixPath) -> pq.FileMetaData:
        with self.fs.open_input_file(str(part)) as fh:
            return pq.ParquetFile(fh).metadata

    def part_rows(self, part: PurePosixPath) -> int:
        return self._footer(part).num_rows

    def part_time_range(self, part: PurePosixPath, column: str = "timestamp") -> tuple[int | None, int | None, int]:
        """(min, max, rows) of a part's `column` (as ns since the epoch) from its footer statistics: no data
        read.
        min / max are None where the part has no statistics (then every time filter reads it)."""
        meta = self._footer(part)
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if column not in names or meta.num_rows == 0:
            return None, None, meta.num_rows
        j = names.index(column)
        lo = hi = None
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(j).statistics
            if st is None or not st.has_min_max:
                return None, None, meta.num_rows
            a, b = _ns(st.min), _ns(st.max)
            lo, hi = (a if lo is None else min(lo, a)), (b if hi is None else max(hi, b))
        return lo, hi, meta.num_rows

    def read_table(self, table: str, source: str | None = None, after: pd.Timestamp | None = None,
                   until: pd.Timestamp | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        """A table (one source's partition, or all), or only its rows with after < timestamp <= until: parts
        whose footer statistics lie outside the window are not opened, the others are read with the filter, so
        the cost of reading new rows does not grow with the history."""
        parts = self.table_parts(table, source)
        if not parts:
            raise FileNotFoundError(
                f"no data in table {table!r}" + (f" for source {source!r}" if source else "")
                + f" under {self.where}; ingest data or materialize the asset first"
            )
        if after is None and until is None:
            tables = [self.read_part(p, columns) for p in parts]
        else:
            lo, hi = _ns(after) if after is not None else None, _ns(until) if until is not None else None
            tables = []
            for p in parts:
                pmin, pmax, _ = self.part_time_range(p)
                if (lo is not None and pmax is not None and pmax <= lo) or (hi is not None and pmin is not None
                                                                              and pmin > hi):
                    continue
                t = self.read_part(p, columns)
                ts = t.column("timestamp")
                keep = None
                if lo is not None:
                    keep = pc.greater(ts, pa.scalar(pd.Timestamp(lo, tz="UTC"), ts.type))
                if hi is not None:
                    le = pc.less_equal(ts, pa.scalar(pd.Timestamp(hi, tz="UTC"), ts.type))
                    keep = le if keep is None else pc.and_(keep, le)
                tables.append(t.filter(keep))
            if not tables:  # nothing in the window: an empty frame with the table's columns
                tables = [self.read_part(parts[-1], columns).slice(0, 0)]
        # permissive: parts written from pandas (large_string) and from the record schema (string) read as one
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    def stored_rows(self, table: str, source: str) -> int:
        """Rows of a source's partition, from the parts' footers."""
        return sum(self.part_time_range(p)[2] for p in self.table_parts(table, source))

    def sources(self, table: str = "raw_ticks") -> list[str]:
        names = {p.parent.name.split("=", 1)[1] for p in self.table_parts(table)}
        return sorted(names - {LOG_PARTITION})

    def table_names(self) -> list[str]:
        return sorted({p.parent.parent.name for p in self._part_files("")} - {""})

    # artifacts (models, reservoir state) --------------------------------------
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

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow file system of the tables and artifacts (local or the bucket's)."""
        return self.fs

    def artifact_sources(self, name: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.store.path("artifacts", name), allow_not_found=True))
        return sorted(PurePosixPath(i.path).stem for i in infos
                      if i.type == pafs.FileType.File and i.path.endswith(ARTIFACT_SUFFIX))

    def save_artifact(self, name: str, source: str, obj: Any) -> str:
        key = self._artifact_key(name, source)
        self.store.put_bytes(key, artifacts.dumps(obj))
        return key

    def load_artifact(self, name: str, source: str) -> Any:
        key = self._artifact_key(name, source)
        if not self.has_artifact(name, source):
            raise FileNotFoundError(f"{self.store.describe(key)}: no {name} for source {source!r}; run `nq run` (or "
                                    "`nq demo`) first")
        with self.fs.open_input_stream(key) as fh:
            return artifacts.loads(fh.read(), self.store.describe(key))

    @contextlib.contextmanager
    def source_locks(self, sources: list[str], timeout_s: float = 120.0) -> Iterator[None]:
        """Exclusive inter-process locks on sources, taken in name order (`LocalStore.lock`). Object storage
        has
        no such lock: there, one writer per source is the deployment's job (the run queue's one run per
        source)."""
        names = [s if s == LOG_PARTITION else check_source_name(s) for s in sources]
        with self.store.lock(names, timeout_s):
            yield

    # DuckDB -------------------------------------------------------------------
    # No database file: every query runs in a new in-memory DuckDB with one view per table over the table's
    # live
    # parts (`table_parts`, so compacted parts replace theirs at once), local and object storage alike. The
    # small
    # log tables (`ingest_log`, `run_failures`) are Parquet parts too (partition `_log`).

    def append_rows(self, table: str, df: pd.DataFrame, ddl: str | None = None) -> None:
        """Append rows to a small log table (`ingest_log`, `run_failures`): one more Parquet part, written
        atomically; past COMPACT_LOG_PARTS parts the log is compacted into one."""
        self._migrate_duckdb_file()
        part = f"{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
        self.write_table(table, LOG_PARTITION, df, part=part)
        if len(self.table_parts(table, LOG_PARTITION)) > COMPACT_LOG_PARTS:
            self.compact(table, LOG_PARTITION)

    def _migrate_duckdb_file(self) -> None:
        """A data directory from before this layout kept the log tables in `nq.duckdb`: copy them into Parquet
        parts once, then rename the file to `nq.duckdb.migrated` (nothing reads it afterwards)."""
        old = self.home / "nq.duckdb"
        if not old.exists():
            return
        with self.source_locks([LOG_PARTITION]):
            if not old.exists():
                return
            con = duckdb.connect(str(old), read_only=True)
            try:
                present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                                     "WHERE table_type = 'BASE TABLE'").fetchall()}
                copies = {n: con.execute(f'SELECT * FROM "{n}"').to_arrow_table()
                          for n in ("ingest_log", "run_failures") if n in present}
            finally:
                con.close()
            for n, tbl in copies.items():
                if tbl.num_rows:
                    self.write_table(n, LOG_PARTITION, tbl, part="migrated-from-nq-duckdb")
            os.replace(old, self.home / "nq.duckdb.migrated")

    def _register_views(self, con: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
        """One view per table the SQL names, over the table's live parts (schemas unified by name); the log
        tables are queryable while empty. Returns the table names."""
        from nq_dagster.ingest import INGEST_LOG_DDL
        from nq_dagster.sensors.failures import RUN_FAILURES_DDL

        self._migrate_duckdb_file()
        names = set()
        named = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql)}
        if named & {"information_schema", "duckdb_tables", "duckdb_views", "duckdb_columns"}:  # the catalogue
            named |= {n.lower() for n in [*self.table_names(), "ingest_log", "run_failures"]}
        for name in self.table_names():
            if name.lower() not in named:
                continue
            parts = self.table_parts(name)
            if not parts:
                continue
            names.add(name)
            if self.store.local:  # DuckDB's own Parquet reader on the files
                files = ", ".join("'" + str(q).replace("'", "''") + "'" for q in parts)
                con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{files}], union_by_name=true, hive_partitioning=false)')
            else:
                schema = pa.unify_schemas([pq.read_schema(str(q), filesystem=self.fs) for q in parts],
                                          promote_options="permissive")
                con.register(name, pads.dataset([str(q) for q in parts], schema=schema, format="parquet",
                                                filesystem=self.fs))
        for n, ddl in {"ingest_log": INGEST_LOG_DDL, "run_failures": RUN_FAILURES_DDL}.items():
            if n not in names and n in named:
                con.execute(ddl)
                names.add(n)
        return names

    def query(self, sql: str, timeout_s: float = 60.0) -> pd.DataFrame:
        """Run SQL over the warehouse's tables in a new in-memory DuckDB (nothing to lock: no database file;
        parts are immutable or replaced atomically)."""
        con = duckdb.connect()
        try:
            self._register_views(con, sql)
            return con.execute(sql).df()
        finally:
            con.close()

    def user_query(self, sql: str, timeout_s: float = 60.0) -> pd.DataFrame:
        """Run a user's SQL (`nq query`) in a sandbox: an in-memory DuckDB with one view per warehouse table
        (the
        log tables included), that may read the warehouse's Parquet and nothing else. Only SELECT
        statements run (COPY, EXPORT, ATTACH, INSTALL / LOAD, SET / RESET, CREATE ... are refused before
        anything
        executes); file access outside `warehouse/` is refused by DuckDB itself
        (`enable_external_access=false`
        with the warehouse as the one allowed directory, then `lock_configuration=true`). Raises QueryRefused
        with a one-line reason."""
        con = duckdb.connect()  # in memory: nothing the query does can reach a database file
        try:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as exc:
                raise QueryRefused(f"not valid SQL: {str(exc).splitlines()[0]}") from None
            if not statements:
                raise QueryRefused("no statement to run")
            for st in statements:
                if st.type != duckdb.StatementType.SELECT:
                    raise QueryRefused(f"only SELECT queries run here (the warehouse is read-only to `nq query`); "
                                       f"refused a {st.type.name} statement. To export, use `--format csv > file`")
            self._register_views(con, sql)
            allowed = str(self.tables_dir).replace("'", "''") + "/"
            con.execute(f"SET allowed_directories = ['{allowed}']")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            try:
                return con.execute(sql).df()
            except duckdb.PermissionException as exc:
                raise QueryRefused(f"the query reads outside the warehouse, which `nq query` does not allow "
                                   f"({str(exc).splitlines()[0]})") from None
        finally:
            con.close()
