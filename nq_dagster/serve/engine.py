"""The serving engine: the sources this replica owns, advanced by one worker thread through the one prediction path.

Request handlers hand ticks to `Engine.submit`; one worker thread takes everything queued (up to `MAX_BATCH`
requests), validates all of it with the ingest code in one call (`ingest.validate_frame`: the same rules and
messages as `nq ingest`), answers re-posted ticks with their stored prediction, advances every source at once
(`Predictor.advance_many`), appends each new tick and its record to the write-ahead log, and only then resolves
the requests. So a tick is acknowledged after it is in the log, and a source's ticks are predicted in the order
they were accepted.

Durability. The log (`serve/wal/r<replica>/<microseconds since the epoch>-<n>.jsonl`) is written with one `write` per batch before the reply;
the operating system keeps it when the process dies (kill -9, OOM), and it is fsynced every `fsync_interval_s`
(or per batch with `fsync="always"`), which bounds what a machine crash can lose. Every `flush_interval_s` (10 s) the
worker starts a new segment and a flusher thread turns the closed one into a `raw_ticks` part and a
`predictions` part (named by the segment, so writing it again after a crash replaces, never duplicates), then
saves each source's `live_state` and deletes the segment. At start, segments left by a dead process are
recovered the same way, states advanced over the ticks they hold.

Models. Training writes `serving_state`; a watcher thread sees the new file and the worker swaps the model in
between two batches (`fusion.predictor.continue_from`), so no request fails or waits for a restart. Rows that
reach `raw_ticks` from files (`nq ingest`, the landing sensor) for an owned source are predicted by the server
too, as the streaming job would, and the streaming job leaves owned sources to it (`replica_leases`).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from nq_dagster.config import load_config
from nq_dagster.fusion.model import ServingState
from nq_dagster.fusion.predictor import Predictor, continue_from
from nq_dagster.fusion.record import jsonable, records_table
from nq_dagster.fusion.shards import ShardedPredictor, ShardGone
from nq_dagster.fusion.threads import single_threaded_blas
from nq_dagster.ingest import (
    FileRejected,
    build_series,
    fast_validate_ticks,
    primary_column,
    rows_after,
    validate_frame,
)
from nq_dagster.store import Warehouse, atomic_write_bytes

log = logging.getLogger("nq.serve")

MAX_BATCH = 512  # requests taken by the worker at once
OUTCOMES_KEPT = 500  # realized outcomes kept per source (the live reliability view)
CACHE_PER_SOURCE = 20_000  # recent records kept in memory per source (re-posts, the dashboard)
LEASE_TTL_S = 10.0  # a replica whose lease is older than this is gone
SERVE_PART = "serve-r{replica}-{segment}"  # named by the log segment: unique across restarts, stable on a re-flush


def stable_hash(source: str) -> int:
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Ownership:
    """Replica `replica` of `replicas` serves the sources whose stable hash modulo `replicas` is `replica`.
    `peers[k]` is replica k's base URL (for forwarding); empty when there is one replica."""

    replica: int = 0
    replicas: int = 1
    peers: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.replica < self.replicas:
            raise ValueError(f"replica {self.replica} of {self.replicas}: use 0 <= replica < replicas")
        if self.peers and len(self.peers) != self.replicas:
            raise ValueError(f"{len(self.peers)} peer addresses for {self.replicas} replicas")

    def owner(self, source: str) -> int:
        return stable_hash(source) % self.replicas

    def owns(self, source: str) -> bool:
        return self.owner(source) == self.replica


class Rejected(Exception):
    """A request the ingest rules or the stream order refuse (HTTP 422)."""

    def __init__(self, messages: list[str], field: str = "data"):
        super().__init__(messages[0] + (f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""))
        self.messages, self.field = messages, field


class NoModel(Exception):
    """A source without a trained model (HTTP 409)."""

    def __init__(self, source: str, rows: int, needed: int):
        more = max(0, needed - rows)
        super().__init__(f"source {source!r} has no trained model yet: {rows} row(s) stored, training needs "
                         f"{needed} ({more} more); ingest history and run `nq run --source {source}`")
        self.source, self.rows, self.needed = source, rows, needed


