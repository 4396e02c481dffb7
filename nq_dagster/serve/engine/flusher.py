"""The flusher: the log's closed segments into the tables, the interval fsync, the rotation clock.

Every `flush_interval_s` the flusher asks the worker to rotate (close the open segment, take the states of its
sources); the closed segment comes back here and becomes a `raw_ticks` part and a `predictions` part per
source (named by the segment, so writing it again after a crash replaces, never duplicates), then each
source's `live_state` is saved and the segment deleted. A segment that fails to store stays on disk and is
recovered at the next start; status shows the error. Then the source's parts are compacted once they are many.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nq_dagster.fusion.model import ServingState
from nq_dagster.fusion.record import records_table
from nq_dagster.ingest import primary_column
from nq_dagster.serve.engine.records import to_table_record
from nq_dagster.serve.engine.ticklog import TickLog, read_segment
from nq_dagster.store import Warehouse

log = logging.getLogger("nq.serve")

# named by the log segment: unique across restarts, the same name when a segment is flushed again
SERVE_PART = "serve-r{replica}-{segment}"


@dataclass(frozen=True)
class ClosedSegment:
    """A segment the worker closed, with its sources' states after its last tick."""

    path: Path
    states: dict[str, ServingState]


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
        self._value_col: dict[str, str] = {}
        self.last_error: str | None = None
        self.flushed_segments = 0

    def hand(self, segment: ClosedSegment) -> None:
        self._q.put(segment)

    def finish(self) -> None:
        """Store what was handed, then end the thread (shutdown)."""
        self._q.put(None)

    def run(self) -> None:
        next_sync = next_rotate = time.monotonic()
        while True:
            try:
                item = self._q.get(timeout=self.fsync_interval_s)
            except queue.Empty:
                item = False
            if item is None:
                while not self._q.empty():
                    nxt = self._q.get_nowait()
                    if nxt:
                        self.flush_segment(nxt.path, nxt.states)
                return
            if item:
                self.flush_segment(item.path, item.states)
            now = time.monotonic()
            if now >= next_sync and self.ticklog.sync_if_dirty():
                next_sync = now + self.fsync_interval_s
            if now >= next_rotate and not self.stop.is_set():
                next_rotate = now + self.flush_interval_s
                self.rotate()

    def flush_segment(self, path: Path, states: dict[str, ServingState] | None) -> None:
        """A closed segment into `raw_ticks` and `predictions` parts named by it, then the states; then delete
        it."""
        try:
            ticks = read_segment(path)
            part = SERVE_PART.format(replica=self.replica, segment=path.stem)
            by_source: dict[str, list] = {}
            for t in ticks:
                by_source.setdefault(t.source, []).append(t)
            for s, recs in by_source.items():
                fresh = [t for t in recs if not t.stored]
                if fresh:
                    col = self._value_column(s)
                    # the rows' identity (time and value of each tick, in order), as a file's content hash is
                    # for ingested parts; not the whole records, which would cost the flusher most of its time
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
                    self.wh.write_table("raw_ticks", s, self._like_ingested(s, raw), part=part)
                records = records_table([to_table_record(t.record) for t in recs])
                self.wh.write_table("predictions", s, records, part=part)
                if states and s in states:
                    self.wh.save_artifact("live_state", s, states[s])
            path.unlink(missing_ok=True)
            self.flushed_segments += 1
            self.last_error = None
            self._compact(by_source)
        except Exception as exc:  # noqa: BLE001 - the segment stays and is retried at the next start
            self.last_error = f"{path.name}: {type(exc).__name__}: {exc}"
            log.exception("flush failed")

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
