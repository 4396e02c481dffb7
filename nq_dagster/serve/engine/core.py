"""The serving engine: the sources this replica owns, advanced by one worker thread through the one prediction
path, every acknowledged tick in the journal first and in the tables after a flush.

`Engine` assembles the parts and is what the HTTP layer talks to: `submit` ticks (a future of `Answer`s),
`call` a function between batches, and read-only views (sources, model info, recent records, outcomes,
health). Three threads: the worker (`worker.py`), the flusher (`flusher.py`), the watcher (`watcher.py`: new
models, rows from files via `pickup.py`, this replica's lease via `ownership.py`). A start recovers what a
dead process left in the journal (`restart.py`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from pathlib import Path

import pandas as pd

from nq_dagster.fusion.predictor import Predictor
from nq_dagster.fusion.shards import ShardedPredictor
from nq_dagster.serve.engine.flusher import ClosedSegment, Flusher
from nq_dagster.serve.engine.outcomes import OUTCOMES_KEPT, Outcomes
from nq_dagster.serve.engine.ownership import Ownership, replica_lease
from nq_dagster.serve.engine.pickup import FilePickup
from nq_dagster.serve.engine.records import RecordCache
from nq_dagster.serve.engine.restart import ShardRestarts, recover
from nq_dagster.serve.engine.ticklog import Fsync, TickLog, probe_dir
from nq_dagster.serve.engine.watcher import Models, watch
from nq_dagster.serve.engine.work import NoModel, NotOwner, Priority
from nq_dagster.serve.engine.worker import OnBatch, OnRecords, Worker
from nq_dagster.store import Warehouse
from nq_dagster.store.leases import lease_path, write_lease


class Engine:
    """See the module docstring. `processes` > 1: the owned sources shared out between this process and
    `processes - 1` prediction processes (fusion/shards.py), so the prediction work leaves this process's
    interpreter lock to the event loop."""

    def __init__(
        self,
        wh: Warehouse,
        ownership: Ownership = Ownership(),
        fsync: Fsync = "interval",
        fsync_interval_s: float = 0.1,
        flush_interval_s: float = 10.0,
        watch_interval_s: float = 1.0,
        device: str = "cpu",
        address: str = "",
        processes: int = 1,
    ):
        self.wh = wh.ensure()
        self.own = ownership
        self.address = address
        self.watch_interval_s = watch_interval_s
        self.processes = max(1, int(processes))
        # one predictor thread (the predictor's default): the event loop shares the interpreter lock with the
        # worker, and chunk threads only add contention (bench/RESULTS.md, prediction server)
        self.predictor = (
            ShardedPredictor(self.processes, device) if self.processes > 1 else Predictor(device=device)
        )
        self.ticklog = TickLog(wh.home / "serve" / "wal" / f"r{ownership.replica}", fsync)
        self.lease_path = lease_path(wh, ownership.replica)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.cache = RecordCache(self.wh)
        self._outcomes = Outcomes()
        self.models = Models(self.wh, ownership, self.predictor, self.ticklog)
        self.restarts = ShardRestarts(self.predictor, self.models, self.ticklog)
        self.worker = Worker(
            self.predictor, self.models, self.cache, self._outcomes, self.ticklog, self.restarts
        )
        self.flusher = Flusher(
            self.wh,
            ownership.replica,
            self.ticklog,
            fsync_interval_s,
            flush_interval_s,
            rotate=lambda: self.call(self._rotate),
            stop=self._stop,
        )
        self.pickup = FilePickup(
            self.wh,
            self.predictor.last_ts,
            lambda rows, label: self.submit(rows, label, stored=True).result(),
        )
        self.started_at = time.time()

    # callbacks of the HTTP layer, called on the worker thread -----------------------------------------------
    @property
    def on_records(self) -> OnRecords | None:
        return self.worker.on_records

    @on_records.setter
    def on_records(self, fn: OnRecords | None) -> None:
        self.worker.on_records = fn

    @property
    def on_batch(self) -> OnBatch | None:
        return self.worker.on_batch

    @on_batch.setter
    def on_batch(self, fn: OnBatch | None) -> None:
        self.worker.on_batch = fn

    # lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self.ticklog.dir.mkdir(parents=True, exist_ok=True)
        for source in self.models.owned_trained_sources():
            self.models.load(source)
        recover(self.predictor, self.ticklog, self.cache, self.flusher.flush_segment)
        self._write_lease()
        threads = (("worker", self.worker.run), ("flusher", self.flusher.run), ("watcher", self._watch))
        for name, target in threads:
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
        self.worker.stop()
        self.flusher.finish()
        for t in self._threads:
            t.join(timeout_s)
        self.ticklog.close()
        with contextlib.suppress(FileNotFoundError):
            self.lease_path.unlink()
        self.predictor.close()

    @property
    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and not self._stop.is_set()

    # the API ------------------------------------------------------------------------------------------------
    def submit(
        self,
        rows: list[tuple],
        label: str,
        priority: Priority = "normal",
        stored: bool = False,
        received: float | None = None,
        key: str = "",
    ) -> cf.Future:
        """Queue ticks [(source, timestamp, value)]; the future gives a list of `Answer`, one per tick, sorted
        by (source, time) as ingest sorts. `received` (perf_counter) is when the request arrived:
        processing_time_ms counts from it. `key`: the API key's id, whose share of the batches it is served
        in (worker.py, fair.py)."""
        for source, _, _ in rows:
            if not self.own.owns(source):
                raise NotOwner(source, self.own.owner(source))
        return self.worker.submit(rows, label, priority, stored, received, key)

    def call(self, fn) -> cf.Future:
        """Run fn() on the worker thread, between two batches."""
        return self.worker.call(fn)

    def sources(self) -> list[str]:
        return self.predictor.sources()

    def model_info(self) -> dict[str, dict]:
        out = {}
        for s in self.predictor.sources():
            mv = self.predictor.model(s)
            out[s] = {
                "model_version": mv.model_version,
                "config_version": mv.cfg.version,
                "selected_features": list(mv.selected),
                "quantum": mv.quantum,
                "reliability": mv.reliability,
                "trained_at": mv.created_at,
                "trained_rows": mv.trained_rows,
                "rows_seen": self.predictor.rows_seen(s),
                "process": self.predictor.shard_of(s),
                "last_timestamp": pd.Timestamp(self.predictor.last_ts(s), tz="UTC").isoformat(),
            }
        return out

    def recent(self, source: str, limit: int = 100) -> list[dict]:
        return self.cache.recent(source, limit)

    def model_config(self, source: str):
        """The `PipelineConfig` of the model serving `source` (its horizon and hold band say how its outcomes
        are realized), or None when this engine holds no model for it."""
        return self.predictor.model(source).cfg if source in self.predictor.sources() else None

    def outcomes(self, source: str, limit: int = OUTCOMES_KEPT) -> list[dict]:
        return self._outcomes.of(source, limit)

    def queue_depth(self) -> int:
        return self.worker.depth()

    def no_model(self, source: str) -> NoModel:
        return self.models.no_model(source)

    def load_errors(self) -> dict[str, str]:
        return dict(self.models.errors)

    @property
    def wal_dir(self) -> Path:
        return self.ticklog.dir

    def log_backlog(self) -> int:
        """Closed segments not yet in the tables (the open one aside)."""
        open_one = self.ticklog.path is not None and self.ticklog.path.exists()
        return max(0, len(self.ticklog.segments()) - open_one)

    def journal_status(self) -> dict:
        """The journal's part of the storage status: the last storage error (None once a batch commits again),
        whether its directory takes a write now, and the counts since the start."""
        err = self.ticklog.error
        return {
            "error": err,
            "writable": err is None or probe_dir(self.ticklog.dir) is None,
            "refused_batches": self.ticklog.failures,
            "quarantined_segments": self.flusher.quarantined,
            "tick_conflicts": self.flusher.conflicts,
        }

    @property
    def last_flush_error(self) -> str | None:
        return self.flusher.last_error

    @property
    def flushed_segments(self) -> int:
        return self.flusher.flushed_segments

    # worker-thread steps ------------------------------------------------------------------------------------
    def _rotate(self) -> None:
        """Close the open segment and hand it, with the states after it, to the flusher (worker thread)."""
        sources = sorted(self.ticklog.sources)
        closed = self.ticklog.close_segment()
        if closed is None:
            return
        path, conn = closed
        states: dict = {}
        try:
            states = self.restarts.predict(lambda: self.predictor.serving_states(sources))
        finally:  # without its states the segment is still stored (the states are saved at the next one)
            self.flusher.hand(ClosedSegment(path, states, conn))

    # the watcher thread -------------------------------------------------------------------------------------
    def _watch(self) -> None:
        steps = (self._write_lease, self._reload_models, self._pick_up_files)
        watch(self._stop, self.watch_interval_s, steps)

    def _write_lease(self) -> None:
        owned = [s for s in self.predictor.sources() if self.own.owns(s)]
        write_lease(self.wh, replica_lease(self.own, self.address, owned))

    def _reload_models(self) -> None:
        for s in self.models.changed():
            self.call(lambda s=s: self.models.load(s)).result()

    def _pick_up_files(self) -> None:
        for s in self.predictor.sources():
            if self.own.owns(s):  # a source whose partition lease moved away stays loaded, not served here
                self.pickup.pick_up(s)
