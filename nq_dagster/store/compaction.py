"""Compaction: a source's many small parts merged into one, so reads stay a few files whatever the uptime.
Writers of many small parts (ingest, the streaming job, the server's flusher) call `compact_if_many` after a
write; `nq compact` calls `compact`. The compacted part is written whole under a new name and names the parts
it replaces in its footer, so every reader switches to it at once (`parts.table_parts`); the replaced files
are deleted by a later compaction once a grace period has passed. The limits are parameters (the `Warehouse`'s
`compact_parts`, `compact_big_rows`, `compact_grace_s`).
"""

from __future__ import annotations

import json
import time
import uuid

import pandas as pd
import pyarrow as pa

from nq_dagster.store.backends import Backend
from nq_dagster.store.parts import (
    delete_part,
    part_files,
    part_mtime,
    part_time_range,
    read_part,
    replaces,
    table_parts,
    write_part,
)
from nq_dagster.store.schemas import (
    APPEND_ONLY_TABLES,
    COMPACT_PREFIX,
    LIVE_COMPACT_PREFIX,
    LIVE_PARTS,
    is_compacted,
    partition_name,
)

LOCK_TIMEOUT_S = 120.0  # how long a compaction waits for the source's lock (an ingest of the source)


def compact(
    store: Backend, table: str, source: str, grace_s: float = 60.0, big_rows: int = 1_000_000
) -> dict:
    """Merge a source's parts of an append-only table (`raw_ticks`, the logs) into one compacted part,
    atomically; of `predictions`, only the append-only live parts (the streaming job's and the server's, named
    with LIVE_PARTS), into one live part (`stream-compact-...`): training's `data` part is rewritten by name
    and stays as it is.

    The compacted part is written whole (a temporary file renamed into place, or one PUT) under a new name,
    with the names of the parts it replaces in its footer; from the moment it exists every reader
    (`table_parts`, the DuckDB views, `nq query`) sees it instead of them, so a query sees the table either
    before or after, never both or a half. The replaced files stay `grace_s` seconds for queries that listed
    them before, and are deleted by a later compaction; a replaced name written again (a writer re-flushing a
    part by name) stays hidden. Parts of `big_rows` rows or more are left as they are: what compaction saves
    is the cost per file, and merging the small new parts into the whole history again would make every
    compaction (the server's flusher runs one per source each time `compact_parts` parts have gathered) cost
    the history's size. One compaction or ingest of a source at a time (the source lock). Returns what it
    did."""
    if table not in APPEND_ONLY_TABLES:
        raise ValueError(
            f"only the append-only tables (raw_ticks, the logs) and the live parts of "
            f"predictions are compacted; {table!r} has parts rewritten by name (training's "
            "'data' part)"
        )
    live_only = table == "predictions"
    with store.lock([partition_name(source)], LOCK_TIMEOUT_S):
        removed = remove_replaced(store, table, source, grace_s)
        parts = table_parts(store, table, source)
        if live_only:
            parts = [q for q in parts if q.stem.startswith(LIVE_PARTS)]
        sizes = {q: part_time_range(store, q)[2] for q in parts}
        out = {
            "source": source,
            "parts_before": len(parts),
            "rows": sum(sizes.values()),
            "removed_files": removed,
        }
        parts = [q for q in parts if sizes[q] < big_rows]
        rows_before = sum(sizes[q] for q in parts)
        out["rows_merged"] = rows_before
        if len(parts) < 2:
            return {**out, "parts_after": out["parts_before"], "compacted": None}
        merged = pa.concat_tables([read_part(store, q) for q in parts], promote_options="permissive")
        if "timestamp" in merged.column_names:
            merged = merged.sort_by("timestamp")
        names = {q.stem for q in parts}
        for q in parts:
            if is_compacted(q.stem):
                names.update(replaces(store, q))
        meta = dict(merged.schema.metadata or {})
        meta[b"nq_replaces"] = json.dumps(sorted(names)).encode()
        merged = merged.replace_schema_metadata(meta)
        if merged.num_rows != rows_before:
            raise AssertionError(f"{source}: compaction read {merged.num_rows} rows of {rows_before}")
        prefix = LIVE_COMPACT_PREFIX if live_only else COMPACT_PREFIX
        name = f"{prefix}{pd.Timestamp.now(tz='UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
        write_part(store, table, source, merged, part=name)
        return {**out, "parts_after": len(table_parts(store, table, source)), "compacted": name}


def compact_if_many(
    store: Backend, table: str, source: str, limit: int, grace_s: float = 60.0, big_rows: int = 1_000_000
) -> dict | None:
    """`compact` once the partition holds more than `limit` parts to merge (of `predictions`, live parts)."""
    parts = table_parts(store, table, source)
    if table == "predictions":
        parts = [q for q in parts if q.stem.startswith(LIVE_PARTS)]
    return compact(store, table, source, grace_s, big_rows) if len(parts) > limit else None


def remove_replaced(store: Backend, table: str, source: str, grace_s: float) -> int:
    """Delete the files that compacted parts older than `grace_s` replace."""
    files = part_files(store, table, source)
    by_stem = {q.stem: q for q in files}
    now, n = time.time(), 0
    for q in files:
        if not is_compacted(q.stem) or q.stem not in by_stem or now - part_mtime(store, q) < grace_s:
            continue
        for stem in replaces(store, q):
            old = by_stem.pop(stem, None)
            if old is not None and old != q:
                delete_part(store, old)
                n += 1
    return n
