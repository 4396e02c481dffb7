"""The batching worker: one thread that takes everything queued (up to MAX_BATCH requests), validates it in
one call, answers re-posted ticks with their stored prediction, advances every source at once through the one
prediction path (`Predictor.advance_many`), commits each new tick and its record to the journal, and only then
resolves the requests. So a tick is acknowledged after it is in the journal (a batch the journal refuses moves
no state and gets 503), and a source's ticks are predicted in the order they were accepted.

Calls queued with `call` (a model swap, a log rotation) run between two batches, on this thread, so the
predictor and the log have one writer.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import logging
import queue
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from nq_dagster.fusion.record import jsonable
from nq_dagster.fusion.threads import single_threaded_blas
from nq_dagster.fusion.ticks import out_of_range_message
from nq_dagster.serve.engine.outcomes import Outcomes
from nq_dagster.serve.engine.records import RecordCache
from nq_dagster.serve.engine.restart import ShardRestarts
from nq_dagster.serve.engine.ticklog import TickLog
from nq_dagster.serve.engine.validate import validate_requests
from nq_dagster.serve.engine.watcher import Models
from nq_dagster.serve.engine.work import (
    PRIORITY_CALL,
    PRIORITY_STOP,
    Answer,
    JournalUnavailable,
    NoModel,
    Planned,
    Priority,
    Rejected,
    Tick,
    Work,
    queue_priority,
)

log = logging.getLogger("nq.serve")

MAX_BATCH = 512  # requests taken by the worker at once

# callback(JSON records, the outcomes they realized): metrics and the WebSocket hub, on the worker thread
OnRecords = Callable[[list[dict], list[dict]], None]
OnBatch = Callable[[int, int, float], None]  # callback(requests, new ticks, seconds) for metrics
NewTicks = dict[str, list[tuple[int, float]]]  # per source: a batch's new ticks (ts_ns, value), in order


class Worker:
    def __init__(
        self,
        predictor,
        models: Models,
        cache: RecordCache,
        outcomes: Outcomes,
        ticklog: TickLog,
        restarts: ShardRestarts,
    ):
        self.predictor, self.models, self.cache, self.outcomes = predictor, models, cache, outcomes
        self.ticklog, self.restarts = ticklog, restarts
        self._q: queue.PriorityQueue[Work] = queue.PriorityQueue()
        self._seq = itertools.count()
        self.on_records: OnRecords | None = None
        self.on_batch: OnBatch | None = None

    # queueing (any thread) ----------------------------------------------------------------------------------
    def submit(
        self,
        rows: list[tuple],
        label: str,
        priority: Priority = "normal",
        stored: bool = False,
        received: float | None = None,
    ) -> cf.Future:
        w = Work(queue_priority(priority), next(self._seq), "ticks", rows, label, stored)
        if received is not None:
            w.enqueued = received
        self._q.put(w)
        return w.future

    def call(self, fn: Callable[[], object]) -> cf.Future:
        w = Work(PRIORITY_CALL, next(self._seq), "call", fn=fn)
        self._q.put(w)
        return w.future

    def stop(self) -> None:
        self._q.put(Work(PRIORITY_STOP, next(self._seq), "stop"))

    def depth(self) -> int:
        return self._q.qsize()

    # the thread ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        with single_threaded_blas():  # once for the thread's life, not per batch
            self._loop()

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first.kind == "stop":
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    w = self._q.get_nowait()
                except queue.Empty:
                    break
                if w.kind == "stop":
                    self._q.put(w)
                    break
                batch.append(w)
            group: list[Work] = []
            for w in batch:
                if w.kind == "call":
                    self._process(group)
                    group = []
                    try:
                        w.future.set_result(w.fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        w.future.set_exception(exc)
                else:
                    group.append(w)
            self._process(group)

    def _plan(
        self, w: Work, ticks: list[Tick], loaded: set[str], last: dict[str, int], new: NewTicks
    ) -> tuple[list[Planned], NewTicks]:
        """Where each of a request's ticks gets its answer, and the request's new (ts_ns, value) per source,
        after the ticks the batch accepted before it (`new`, `last`). Raises the request's refusal."""
        tentative: NewTicks = {}
        out: list[Planned] = []
        for tick in ticks:
            src, t = tick.source, tick.ts_ns
            if src not in loaded:
                raise (
                    self.models.no_model(src)
                    if src not in self.models.errors
                    else Rejected(
                        [f"source {src!r}: its model failed to load ({self.models.errors[src]})"], "source"
                    )
                )
            if src not in last:
                last[src] = self.predictor.last_ts(src)
            pending = tentative.get(src)
            floor = pending[-1][0] if pending else last[src]
            if t > floor and not tick.repost:
                lo, hi = self.predictor.value_range(src)
                if not lo <= tick.value <= hi:  # refused here, per request: it never fails the batch
                    raise Rejected(
                        [f"{w.label}: " + out_of_range_message(src, len(out) + 1, tick.value, (lo, hi))],
                        "data",
                    )
                tentative.setdefault(src, []).append((t, tick.value))
                out.append(Planned(src, t))
                continue
            if any(t == p[0] for p in new.get(src, ())):
                out.append(Planned(src, t, duplicate=True))  # posted twice in one batch
                continue
            stored = self.cache.stored(src, t)
            if stored is None:
                when, seen = pd.Timestamp(t, tz="UTC"), pd.Timestamp(floor, tz="UTC")
                raise Rejected(
                    [
                        f"{w.label}: source {src!r}: timestamp {when} is not after the last one seen "
                        f"({seen}) and was never stored; older rows are used at the next training, "
                        "not streamed"
                    ],
                    "timestamp",
                )
            out.append(Planned(src, t, duplicate=True, stored=stored))
        return out, tentative

    def _process(self, group: list[Work]) -> None:
        if not group:
            return
        t0 = time.perf_counter()
        new: NewTicks = {}
        try:
            checked = validate_requests([w.rows for w in group], [w.label for w in group])
            for i, exc in checked.rejected.items():
                group[i].future.set_exception(exc)
            plans: dict[int, list[Planned]] = {}
            origin: dict[tuple[str, int], int] = {}  # (source, ts_ns) of a new tick -> its request's position
            last: dict[str, int] = {}
            loaded = set(self.predictor.sources())
            for i, ticks in checked.accepted.items():
                try:
                    plans[i], tentative = self._plan(group[i], ticks, loaded, last, new)
                except (Rejected, NoModel) as exc:
                    group[i].future.set_exception(exc)
                    continue
                for src, pairs in tentative.items():
                    new.setdefault(src, []).extend(pairs)
                    last[src] = pairs[-1][0]
                    for t, _ in pairs:
                        origin[(src, t)] = i
            fresh: dict[tuple[str, int], Answer] = {}
            outcomes: list[dict] = []
            if new:
                fresh, outcomes = self._predict(group, new, origin)
            for i, planned in plans.items():
                answers = []
                for p in planned:
                    if p.stored is not None:
                        answers.append(Answer(p.stored, None, True))
                    else:
                        a = fresh[(p.source, p.ts_ns)]
                        answers.append(Answer(a.record, a.text, p.duplicate))
                group[i].future.set_result(answers)
            if fresh and self.on_records is not None:
                self.on_records([a.record for a in fresh.values()], outcomes)
        except (
            JournalUnavailable
        ) as exc:  # fail closed: the batch is refused, nothing of it kept (ticklog.py)
            for w in group:
                if not w.future.done():
                    w.future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns it failed
            log.exception("batch failed")
            for w in group:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:
            if self.on_batch is not None:
                self.on_batch(len(group), sum(len(v) for v in new.values()), time.perf_counter() - t0)

    def _predict(
        self, group: list[Work], new: NewTicks, origin: dict[tuple[str, int], int]
    ) -> tuple[dict[tuple[str, int], Answer], list[dict]]:
        """Advance every source over its new ticks at once; log each tick with its record; the records (as
        answers to the request that brought the tick) and the outcomes they realized."""
        got = self.restarts.predict(
            lambda: self.predictor.advance_many(
                {
                    s: ([v for _, v in tk], np.array([t for t, _ in tk], dtype=np.int64))
                    for s, tk in new.items()
                }
            )
        )
        fresh: dict[tuple[str, int], Answer] = {}
        rows = []
        done = time.perf_counter()
        for s, recs in got.items():
            for (t, v), rec in zip(new[s], recs, strict=True):
                w = group[origin[(s, t)]]
                rec["processing_time_ms"] = (done - w.enqueued) * 1000.0  # request received -> record ready
                rec["value"] = v  # the tick's value (not a column of the record's table)
                j = jsonable(rec)
                text = json.dumps(j)  # encoded once: the journal's row and the HTTP answer
                fresh[(s, t)] = Answer(j, text, False)
                rows.append((s, t, v, w.stored, text))
        try:
            self.ticklog.append(rows, got.keys())
        except JournalUnavailable:
            self.predictor.undo_last()  # not stored, so not seen: the states stay where the batch found them
            raise
        # stored: only now does the batch change what this process remembers
        outcomes: list[dict] = []
        for s, recs in got.items():
            cache = self.cache.of(s)
            horizon = self.predictor.model(s).cfg.horizon
            for (t, v), rec in zip(new[s], recs, strict=True):
                outcomes.extend(self.outcomes.realize(s, horizon, t, v, rec))
                cache[t] = fresh[(s, t)].record
            self.cache.trim(s)
        return fresh, outcomes