class NotOwner(Exception):
    def __init__(self, source: str, owner: int):
        super().__init__(f"source {source!r} is served by replica {owner}")
        self.source, self.owner = source, owner


@dataclass(order=True)
class _Work:
    priority: int
    seq: int
    kind: str = field(compare=False)  # "ticks" | "call"
    rows: list = field(compare=False, default_factory=list)  # [(source, timestamp, value)]
    label: str = field(compare=False, default="request")
    stored: bool = field(compare=False, default=False)  # rows already in raw_ticks (from files)
    fn: object = field(compare=False, default=None)
    future: cf.Future = field(compare=False, default_factory=cf.Future)
    enqueued: float = field(compare=False, default_factory=time.perf_counter)


def record_from_row(row: dict) -> dict:
    """A `predictions` table row back into the API's record (nested results as objects)."""
    rec = {k: v for k, v in row.items() if k not in ("p_down", "p_hold", "p_up")}
    rec["processing_time_ms"] = None if pd.isna(row["processing_time_ms"]) else float(row["processing_time_ms"])
    rec["probabilities"] = {"down": row["p_down"], "hold": row["p_hold"], "up": row["p_up"]}
    for k in ("neuromorphic_results", "quantum_results"):
        rec[k] = json.loads(row[k])
    return jsonable(rec)


def _to_table_record(rec: dict) -> dict:
    """A JSON record (as in the log) with the timestamps that `records_table` needs."""
    return {**rec, "timestamp": pd.Timestamp(rec["timestamp"]), "train_end": pd.Timestamp(rec["train_end"])}


