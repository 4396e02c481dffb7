"""Prediction records the engine keeps and finds again: the recent ones of each source in memory (re-posts,
the dashboard's `/api/v1/predictions`), older ones read back from the `predictions` table when a tick is
posted again after its record left memory; and the conversions between the API's record and a table row.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict

import pandas as pd
import pyarrow.dataset as pads

from nq_dagster.fusion.record import jsonable
from nq_dagster.store import Warehouse

CACHE_PER_SOURCE = 20_000  # recent records kept in memory per source (re-posts, the dashboard)


def record_from_row(row: dict) -> dict:
    """A `predictions` table row back into the API's record (nested results as objects)."""
    rec = {k: v for k, v in row.items() if k not in ("p_down", "p_hold", "p_up")}
    ms = row["processing_time_ms"]
    rec["processing_time_ms"] = None if pd.isna(ms) else float(ms)
    rec["probabilities"] = {"down": row["p_down"], "hold": row["p_hold"], "up": row["p_up"]}
    for k in ("neuromorphic_results", "quantum_results"):
        rec[k] = json.loads(row[k])
    return jsonable(rec)


def to_table_record(rec: dict) -> dict:
    """A JSON record (as in the log) with the timestamps that `records_table` needs."""
    return {**rec, "timestamp": pd.Timestamp(rec["timestamp"]), "train_end": pd.Timestamp(rec["train_end"])}


class RecordCache:
    """Per source, the last CACHE_PER_SOURCE records by tick time (ns); the worker thread writes it."""

    def __init__(self, wh: Warehouse):
        self.wh = wh
        self._by_source: dict[str, OrderedDict[int, dict]] = {}

    def of(self, source: str) -> OrderedDict[int, dict]:
        """The source's records, to add to (`trim` after a batch)."""
        return self._by_source.setdefault(source, OrderedDict())

    def trim(self, source: str) -> None:
        cache = self._by_source.get(source)
        while cache is not None and len(cache) > CACHE_PER_SOURCE:
            cache.popitem(last=False)

    def recent(self, source: str, limit: int = 100) -> list[dict]:
        cache = self._by_source.get(source)
        if not cache:
            return []
        return list(itertools.islice(reversed(cache.values()), limit))[::-1]

    def stored(self, source: str, ts_ns: int) -> dict | None:
        """The record served for (source, time), from memory or from the server's and the streaming job's
        `predictions` parts; None when the tick was never predicted."""
        rec = self._by_source.get(source, {}).get(ts_ns)
        if rec is not None:
            return rec
        parts = [
            str(p)
            for p in self.wh.table_parts("predictions", source)
            if p.stem.startswith(("serve-", "stream-"))
        ]
        if not parts:
            return None
        ds = pads.dataset(parts, format="parquet", filesystem=self.wh.filesystem)
        t = ds.to_table(filter=pads.field("timestamp") == pd.Timestamp(ts_ns, tz="UTC"))
        return record_from_row(t.slice(0, 1).to_pandas().iloc[0].to_dict()) if t.num_rows else None
