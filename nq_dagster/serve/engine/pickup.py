"""Rows that reach `raw_ticks` from files (`nq ingest`, the landing sensor) for a source this replica serves
are predicted by the server too, as the streaming job would predict them (the streaming job leaves served
sources to the server, see `store.leases.serving_replica`).

The watcher calls `pick_up` for each served source: parts not seen before (and not the server's own `serve-*`
parts) holding rows after the source's last tick are read, and those rows queued like a request marked
`stored` (already in raw_ticks: only their predictions are written).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from nq_dagster.ingest import primary_column
from nq_dagster.store import Warehouse


class FilePickup:
    def __init__(
        self, wh: Warehouse, last_ts: Callable[[str], int], submit: Callable[[list[tuple], str], object]
    ):
        """`last_ts(source)`: the source's last tick (ns); `submit(rows, label)` queues stored rows and
        waits."""
        self.wh, self.last_ts, self.submit = wh, last_ts, submit
        self._seen_parts: dict[str, set[str]] = {}

    def pick_up(self, source: str) -> None:
        seen = self._seen_parts.setdefault(source, set())
        parts = [
            p
            for p in self.wh.table_parts("raw_ticks", source)
            if not p.stem.startswith("serve-") and p.stem not in seen
        ]
        if not parts:
            return
        last = self.last_ts(source)
        seen.update(p.stem for p in parts)
        # a part whose footer says it holds nothing newer (a compacted part of the history) is not read
        parts = [p for p in parts if (self.wh.part_time_range(p)[1] or last + 1) > last]
        if not parts:
            return
        raw = pd.concat([self.wh.read_part(p).to_pandas() for p in parts])
        col = primary_column(list(raw.columns))
        raw = raw.dropna(subset=[col])
        ts = pd.to_datetime(raw["timestamp"], utc=True)
        raw = raw[(ts > pd.Timestamp(last, tz="UTC")).to_numpy()].sort_values("timestamp")
        if len(raw):
            rows = [
                (source, t.isoformat(), float(v))
                for t, v in zip(pd.to_datetime(raw["timestamp"], utc=True), raw[col], strict=True)
            ]
            self.submit(rows, f"raw_ticks of {source}")
