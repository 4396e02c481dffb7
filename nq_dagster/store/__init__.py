"""The bottom layer: everything stored, and nothing above it. Parquet parts are the record and DuckDB the
query engine; tables and artifacts live on a backend (local files or an S3-compatible bucket, chosen from
explicit parameters or a `Settings` object), the landing area and reports in the local data directory. Modules
by responsibility: `backends` (where), `atomic` (files written whole), `parts` (Parquet parts, footers, rows
stored), `compaction`, `locks`, `logs` (the log tables), `views` (DuckDB views and the `nq query` sandbox),
`schemas` (names, partition conventions, DDL), `artifacts` (the pickle-free codec), `leases` (the server
replicas' leases) and `warehouse` (the `Warehouse` facade over them). This package imports nothing from
nq_dagster but `nq_dagster.settings`, and never dagster or torch.
"""

from nq_dagster.store.artifacts import ArtifactError, register
from nq_dagster.store.atomic import (
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_text,
    parquet_options,
)
from nq_dagster.store.backends import Backend, LocalStore, ObjectStore
from nq_dagster.store.leases import LEASE_TTL_S, lease_path, replica_leases, serving_replica, write_lease
from nq_dagster.store.schemas import (
    ARTIFACT_SUFFIX,
    COMPACT_PREFIX,
    INGEST_LOG_DDL,
    LIVE_COMPACT_PREFIX,
    LIVE_PARTS,
    LOG_PARTITION,
    LOG_TABLES,
    RUN_FAILURES_DDL,
    SOURCE_RE,
    STORED_SOURCE_RE,
    TENANT_SEP,
    check_source_name,
    is_compacted,
    partition_name,
)
from nq_dagster.store.views import QueryRefused
from nq_dagster.store.warehouse import Warehouse

__all__ = [
    "ARTIFACT_SUFFIX",
    "COMPACT_PREFIX",
    "INGEST_LOG_DDL",
    "LEASE_TTL_S",
    "LIVE_COMPACT_PREFIX",
    "LIVE_PARTS",
    "LOG_PARTITION",
    "LOG_TABLES",
    "RUN_FAILURES_DDL",
    "SOURCE_RE",
    "STORED_SOURCE_RE",
    "TENANT_SEP",
    "ArtifactError",
    "Backend",
    "LocalStore",
    "ObjectStore",
    "QueryRefused",
    "Warehouse",
    "atomic_write_bytes",
    "atomic_write_parquet",
    "atomic_write_text",
    "check_source_name",
    "is_compacted",
    "lease_path",
    "parquet_options",
    "partition_name",
    "register",
    "replica_leases",
    "serving_replica",
    "write_lease",
]
