"""Starting again from the log: at a start after a crash, and when a prediction process dies.

Recovery. Journal segments a dead process left hold acknowledged ticks the tables may not: each source's state
is advanced over its ticks after the state's last one, the records go back into memory, and the segment is
flushed as the flusher would have flushed it (a damaged one: what could be read, then quarantined).

Shard restart. With `--processes` > 1 a prediction process may die (OOM, kill -9). The call that found it dead
(`ShardGone`) starts it again, loads its sources from their saved states (live_state, else training's), moves
them on over the ticks the log holds after them, and is made once more: the batch waits instead of failing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from nq_dagster.fusion.shards import ShardGone
from nq_dagster.serve.engine.records import RecordCache
from nq_dagster.serve.engine.ticklog import TickLog, read_segment
from nq_dagster.serve.engine.watcher import Models

log = logging.getLogger("nq.serve")
T = TypeVar("T")


class ShardRestarts:
    """Every predictor call of the worker goes through `predict`."""

    def __init__(self, predictor, models: Models, ticklog: TickLog):
        self.predictor, self.models, self.ticklog = predictor, models, ticklog

    def predict(self, call: Callable[[], T]) -> T:
        """call() on the predictor; a prediction process that died is started again and the call made
        again."""
        try:
            return call()
        except ShardGone as exc:
            self.restart(exc.shard)
            return call()

    def restart(self, k: int) -> None:
        """Prediction process k again, its sources as at a start after a crash. The log is read first: a
        segment the flusher stores and deletes meanwhile has its states saved before it goes."""
        logged = self.ticklog.ticks()
        lost = self.predictor.restart(k)
        for s in lost:
            self.models.load(s)
        replayed = {}
        for s in lost:
            if s not in self.predictor.sources():
                continue  # its model failed to load: status says so
            last = self.predictor.last_ts(s)
            ticks = dict(sorted((t.ts_ns, t.value) for t in logged if t.source == s and t.ts_ns > last))
            if ticks:
                self.predictor.advance(s, list(ticks.values()), np.array(list(ticks), dtype=np.int64))
            replayed[s] = len(ticks)
        log.error(
            json.dumps(
                {
                    "event": "prediction_process_restarted",
                    "process": k,
                    "sources": lost,
                    "ticks_replayed": replayed,
                }
            )
        )


def recover(
    predictor, ticklog: TickLog, cache: RecordCache, flush_segment: Callable[[Path, dict], bool]
) -> None:
    """Segments a dead process left: advance the states over their ticks, then flush them (before the engine
    opens a segment of its own). A segment that cannot be read whole gives what it can (the flusher stores
    that, quarantines the file and names what was lost); the others are recovered all the same."""
    ticklog.remove_orphans()
    for path in ticklog.segments():
        try:
            read = read_segment(path)
        except (sqlite3.Error, OSError) as exc:  # the storage, not the file: starting without it would fork
            raise RuntimeError(
                f"journal segment {path} cannot be read now ({type(exc).__name__}: {exc}); nothing was "
                "changed. Fix: make the data directory readable and writable, then start again"
            ) from exc
        touched = set()
        for t in read.ticks:
            if t.source in predictor.sources() and t.ts_ns > predictor.last_ts(t.source):
                predictor.advance(t.source, [t.value], np.array([t.ts_ns], dtype=np.int64))
                touched.add(t.source)
            cache.of(t.source)[t.ts_ns] = t.record
        loaded = set(predictor.sources())
        states = predictor.serving_states(sorted({t.source for t in read.ticks} & loaded))
        stored = flush_segment(path, states)
        event = {
            "event": "wal_recovered" if stored else "wal_recovery_failed",
            "segment": path.name,
            "ticks": len(read.ticks),
            "states_advanced": sorted(touched),
        }
        if read.damaged:
            event["unreadable"] = read.describe()
        (log.info if stored and not read.damaged else log.warning)(json.dumps(event))
