"""The flusher: the journal's closed segments into the tables, the interval fsync, the rotation clock.

Every `flush_interval_s` the flusher asks the worker to rotate (close the open segment, take the states of its
sources); the closed segment comes back here with its connection, which is closed here (SQLite's checkpoint),
and becomes a `raw_ticks` part and a `predictions` part per source (named by the segment, so writing it again
after a crash replaces, never duplicates), then each source's `live_state` is saved and the segment deleted.

Segments are stored in order: one that fails to store (a storage error) stays first and is tried again every
RETRY_S, so a later segment's states are never saved before an earlier segment's rows; status shows the error.
A segment that cannot be read whole (`ticklog.read_segment`) has what could be read stored and is moved to
quarantine with a warning naming the file and what was lost (its parts named `...-salvaged`, de-duplicated
against everything stored, since a part of its own name may already hold more of it).

Each tick's row goes to `raw_ticks` under the source's lock (the one an ingest holds from its check to its
write): a timestamp already stored by another part (an `nq ingest` of the same source while these ticks waited
here) keeps the stored row, and a different value is reported (`conflicts`, a warning naming the source, the
timestamp and both values), so each (source, timestamp) is stored once with one value. Then the source's parts
are compacted once they are many.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nq_dagster.fusion.model import ServingState
from nq_dagster.fusion.record import records_table
from nq_dagster.ingest import primary_column
from nq_dagster.serve.engine.records import to_table_record
from nq_dagster.serve.engine.ticklog import (
    LoggedTick,
    SegmentRead,
    TickLog,
    quarantine_segment,
    read_segment,
    remove_segment,
)
from nq_dagster.store import Warehouse

log = logging.getLogger("nq.serve")

# named by the journal segment: unique across restarts, the same name when a segment is flushed again
SERVE_PART = "serve-r{replica}-{segment}"
SALVAGED = "-salvaged"  # the parts of a damaged segment's readable rows
RETRY_S = 1.0  # a segment that failed to store is tried again after this long
RANGES_KEPT = 100_000  # parts' time spans remembered (`_time_range`), a few MB at most
LOCK_S = 30.0  # the source's lock (an ingest holds it from its check to its write); past it: retried


@dataclass
class ClosedSegment:
    """A segment the worker closed, with its sources' states after its last tick and its writer's connection
    (None when it was dropped after an error), closed here."""

    path: Path
    states: dict[str, ServingState]
    conn: sqlite3.Connection | None = None


class Flusher:
    def __init__(
        self,
        wh: Warehouse,
        replica: int,
        ticklog: TickLog,
        fsync_interval_s: float,
        flush_interval_s: float,
        rotate: Callable[[], object],
        stop: threading.Event,
    ):
        """`rotate()` asks the worker to close the open segment and `hand` it here."""
        self.wh, self.replica, self.ticklog = wh, replica, ticklog
        self.fsync_interval_s, self.flush_interval_s = fsync_interval_s, flush_interval_s
        self.rotate, self.stop = rotate, stop
        self._q: queue.Queue[ClosedSegment | None] = queue.Queue()
        self._pending: collections.deque[ClosedSegment] = collections.deque()
        self._retry_at = 0.0
        self._value_col: dict[str, str] = {}
        self._ranges: dict[str, tuple[int | None, int | None]] = {}  # part -> its time span (`_time_range`)
        self.last_error: str | None = None
        self.flushed_segments = 0
        self.quarantined = 0  # segments moved to quarantine since the start
        self.conflicts = 0  # served ticks whose timestamp was stored meanwhile with another value

    def hand(self, segment: ClosedSegment) -> None:
        self._q.put(segment)

    def finish(self) -> None:
        """Store what was handed, then end the thread (shutdown)."""
        self._q.put(None)

    def backlog(self) -> int:
        """Closed segments handed here and not stored yet."""
        return len(self._pending) + self._q.qsize()

    def run(self) -> None:
        next_sync = time.monotonic()
        # the first rotation one interval after the start, as every later one: rotating at once stored what
        # the first requests had journaled whenever this thread started late (a loaded machine)
        next_rotate = next_sync + self.flush_interval_s
        while True:
            try:
                item = self._q.get(timeout=self.fsync_interval_s)
            except queue.Empty:
                item = False
            if item is None:
                while not self._q.empty():
                    nxt = self._q.get_nowait()
                    if nxt:
                        self._pending.append(nxt)
                self._store_pending(now=True)  # what still fails stays on disk: the next start stores it
                return
            if item:
                self._pending.append(item)
            self._store_pending()
            now = time.monotonic()
            if now >= next_sync and self.ticklog.sync_if_dirty():
                next_sync = now + self.fsync_interval_s
            if now >= next_rotate and not self.stop.is_set():
                next_rotate = now + self.flush_interval_s
                self.rotate()

    def _store_pending(self, now: bool = False) -> None:
        """The handed segments in order, until one fails (then it waits RETRY_S, unless `now`)."""
        if not now and time.monotonic() < self._retry_at:
            return
        while self._pending:
            seg = self._pending[0]
            conn, seg.conn = seg.conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):  # the checkpoint may fail; the WAL is read as it is
                    conn.close()
            if not self.flush_segment(seg.path, seg.states):
                self._retry_at = time.monotonic() + RETRY_S
                return
            self._pending.popleft()

    def flush_segment(self, path: Path, states: dict[str, ServingState] | None) -> bool:
        """A closed segment into `raw_ticks` and `predictions` parts named by it, then the states; then delete
        it (quarantine it when it could not be read whole). Whether it was stored; on failure it stays."""
        if not path.exists():  # (never: a handed segment had committed rows; but it must not block the rest)
            log.error(json.dumps({"event": "journal_segment_missing", "segment": str(path)}))
            return True
        try:
            read = read_segment(path)
            part = SERVE_PART.format(replica=self.replica, segment=path.stem) + (
                SALVAGED if read.damaged else ""
            )
            by_source: dict[str, list[LoggedTick]] = {}
            for t in read.ticks:
                by_source.setdefault(t.source, []).append(t)
            for s, recs in by_source.items():
                fresh = [t for t in recs if not t.stored]
                if fresh:
                    with self.wh.source_locks([s], timeout_s=LOCK_S):
                        fresh = self._not_stored(s, part, fresh)
                        if fresh:
                            self.wh.write_table("raw_ticks", s, self._raw_rows(s, part, fresh), part=part)
                if read.damaged:  # a part of the segment's own name may hold some of these records already
                    recs = self._unrecorded(s, part, recs)
                if recs:
                    records = records_table([to_table_record(t.record) for t in recs])
                    self.wh.write_table("predictions", s, records, part=part)
                if states and s in states:
                    self.wh.save_artifact("live_state", s, states[s])
            if read.damaged:
                self._quarantine(path, read, len(read.ticks))
            else:
                remove_segment(path)
            self.flushed_segments += 1
            self.last_error = None
            self._compact(by_source)
            return True
        except Exception as exc:  # noqa: BLE001 - the segment stays and is tried again
            self.last_error = f"{path.name}: {type(exc).__name__}: {exc}"
            log.exception("flush failed")
            return False

    def _quarantine(self, path: Path, read: SegmentRead, stored: int) -> None:
        reason = f"stored {stored} tick(s) it could read; could not read: {read.describe()}"
        dest = quarantine_segment(path, reason)
        self.quarantined += 1
        log.warning(
            json.dumps(
                {
                    "event": "journal_segment_quarantined",
                    "segment": str(path),
                    "moved_to": str(dest),
                    "ticks_stored": stored,
                    "rows_unreadable": len(read.lost) + (read.error is not None),
                    "lost": read.describe(),
                }
            )
        )

    def _raw_rows(self, s: str, part: str, fresh: list[LoggedTick]) -> pa.Table:
        col = self._value_column(s)
        # the rows' identity (time and value of each tick, in order), as a file's content hash is for ingested
        # parts; not the whole records, which would cost the flusher most of its time
        identity = json.dumps([[t.ts_ns, t.value] for t in fresh]).encode()
        raw = pd.DataFrame(
            {
                "source": s,
                "timestamp": pd.to_datetime([t.ts_ns for t in fresh], utc=True),
                col: [t.value for t in fresh],
                "file": f"nq-serve/{part}",
                "content_hash": hashlib.sha256(identity).hexdigest(),
            }
        )
        return self._like_ingested(s, raw)

    def _stored(self, table: str, s: str, part: str, ticks: list[LoggedTick], column: str | None) -> dict:
        """{ts_ns: value (None without `column`)} of the ticks' timestamps that other parts of the source's
        `table` hold (parts outside the ticks' span are skipped by their footers)."""
        want = {t.ts_ns for t in ticks}
        lo, hi = min(want), max(want)
        out: dict[int, object] = {}
        for p in self.wh.table_parts(table, s):
            if p.stem == part:
                continue
            pmin, pmax = self._time_range(p)
            if pmin is not None and (pmax < lo or pmin > hi):
                continue
            names = pq.read_schema(str(p), filesystem=self.wh.filesystem).names
            cols = ["timestamp"] + ([column] if column and column in names else [])
            df = self.wh.read_part(p, columns=cols).to_pandas()
            stamps = pd.to_datetime(df["timestamp"], utc=True).astype("datetime64[ns, UTC]").astype("int64")
            vals = df[cols[1]].to_numpy() if len(cols) > 1 else [None] * len(df)
            for t, v in zip(stamps.to_numpy(), vals, strict=True):
                if int(t) in want:
                    out[int(t)] = v
        return out

    def _time_range(self, p) -> tuple[int | None, int | None]:
        """A part's time span from its footer, remembered: parts are written once under their name (a name
        written again holds the same rows), so each flush reads only the footers of new parts."""
        key = str(p)
        if key not in self._ranges:
            if len(self._ranges) > RANGES_KEPT:
                self._ranges.clear()
            self._ranges[key] = self.wh.part_time_range(p)[:2]
        return self._ranges[key]

    def _not_stored(self, s: str, part: str, fresh: list[LoggedTick]) -> list[LoggedTick]:
        """The ticks whose timestamp no other part of `raw_ticks` holds; a stored one with another value is
        reported (the stored row stays: what an ingest stored is what `nq query` and training already saw)."""
        col = self._value_column(s)
        stored = self._stored("raw_ticks", s, part, fresh, col)
        if not stored:
            return fresh
        keep = []
        for t in fresh:
            if t.ts_ns not in stored:
                keep.append(t)
                continue
            old = stored[t.ts_ns]
            same = old is not None and float(old) == float(self._as_stored(t.value, np.asarray(old).dtype))
            if not same:
                self.conflicts += 1
                log.warning(
                    json.dumps(
                        {
                            "event": "tick_conflict",
                            "source": s,
                            "timestamp": pd.Timestamp(t.ts_ns, tz="UTC").isoformat(),
                            "stored_value": None if old is None else float(old),
                            "served_value": t.value,
                            "kept": "stored",
                            "detail": "the timestamp was stored (an ingest) while the served tick waited in "
                            "the journal; the served prediction stays in predictions",
                        }
                    )
                )
        return keep

    @staticmethod
    def _as_stored(value: float, dtype: np.dtype) -> float:
        """The value as a column of `dtype` holds it (a float32 column rounds: equal there is equal)."""
        return float(np.asarray(value).astype(dtype)) if dtype.kind == "f" else value

    def _unrecorded(self, s: str, part: str, recs: list[LoggedTick]) -> list[LoggedTick]:
        done = self._stored("predictions", s, part, recs, None)
        return [t for t in recs if t.ts_ns not in done]

    def _compact(self, sources: Iterable[str]) -> None:
        """A part per source every flush interval: merged past the store's part limit. The segment is already
        stored: a compaction that fails (or waits out an ingest's lock) is logged and retried at the next
        flush, never a flush error."""
        for s in sources:
            for table in ("raw_ticks", "predictions"):
                try:
                    done = self.wh.compact_if_many(table, s)
                except Exception as exc:  # noqa: BLE001 - the parts stay as they are, readable
                    log.warning(
                        json.dumps(
                            {
                                "event": "compaction_failed",
                                "table": table,
                                "source": s,
                                "error": f"{type(exc).__name__}: {exc}",
                            }
                        )
                    )
                    continue
                if done:
                    log.info(
                        json.dumps(
                            {
                                "event": "compacted",
                                "table": table,
                                "source": s,
                                "parts_before": done["parts_before"],
                                "parts_after": done["parts_after"],
                            }
                        )
                    )

    def _ingested_parts(self, source: str) -> list[Path]:
        return [p for p in self.wh.table_parts("raw_ticks", source) if not p.stem.startswith("serve-")]

    def _like_ingested(self, source: str, raw: pd.DataFrame) -> pa.Table:
        """Rows in the schema of the source's ingested parts (timestamp unit, column types), so the partition
        reads as one table."""
        table = pa.Table.from_pandas(raw, preserve_index=False)
        parts = self._ingested_parts(source)
        if parts:
            schema = pq.read_schema(str(parts[0]), filesystem=self.wh.filesystem).remove_metadata()
            if set(schema.names) == set(table.column_names):
                return table.select(schema.names).cast(schema)
        return table

    def _value_column(self, source: str) -> str:
        if source not in self._value_col:
            parts = self._ingested_parts(source)
            names = pq.read_schema(str(parts[0]), filesystem=self.wh.filesystem).names if parts else ["value"]
            self._value_col[source] = primary_column(names)
        return self._value_col[source]