class Engine:
    """See the module docstring."""

    def __init__(self, wh: Warehouse, ownership: Ownership = Ownership(), fsync: str = "interval",
                 fsync_interval_s: float = 0.1, flush_interval_s: float = 10.0, watch_interval_s: float = 1.0,
                 device: str = "cpu", address: str = "", processes: int = 1):
        if fsync not in ("always", "interval"):
            raise ValueError("fsync: 'always' or 'interval'")
        self.wh = wh.ensure()
        self.own = ownership
        self.fsync, self.fsync_interval_s = fsync, fsync_interval_s
        self.flush_interval_s, self.watch_interval_s = flush_interval_s, watch_interval_s
        self.address = address
        # one predictor thread (the predictor's default): the server's event loop shares the GIL with this worker,
        # and chunk threads only added contention (2 cores, 32 clients: 961-978 predictions/s with two, 1,060-1,064
        # with one)
        # `processes` > 1: the owned sources shared out between this process and processes - 1 worker processes,
        # each shard a predictor on one core (fusion/shards.py); the prediction work then leaves this process's
        # interpreter lock to the event loop
        self.processes = max(1, int(processes))
        self.predictor = ShardedPredictor(self.processes, device) if self.processes > 1 else Predictor(device=device)
        self.wal_dir = wh.home / "serve" / "wal" / f"r{ownership.replica}"
        self.lease_path = wh.home / "serve" / "replicas" / f"r{ownership.replica}.json"
        self._q: queue.PriorityQueue[_Work] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._cache: dict[str, OrderedDict] = {}
        self._value_col: dict[str, str] = {}
        self._model_mtime: dict[str, int] = {}
        self._seen_parts: dict[str, set[str]] = {}
        self._load_errors: dict[str, str] = {}
        self._segment_seq = 0
        self._segment_fd: int | None = None
        self._segment_path: Path | None = None
        self._segment_sources: set[str] = set()
        self._dirty_since_sync = False
        self._flushq: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_records = None  # callback(JSON records, outcomes) for metrics and the WebSocket hub; worker thread
        self._pending: dict[str, collections.deque] = {}  # per source: predictions whose outcome is not known yet
        self._outcomes: dict[str, collections.deque] = {}  # per source: the last OUTCOMES_KEPT realized outcomes
        self.on_batch = None  # callback(n_requests, n_new_ticks, seconds) for metrics
        self.started_at = time.time()
        self.last_flush_error: str | None = None
        self.flushed_segments = 0

    # lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        for source in self._owned_trained_sources():
            self._load_source(source)
        self._recover()
        self._open_segment()
        self._write_lease()
        for name, target in (("worker", self._worker), ("flusher", self._flusher), ("watcher", self._watcher)):
            t = threading.Thread(target=target, name=f"nq-serve-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, write the log into the tables, save the states (SIGTERM path)."""
        if self._stop.is_set():
            return
        done = self.call(self._rotate)
        with contextlib.suppress(Exception):
            done.result(timeout_s)
        self._stop.set()
        self._q.put(_Work(-10, next(self._seq), "stop"))
        self._flushq.put(None)
        for t in self._threads:
            t.join(timeout_s)
        if self._segment_fd is not None:
            os.close(self._segment_fd)
            self._segment_fd = None
            if self._segment_path and self._segment_path.exists() and self._segment_path.stat().st_size == 0:
                self._segment_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.lease_path.unlink()
        self.predictor.close()

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and not self._stop.is_set()

    # the API ------------------------------------------------------------------------------------------------
    def submit(self, rows: list[tuple], label: str, priority: str = "normal", stored: bool = False,
               received: float | None = None) -> cf.Future:
        """Queue ticks [(source, timestamp, value)]; the future gives [(record, its JSON text or None, duplicate)]
        sorted by (source, time), as ingest sorts. `received` (perf_counter) is when the request arrived: processing_time_ms counts from it."""
        for source, _, _ in rows:
            if not self.own.owns(source):
                raise NotOwner(source, self.own.owner(source))
        w = _Work(0 if priority == "high" else 1, next(self._seq), "ticks", rows, label, stored)
        if received is not None:
            w.enqueued = received
        self._q.put(w)
        return w.future

    def call(self, fn) -> cf.Future:
        """Run fn() on the worker thread, between two batches."""
        w = _Work(-1, next(self._seq), "call", fn=fn)
        self._q.put(w)
        return w.future

    def sources(self) -> list[str]:
        return self.predictor.sources()

    def model_info(self) -> dict[str, dict]:
        out = {}
        for s in self.predictor.sources():
            mv = self.predictor.model(s)
            out[s] = {"model_version": mv.model_version, "config_version": mv.cfg.version,
                      "selected_features": list(mv.selected), "quantum": mv.quantum,
                      "reliability": mv.reliability,
                      "trained_at": mv.created_at, "trained_rows": mv.trained_rows,
                      "rows_seen": self.predictor.rows_seen(s), "process": self.predictor.shard_of(s),
                      "last_timestamp": pd.Timestamp(self.predictor.last_ts(s), tz="UTC").isoformat()}
        return out

    def recent(self, source: str, limit: int = 100) -> list[dict]:
        cache = self._cache.get(source)
        if not cache:
            return []
        return list(itertools.islice(reversed(cache.values()), limit))[::-1]

    def queue_depth(self) -> int:
        return self._q.qsize()

    def no_model(self, source: str) -> NoModel:
        rows = 0
        with contextlib.suppress(Exception):
            rows = sum(self.wh.part_rows(p) for p in self.wh.table_parts("raw_ticks", source))
        return NoModel(source, rows, load_config(self.wh.home).train_min + 1)

    # models ---------------------------------------------------------------------------------------------------
    def _owned_trained_sources(self) -> list[str]:
        return [s for s in self.wh.artifact_sources("serving_state") if self.own.owns(s)]

    def _artifact_mtime(self, name: str, source: str) -> int:
        return self.wh.artifact_mtime_ns(name, source)

    def _series(self, source: str) -> pd.DataFrame:
        """The source's series: raw_ticks plus the ticks still in the log (not yet flushed)."""
        raw = self.wh.read_table("raw_ticks", source)
        logged = [r for p in sorted(self.wal_dir.glob("*.jsonl")) for r in _read_segment(p) if r["s"] == source]
        if logged:
            col = primary_column(list(raw.columns))
            raw = pd.concat([raw, pd.DataFrame({"timestamp": pd.to_datetime([r["t"] for r in logged], utc=True),
                                                col: [r["v"] for r in logged]})])
        return build_series(raw)

    def _load_source(self, source: str) -> str:
        """Load (or swap in) the source's trained model, continuing from the furthest state; runs on the worker
        thread once started."""
        mtime = self._artifact_mtime("serving_state", source)
        try:
            trained = self.wh.load_artifact("serving_state", source)
            live = None
            current = self.predictor.serving_state(source) if source in self.predictor.sources() else None
            if current is None and self.wh.has_artifact("live_state", source):
                live = self.wh.load_artifact("live_state", source)
            state, how = continue_from(trained, current or live, rows_after(lambda: self._series(source)))
        except Exception as exc:  # a broken artifact must not take the server down; status shows it
            self._load_errors[source] = f"{type(exc).__name__}: {exc}"
            self._model_mtime[source] = mtime
            log.error(json.dumps({"event": "model_load_failed", "source": source, "error": str(exc)}))
            return "failed"
        self.predictor.load(state)
        self.predictor.warm_up(source)
        self._load_errors.pop(source, None)
        self._model_mtime[source] = mtime
        log.info(json.dumps({"event": "model_loaded", "source": source, "model_version": state.model.model_version,
                             "from": how, "rows_seen": state.stream.n_rows}))
        return how

    def _predict(self, call):
        """call() on the predictor. A prediction process that died (`--processes`) is started again, its sources
        loaded again and the call made once more: a batch waits for that instead of failing."""
        try:
            return call()
        except ShardGone as exc:
            self._restart_shard(exc.shard)
            return call()

    def _restart_shard(self, k: int) -> None:
        """Prediction process k again: its sources from their saved states (live_state, else training's), moved on
        over the ticks the log holds after them (read first: a segment the flusher stores and deletes meanwhile
        has its states saved before it goes), as at a start after a crash."""
        logged = [rec for path in sorted(self.wal_dir.glob("*.jsonl")) for rec in _read_segment(path)]
        lost = self.predictor.restart(k)
        for s in lost:
            self._load_source(s)
        replayed = {}
        for s in lost:
            if s not in self.predictor.sources():
                continue  # its model failed to load: status says so
            last = self.predictor.last_ts(s)
            ticks = dict(sorted((rec["t"], rec["v"]) for rec in logged if rec["s"] == s and rec["t"] > last))
            if ticks:
                self.predictor.advance(s, list(ticks.values()), np.array(list(ticks), dtype=np.int64))
            replayed[s] = len(ticks)
        log.error(json.dumps({"event": "prediction_process_restarted", "process": k, "sources": lost,
                              "ticks_replayed": replayed}))

    def _realize(self, source: str, ts: int, value: float, rec: dict) -> list[dict]:
        """A new tick realizes the prediction made `horizon` ticks before it: its actual direction by the same
        rule as training's targets (hold inside the band the prediction stated)."""
        pend = self._pending.setdefault(source, collections.deque())
        horizon = self.predictor.model(source).cfg.horizon
        out = []
        while len(pend) >= horizon:
            t0, v0, d0, c0, b0 = pend.popleft()
            change = value - v0
            actual = "up" if change > b0 else ("down" if change < -b0 else "hold")
            o = {"source": source, "timestamp": pd.Timestamp(t0, tz="UTC").isoformat(),
                 "realized_at": pd.Timestamp(ts, tz="UTC").isoformat(), "predicted": d0, "actual": actual,
                 "confidence": c0, "correct": d0 == actual, "change": change}
            self._outcomes.setdefault(source, collections.deque(maxlen=OUTCOMES_KEPT)).append(o)
            out.append(o)
        pend.append((ts, value, rec["direction"], rec["confidence"], rec["hold_band"]))
        return out

    def outcomes(self, source: str, limit: int = OUTCOMES_KEPT) -> list[dict]:
        return list(self._outcomes.get(source, ()))[-limit:]

    def load_errors(self) -> dict[str, str]:
        return dict(self._load_errors)

    # the worker -----------------------------------------------------------------------------------------------
    def _worker(self) -> None:
        with single_threaded_blas():  # once for the thread's life, not per batch
            self._work()

    def _work(self) -> None:
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
            group: list[_Work] = []
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

    def _validate(self, group: list[_Work]) -> dict[int, list[tuple[str, int, float]]]:
        """Validate every row of the group with the ingest rules; fail the requests with bad rows; returns the
        accepted rows of each request (by position in group) as (source, ts_ns, value), sorted by time.
        Plainly valid rows take ingest's shortcut (`fast_validate_ticks`); anything else goes through
        `validate_frame` in one call, which words the errors exactly as `nq ingest` does."""
        fast = fast_validate_ticks([r for w in group for r in w.rows])
        if fast is not None:
            rows, k = {}, 0
            for i, w in enumerate(group):
                rows[i] = sorted(fast[k:k + len(w.rows)], key=lambda r: (r[0], r[1]))
                k += len(w.rows)
            return rows
        n = sum(len(w.rows) for w in group)
        owner = np.repeat(np.arange(len(group)), [len(w.rows) for w in group])
        local = np.concatenate([np.arange(1, len(w.rows) + 1) for w in group]) if n else np.zeros(0, int)
        frame = pd.DataFrame({
            "source": [str(r[0]) for w in group for r in w.rows],
            "timestamp": [r[1] if isinstance(r[1], str) else repr(r[1]) for w in group for r in w.rows],
            "value": [repr(r[2]) if isinstance(r[2], float) else str(r[2]) for w in group for r in w.rows],
            "__line": np.arange(n),
        })
        try:
            clean, bad, _ = validate_frame(frame, Path("request"), 0, None)
        except FileRejected as exc:  # cannot happen with these columns; fail the group with the ingest message
            for w in group:
                w.future.set_exception(Rejected([str(exc)]))
            return {}
        failed: dict[int, list[str]] = {}
        for b in bad:
            i = int(owner[b.row])
            problem = b.problem
            if problem.startswith("duplicate (source, timestamp) of row "):
                first = int(problem.rsplit(" ", 1)[1])
                if owner[first] != i:
                    continue  # the same tick in two requests at once: the later one gets the first one's record
                problem = f"duplicate (source, timestamp) of row {int(local[first])}"
            b2 = type(b)(int(local[b.row]), b.column, b.value[:80], problem, b.fix)
            failed.setdefault(i, []).append(b2.describe(group[i].label))
        for i, msgs in failed.items():
            group[i].future.set_exception(Rejected(msgs, "data"))
        # rows dropped as duplicates of another request's row come back (their answer is that row's record)
        rows: dict[int, list[tuple[str, int, float]]] = {i: [] for i in range(len(group)) if i not in failed}
        ts = pd.to_datetime(clean["timestamp"], utc=True).to_numpy("datetime64[ns]").view(np.int64)
        kept = set(clean["_row"].tolist())
        for src, t, v, g in zip(clean["source"], ts, clean["value"].to_numpy(dtype=float), clean["_row"], strict=True):
            i = int(owner[g])
            if i in rows:
                rows[i].append((src, int(t), float(v)))
        for b in bad:
            i = int(owner[b.row])
            if i in rows and b.problem.startswith("duplicate (source, timestamp) of row ") and b.row not in kept:
                first = int(b.problem.rsplit(" ", 1)[1])
                src = str(frame["source"].iloc[b.row])
                t = ts[np.flatnonzero(clean["_row"].to_numpy() == first)]
                if len(t):
                    rows[i].append((src, int(t[0]), float("nan")))  # a re-post: answered from the first one
        for i in rows:
            rows[i].sort(key=lambda r: (r[0], r[1]))
        return rows

    def _stored(self, source: str, ts_ns: int) -> dict | None:
        rec = self._cache.get(source, {}).get(ts_ns)
        if rec is not None:
            return rec
        parts = [str(p) for p in self.wh.table_parts("predictions", source) if p.stem.startswith(("serve-", "stream-"))]
        if not parts:
            return None
        ds = pads.dataset(parts, format="parquet", filesystem=self.wh.filesystem)
        t = ds.to_table(filter=pads.field("timestamp") == pd.Timestamp(ts_ns, tz="UTC"))
        return record_from_row(t.slice(0, 1).to_pandas().iloc[0].to_dict()) if t.num_rows else None

    def _process(self, group: list[_Work]) -> None:
        if not group:
            return
        t0 = time.perf_counter()
        new: dict[str, list[tuple[int, float]]] = {}
        try:
            accepted = self._validate(group)
            answers: dict[int, list] = {}
            origin: dict[tuple[str, int], int] = {}
            last = {}
            for i, rows in accepted.items():
                w = group[i]
                tentative: dict[str, list[tuple[int, float]]] = {}
                out: list = []
                try:
                    for src, t, v in rows:
                        if src not in self.predictor.sources():
                            raise self.no_model(src) if src not in self._load_errors else Rejected(
                                [f"source {src!r}: its model failed to load ({self._load_errors[src]})"], "source")
                        if src not in last:
                            last[src] = self.predictor.last_ts(src)
                        pending = tentative.get(src, [])
                        floor = pending[-1][0] if pending else last[src]
                        if t > floor and not np.isnan(v):
                            tentative.setdefault(src, []).append((t, v))
                            out.append((src, t, None))
                            continue
                        if any(t == p[0] for p in new.get(src, [])):
                            out.append((src, t, "pending"))  # posted twice in one batch
                            continue
                        stored = self._stored(src, t)
                        if stored is None:
                            raise Rejected([f"{w.label}: source {src!r}: timestamp {pd.Timestamp(t, tz='UTC')} is not "
                                            f"after the last one seen ({pd.Timestamp(floor, tz='UTC')}) and was never "
                                            "stored; older rows are used at the next training, not streamed"],
                                           "timestamp")
                        out.append((src, t, stored))
                except (Rejected, NoModel) as exc:
                    w.future.set_exception(exc)
                    continue
                for src, ticks in tentative.items():
                    new.setdefault(src, []).extend(ticks)
                    last[src] = ticks[-1][0]
                    for t, _ in ticks:
                        origin[(src, t)] = i
                answers[i] = out
            records: dict[tuple[str, int], dict] = {}
            outcomes: list[dict] = []
            if new:
                got = self._predict(lambda: self.predictor.advance_many(
                    {s: ([v for _, v in tk], np.array([t for t, _ in tk], dtype=np.int64)) for s, tk in new.items()}))
                lines = []
                done = time.perf_counter()
                for s, recs in got.items():
                    cache = self._cache.setdefault(s, OrderedDict())
                    for (t, v), rec in zip(new[s], recs, strict=True):
                        w = group[origin[(s, t)]]
                        rec["processing_time_ms"] = (done - w.enqueued) * 1000.0  # request received -> record ready
                        rec["value"] = v  # the tick's value (not a column of the record's table)
                        outcomes.extend(self._realize(s, t, v, rec))
                        j = jsonable(rec)
                        text = json.dumps(j)  # encoded once: the log line and the HTTP answer
                        records[(s, t)] = (j, text)
                        cache[t] = j
                        lines.append(f'{{"s": {json.dumps(s)}, "t": {t}, "v": {v!r}, "stored": {json.dumps(w.stored)}, '
                                     f'"r": {text}}}')
                    while len(cache) > CACHE_PER_SOURCE:
                        cache.popitem(last=False)
                    self._segment_sources.add(s)
                self._append("\n".join(lines) + "\n")
            for i, out in answers.items():
                res = []
                for src, t, stored in out:
                    if stored is None:
                        res.append((*records[(src, t)], False))
                    elif stored == "pending":
                        res.append((*records[(src, t)], True))
                    else:
                        res.append((stored, None, True))
                group[i].future.set_result(res)
            if records and self.on_records is not None:
                self.on_records([j for j, _ in records.values()], outcomes)
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns it failed
            log.exception("batch failed")
            for w in group:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:
            if self.on_batch is not None:
                self.on_batch(len(group), sum(len(v) for v in new.values()), time.perf_counter() - t0)

    # the write-ahead log ---------------------------------------------------------------------------------------
    def _open_segment(self) -> None:
        self._segment_seq += 1
        self._segment_path = self.wal_dir / f"{time.time_ns() // 1000:017d}-{self._segment_seq:06d}.jsonl"
        self._segment_fd = os.open(self._segment_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment_sources = set()

    def _append(self, text: str) -> None:
        data = text.encode()
        while data:  # a regular file takes the whole buffer; the loop only guards against a short write
            n = os.write(self._segment_fd, data)
            data = data[n:]
        if self.fsync == "always":
            os.fsync(self._segment_fd)
        else:
            self._dirty_since_sync = True

    def _rotate(self) -> None:
        """Close the current segment and hand it, with the states after it, to the flusher (worker thread)."""
        if self._segment_fd is None:
            return
        if not self._segment_sources:
            return
        os.fsync(self._segment_fd)
        os.close(self._segment_fd)
        states = self._predict(lambda: self.predictor.serving_states(sorted(self._segment_sources)))
        self._flushq.put((self._segment_path, states))
        self._open_segment()

    def _flusher(self) -> None:
        next_sync = next_rotate = time.monotonic()
        while True:
            try:
                item = self._flushq.get(timeout=self.fsync_interval_s)
            except queue.Empty:
                item = False
            if item is None:
                while not self._flushq.empty():
                    nxt = self._flushq.get_nowait()
                    if nxt:
                        self._flush_segment(*nxt)
                return
            if item:
                self._flush_segment(*item)
            now = time.monotonic()
            if now >= next_sync and self._dirty_since_sync and self._segment_fd is not None:
                self._dirty_since_sync = False
                with contextlib.suppress(OSError):  # the segment may just have been rotated and closed
                    os.fsync(self._segment_fd)
                next_sync = now + self.fsync_interval_s
            if now >= next_rotate and not self._stop.is_set():
                next_rotate = now + self.flush_interval_s
                self.call(self._rotate)

    def _flush_segment(self, path: Path, states: dict[str, ServingState] | None) -> None:
        """A closed segment into `raw_ticks` and `predictions` parts named by it, then the states; then delete it."""
        try:
            lines = _read_segment(path)
            part = SERVE_PART.format(replica=self.own.replica, segment=path.stem)
            by_source: dict[str, list[dict]] = {}
            for rec in lines:
                by_source.setdefault(rec["s"], []).append(rec)
            for s, recs in by_source.items():
                fresh = [r for r in recs if not r["stored"]]
                if fresh:
                    col = self._value_column(s)
                    # the rows' identity (time and value of each tick, in order): what a file's content hash is for
                    # ingested parts; hashing the whole prediction records cost the flusher most of its time
                    digest = hashlib.sha256(json.dumps([[r["t"], r["v"]] for r in fresh]).encode()).hexdigest()
                    raw = pd.DataFrame({"source": s, "timestamp": pd.to_datetime([r["t"] for r in fresh], utc=True),
                                        col: [r["v"] for r in fresh], "file": f"nq-serve/{part}", "content_hash": digest})
                    self.wh.write_table("raw_ticks", s, self._like_ingested(s, raw), part=part)
                self.wh.write_table("predictions", s, records_table([_to_table_record(r["r"]) for r in recs]), part=part)
                if states and s in states:
                    self.wh.save_artifact("live_state", s, states[s])
            path.unlink(missing_ok=True)
            self.flushed_segments += 1
            self.last_flush_error = None
            self._compact(by_source)
        except Exception as exc:  # noqa: BLE001 - the segment stays and is retried at the next start
            self.last_flush_error = f"{path.name}: {type(exc).__name__}: {exc}"
            log.exception("flush failed")

    def _compact(self, sources) -> None:
        """A part per source every flush interval: merged past NQ_COMPACT_PARTS. The segment is already stored:
        a compaction that fails (or waits out an ingest's lock) is logged and retried at the next flush, never a
        flush error."""
        for s in sources:
            for table in ("raw_ticks", "predictions"):
                try:
                    done = self.wh.compact_if_many(table, s)
                except Exception as exc:  # noqa: BLE001 - the parts stay as they are, readable
                    log.warning(json.dumps({"event": "compaction_failed", "table": table, "source": s,
                                            "error": f"{type(exc).__name__}: {exc}"}))
                    continue
                if done:
                    log.info(json.dumps({"event": "compacted", "table": table, "source": s,
                                         "parts_before": done["parts_before"], "parts_after": done["parts_after"]}))

    def _like_ingested(self, source: str, raw: pd.DataFrame) -> pa.Table:
        """Rows in the schema of the source's ingested parts (timestamp unit, column types), so the partition
        reads as one table."""
        table = pa.Table.from_pandas(raw, preserve_index=False)
        parts = [p for p in self.wh.table_parts("raw_ticks", source) if not p.stem.startswith("serve-")]
        if parts:
            schema = pq.read_schema(str(parts[0]), filesystem=self.wh.filesystem).remove_metadata()
            if set(schema.names) == set(table.column_names):
                return table.select(schema.names).cast(schema)
        return table

    def _value_column(self, source: str) -> str:
        if source not in self._value_col:
            parts = [p for p in self.wh.table_parts("raw_ticks", source) if not p.stem.startswith("serve-")]
            names = pq.read_schema(str(parts[0]), filesystem=self.wh.filesystem).names if parts else ["value"]
            self._value_col[source] = primary_column(names)
        return self._value_col[source]

    def _recover(self) -> None:
        """Segments a dead process left: advance the states over their ticks, then flush them."""
        for path in sorted(self.wal_dir.glob("*.jsonl")):
            lines = _read_segment(path)
            touched = set()
            for rec in lines:
                s = rec["s"]
                if s in self.predictor.sources() and rec["t"] > self.predictor.last_ts(s):
                    self.predictor.advance(s, [rec["v"]], np.array([rec["t"]], dtype=np.int64))
                    touched.add(s)
                self._cache.setdefault(s, OrderedDict())[rec["t"]] = rec["r"]
            states = self.predictor.serving_states(sorted(s for s in {r["s"] for r in lines} if s in self.predictor.sources()))
            self._flush_segment(path, states)
            log.info(json.dumps({"event": "wal_recovered", "segment": path.name, "ticks": len(lines),
                                 "states_advanced": sorted(touched)}))

    # watching: new models, rows from files, the lease -----------------------------------------------------------
    def _watcher(self) -> None:
        while not self._stop.wait(self.watch_interval_s):
            try:
                self._write_lease()
                for s in self._owned_trained_sources():
                    if self._artifact_mtime("serving_state", s) != self._model_mtime.get(s):
                        self.call(lambda s=s: self._load_source(s)).result()
                for s in self.predictor.sources():
                    self._pick_up_file_rows(s)
            except Exception:  # noqa: BLE001 - the watcher keeps watching
                log.exception("watcher")

    def _pick_up_file_rows(self, source: str) -> None:
        seen = self._seen_parts.setdefault(source, set())
        parts = [p for p in self.wh.table_parts("raw_ticks", source)
                 if not p.stem.startswith("serve-") and p.stem not in seen]
        if not parts:
            return
        last = self.predictor.last_ts(source)
        seen.update(p.stem for p in parts)
        # a part whose footer says it holds nothing newer (a compacted part of the history) is not read
        parts = [p for p in parts if (self.wh.part_time_range(p)[1] or last + 1) > last]
        if not parts:
            return
        frames = [self.wh.read_part(p).to_pandas() for p in parts]
        raw = pd.concat(frames)
        col = primary_column(list(raw.columns))
        raw = raw.dropna(subset=[col])
        ts = pd.to_datetime(raw["timestamp"], utc=True)
        raw = raw[(ts > pd.Timestamp(last, tz="UTC")).to_numpy()].sort_values("timestamp")
        if len(raw):
            rows = [(source, t.isoformat(), float(v)) for t, v in zip(pd.to_datetime(raw["timestamp"], utc=True),
                                                                        raw[col], strict=True)]
            self.submit(rows, f"raw_ticks of {source}", stored=True).result()

    def _write_lease(self) -> None:
        lease = {"replica": self.own.replica, "replicas": self.own.replicas, "pid": os.getpid(),
                 "host": socket.gethostname(), "address": self.address, "sources": self.predictor.sources(),
                 "heartbeat": time.time()}
        atomic_write_bytes(self.lease_path, json.dumps(lease).encode())


def _read_segment(path: Path) -> list[dict]:
    lines = []
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                break  # a torn last line (the process died inside a write): never acknowledged
    return lines


def replica_leases(wh: Warehouse) -> list[dict]:
    """Live server replicas of this data directory (heartbeat within LEASE_TTL_S)."""
    out = []
    for p in sorted((wh.home / "serve" / "replicas").glob("r*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            lease = json.loads(p.read_text())
            if time.time() - lease.get("heartbeat", 0) < LEASE_TTL_S:
                out.append(lease)
    return out


def serving_replica(wh: Warehouse, source: str) -> dict | None:
    """The live replica that owns `source`, if a server is running for this data directory."""
    return next((lease for lease in replica_leases(wh) if source in lease.get("sources", [])), None)
