"""The batching worker: one thread that takes everything queued (up to MAX_BATCH requests), validates it in
one call and plans each request (re-posted ticks answered with their stored prediction); the new ticks wait in
`fair.FairTicks`, which picks each batch's share fairly between API keys. A batch advances its sources at once
through the one prediction path (`Predictor.advance_many`) and appends each new tick and its record to the
journal; a request is resolved once its last tick is committed. So a tick is acknowledged after it is in the
journal (a batch the journal refuses moves no state and gets 503), a source's ticks are predicted in the order
they were accepted, and one key's large requests do not hold another key's ticks back (fair.py).

Calls queued with `call` (a model swap, a log rotation) run between two batches, on this thread, so the
predictor and the log have one writer.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import logging
import math
import queue
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from nq_dagster.fusion.record import jsonable
from nq_dagster.fusion.threads import single_threaded_blas
from nq_dagster.fusion.ticks import out_of_range_message
from nq_dagster.serve.engine.fair import FairTicks, Pending, Running
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

MAX_BATCH = 512  # requests taken (validated and planned) by the worker at once

# callback(JSON records, the outcomes they realized): metrics and the WebSocket hub, on the worker thread
OnRecords = Callable[[list[dict], list[dict]], None]
OnBatch = Callable[[int, int, float], None]  # callback(requests, new ticks, seconds) for metrics
NewTicks = dict[str, list[tuple[int, float]]]  # per source: a batch's new ticks (ts_ns, value), in order


def _same_value(label: str, source: str, ts_ns: int, kept: float, sent: float) -> None:
    """A re-posted tick must carry the value already accepted for its time: a stored tick is never changed,
    and answering another value with the old record would hide the conflict (issue 26)."""
    if kept != sent and not (math.isfinite(kept) and math.isclose(kept, sent, rel_tol=1e-12, abs_tol=0.0)):
        when = pd.Timestamp(ts_ns, tz="UTC")
        raise Rejected(
            [
                f"{label}: source {source!r}: timestamp {when} already has value {kept!r}; this request sent "
                f"{sent!r}. A tick is never changed once accepted: post the value under a new timestamp"
            ],
            "data",
        )


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
        self.fair = FairTicks()
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
        key: str = "",
    ) -> cf.Future:
        w = Work(queue_priority(priority), next(self._seq), "ticks", rows, label, stored, key=key)
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
        """Requests queued, and ticks accepted that wait for a batch."""
        return self._q.qsize() + len(self.fair)

    # the thread ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        with single_threaded_blas():  # once for the thread's life, not per batch
            self._loop()

    def _loop(self) -> None:
        while True:
            # block only when no accepted tick waits for a batch
            first = self._q.get() if not self.fair else self._next_nowait()
            items = [] if first is None else [first]
            while items and len(items) < MAX_BATCH and (w := self._next_nowait()) is not None:
                items.append(w)
            if any(w.kind == "stop" for w in items):
                return
            for w in items:
                if w.kind == "call":
                    try:
                        w.future.set_result(w.fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        w.future.set_exception(exc)
            self._admit([w for w in items if w.kind == "ticks"])
            self._step()

    def _next_nowait(self) -> Work | None:
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def _plan(
        self, w: Work, ticks: list[Tick], loaded: set[str], last: dict[str, int]
    ) -> tuple[list[Planned], NewTicks]:
        """Where each of a request's ticks gets its answer, and the request's new (ts_ns, value) per source,
        after the ticks accepted before it (waiting in `self.fair` or planned in this round: `last`). Raises
        the request's refusal."""
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
                waiting = self.fair.last(src)
                last[src] = waiting if waiting is not None else self.predictor.last_ts(src)
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
            if (pending_tick := self.fair.index.get((src, t))) is not None:
                _same_value(w.label, src, t, pending_tick.value, tick.value)
                out.append(Planned(src, t, duplicate=True))  # posted again before it was predicted
                continue
            stored = self.cache.stored(src, t)
            if stored is not None and stored.get("value") is not None:
                _same_value(w.label, src, t, stored["value"], tick.value)
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

    def _admit(self, group: list[Work]) -> None:
        """Validate and plan the requests just taken; their new ticks wait in `self.fair` for a batch."""
        if not group:
            return
        try:
            checked = validate_requests([w.rows for w in group], [w.label for w in group])
        except Exception as exc:  # noqa: BLE001 - every request just taken learns it failed
            log.exception("validation failed")
            for w in group:
                w.future.set_exception(exc)
            return
        for i, exc in checked.rejected.items():
            group[i].future.set_exception(exc)
        last: dict[str, int] = {}
        loaded = set(self.predictor.sources())
        for i, ticks in checked.accepted.items():
            w = group[i]
            try:
                planned, tentative = self._plan(w, ticks, loaded, last)
            except (Rejected, NoModel) as exc:
                w.future.set_exception(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - this request's failure only
                log.exception("planning %s failed", w.label)
                w.future.set_exception(exc)
                continue
            run = Running(w, planned)
            waiting = [Pending(s, t, v, run) for s, pairs in tentative.items() for t, v in pairs]
            for p in planned:
                if p.duplicate and p.stored is None:
                    self.fair.index[(p.source, p.ts_ns)].waiters.append(run)
                    run.missing += 1
            run.missing += len(waiting)
            for src, pairs in tentative.items():
                last[src] = pairs[-1][0]
            self.fair.add(w.key, w.priority, waiting)
            if run.missing == 0:
                w.future.set_result(run.answer_list())

    def _step(self) -> None:
        """One batch: the ticks `self.fair` picks, predicted and logged; the requests they complete are
        answered."""
        taken = self.fair.pick()
        if not taken:
            return
        t0 = time.perf_counter()
        new: NewTicks = {s: [(p.ts_ns, p.value) for p in pts] for s, pts in taken.items()}
        origin = {(p.source, p.ts_ns): p.run.work for pts in taken.values() for p in pts}
        try:
            fresh, outcomes = self._predict(new, origin)
        except Exception as exc:  # noqa: BLE001 - every request with a tick in the batch learns it failed
            if not isinstance(exc, JournalUnavailable):  # fail closed: a 503 with the reason (ticklog.py)
                log.exception("batch failed")
            for pts in taken.values():
                for p in pts:
                    self._fail(p.run, exc)
                    for r in p.waiters:
                        self._fail(r, exc)
            return
        finally:
            if self.on_batch is not None:
                self.on_batch(len(origin), sum(len(v) for v in new.values()), time.perf_counter() - t0)
        for pts in taken.values():
            for p in pts:
                key = (p.source, p.ts_ns)
                a = fresh[key]
                self.fair.index.pop(key, None)
                for r in (p.run, *p.waiters):
                    if r.failed:
                        continue
                    r.answers[key] = a
                    r.missing -= 1
                    if r.missing == 0:
                        r.work.future.set_result(r.answer_list())
        if self.on_records is not None:
            self.on_records([a.record for a in fresh.values()], outcomes)

    def _fail(self, run: Running, exc: Exception) -> None:
        """A request whose tick could not be predicted: refused, its other ticks dropped, and so are the
        requests waiting for one of them."""
        if run.failed:
            return
        run.failed = True
        self.fair.drop(run)
        if not run.work.future.done():
            run.work.future.set_exception(exc)
        for p in run.pending:
            for r in p.waiters:
                self._fail(r, exc)

    def _predict(
        self, new: NewTicks, origin: dict[tuple[str, int], Work]
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
                w = origin[(s, t)]
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
