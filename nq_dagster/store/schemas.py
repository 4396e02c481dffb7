"""Names and shapes of what the warehouse stores: the valid source names, the partition and part-name
conventions every reader and writer agrees on (the log partition, the live parts of the streaming job and the
server, compacted parts), the artifact file suffix, and the DDL of the small log tables (`ingest_log`,
`run_failures`), which the DuckDB views create empty so that a query over a log with no row yet still runs.
"""

from __future__ import annotations

import re

SOURCE_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"
)  # \Z: "$" would also match before a final newline
# A tenant's source `x` is stored as `<tenant>~x` (store/names.py): `~` is in no name a user types
# (SOURCE_RE), so no user can make or reach another namespace by naming it; storage, the engine and the
# Dagster layer take either form.
TENANT_SEP = "~"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
STORED_SOURCE_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_-]{0,31}~)?[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

LOG_PARTITION = "_log"  # the partition of the log tables ('_log' is no valid source name)
LIVE_PARTS = ("stream-", "serve-")  # parts the streaming job and the server write (predictions, raw_ticks)
COMPACT_PREFIX = "compact-"  # a compacted part: its footer names the parts it replaces (`compaction.compact`)
LIVE_COMPACT_PREFIX = "stream-compact-"  # a compacted part of `predictions`' live parts (still a live part)
ARTIFACT_SUFFIX = ".npz"

# the tables whose parts are only ever added (of `predictions`, the live parts): what compaction merges
APPEND_ONLY_TABLES = ("raw_ticks", "ingest_log", "run_failures", "predictions")

INGEST_LOG_DDL = (
    "CREATE TABLE IF NOT EXISTS ingest_log (content_hash VARCHAR, file VARCHAR, sources VARCHAR, "
    "rows_accepted BIGINT, rows_rejected BIGINT, status VARCHAR, reason VARCHAR, ingested_at TIMESTAMPTZ)"
)
RUN_FAILURES_DDL = (
    "CREATE TABLE IF NOT EXISTS run_failures (run_id VARCHAR, job VARCHAR, source VARCHAR, "
    "failed_at TIMESTAMPTZ, step VARCHAR, error VARCHAR)"
)
LOG_TABLES = {"ingest_log": INGEST_LOG_DDL, "run_failures": RUN_FAILURES_DDL}


def check_source_name(source: str) -> str:
    """`source` if it is a source name as stored (a plain name, or a tenant's `<tenant>~<name>`)."""
    if not STORED_SOURCE_RE.match(source or ""):
        raise ValueError(
            f"source name {source!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit (a tenant's source: <tenant>~<name>, the tenant 1-32 letters, "
            "digits, '_' or '-')"
        )
    return source


def partition_name(source: str) -> str:
    """The partition a source's rows go to: the source itself (checked), or the log tables' `_log`."""
    return source if source == LOG_PARTITION else check_source_name(source)


def is_compacted(stem: str) -> bool:
    return stem.startswith((COMPACT_PREFIX, LIVE_COMPACT_PREFIX))
