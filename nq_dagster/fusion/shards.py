"""The one prediction path on several cores: sources shared out among processes, each running a `Predictor`.

A tick's work is Python and numpy calls per source under one interpreter lock, so threads do not add cores
(fusion/threads.py). `ShardedPredictor` owns the same
sources and answers the same calls as `Predictor`, but each source lives in one shard: shard 0 in this
process, shards 1..k-1 in worker processes (started with `spawn`: no forked torch thread pools).
`advance_many` sends each worker its sources' ticks, advances this process's own sources meanwhile, then
gathers the records; each source is computed by the same `Predictor` code as alone, so the records are equal
to one `Predictor`'s (tested).

All input is checked here before any shard works (`ticks.check_ticks_many`, against the last timestamp of each
source kept here), and a call commits in two phases: each shard moves its sources on as soon as their records
are built, keeping what it needs to undo that, until this process has every shard's records; a worker learns
the decision (keep or undo) with its next message. A failed call changes no source. `processing_time_ms` is
measured here: from the call receiving the ticks to every record being ready.

The messages between this process and its workers are pickled Python objects (multiprocessing's pipes): they
travel between processes this class started, never from storage (states and models on disk are read by
`artifacts`, which refuses pickles).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import torch

from nq_dagster.fusion.model import ModelVersion, ServingState
from nq_dagster.fusion.predictor import Predictor
from nq_dagster.fusion.threads import single_threaded_blas
from nq_dagster.fusion.ticks import check_ticks_many, value_range


def _worker(conn, device: str, threads: int | None = None) -> None:
    """A worker's loop: one `Predictor`, torch on one thread (the shards are the parallelism)."""
    torch.set_num_threads(1)
    p = Predictor(device=device, threads=threads)
    undo = None  # an advance committed here, until the parent's decision: kept, or rolled back
    while True:
        try:
            decision, op, arg = conn.recv()
        except EOFError:
            return
        if undo is not None and decision is not None:
            if not decision:
                p.rollback(undo)
            undo = None
        try:
            if op == "close":
                conn.send(("ok", None))
                return
            if op == "advance":
                with single_threaded_blas():  # (checked by the parent against the same last timestamps)
                    out, pending = p.compute(arg, time.perf_counter(), checked=True)
                conn.send(("ok", out))
                undo = p.commit(pending)  # while the parent gathers: off the next call's path
            elif op == "load":
                p.load(arg)
                conn.send(("ok", None))
            elif op == "warm_up":
                p.warm_up(arg)
                conn.send(("ok", None))
            elif op == "states":
                conn.send(("ok", p.serving_states(arg)))
            elif op == "latest":
                conn.send(("ok", p.latest(arg)))
            else:
                conn.send(("error", ValueError(f"unknown request {op!r}")))
        except Exception as exc:  # noqa: BLE001 - the caller re-raises it
            try:
                conn.send(("error", exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
                conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class ShardGone(RuntimeError):
    """A worker process exited: its sources are gone until `ShardedPredictor.restart` (then loaded again)."""

    def __init__(self, shard: int, message: str):
        super().__init__(message)
        self.shard = shard


@dataclass
class _Shard:
    process: mp.process.BaseProcess
    conn: object
    pending: bool = False  # moved its sources on in an `advance` it may have to undo: awaiting the decision
    decision: bool | None = None  # to send with the next message


class ShardedPredictor:
    """`Predictor`'s calls over `processes` shards (this process and processes - 1 workers); see the module
    docstring. Close it (or use it as a context manager) to stop the workers. One thread at a time may make
    the calls that reach a worker (the server's worker thread makes them all); `sources`, `last_ts`, `model`,
    `rows_seen` and `shard_of` answer from this process and may be called from any thread."""

    def __init__(self, processes: int | None = None, device: str = "cpu", threads: int | None = None):
        """`threads`: each shard's `Predictor(threads=...)`."""
        self.processes = max(1, processes or os.cpu_count() or 1)
        self.device = device
        self.threads = threads
        self.local = Predictor(device=device, threads=threads)
        self._owner: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self._step_ms: dict[str, float] = {}
        self._range: dict[str, tuple[float, float]] = {}
        self._rows: dict[str, int] = {}
        self._model: dict[str, ModelVersion] = {}
        self._last_call: tuple | None = None  # what `undo_last` puts back
        self._shards: list[_Shard] = [self._start() for _ in range(self.processes - 1)]
        if self._shards and device == "cpu":
            # the shards are the parallelism: torch's intra-op threads in this process would contend with the
            # workers for the same cores (and resizing its pool around each call cost more than it saved)
            torch.set_num_threads(1)

    # plumbing -----------------------------------------------------------------------------------------------
    def _start(self) -> _Shard:
        ctx = mp.get_context("spawn")
        a, b = ctx.Pipe()
        proc = ctx.Process(
            target=_worker, args=(b, self.device, self.threads), daemon=True, name="nq-predict-shard"
        )
        proc.start()
        b.close()
        return _Shard(proc, a)

    def _gone(self, k: int) -> ShardGone:
        sh = self._shards[k - 1]
        sh.process.join(timeout=1)
        return ShardGone(
            k,
            f"prediction shard {k} (process {sh.process.pid}) exited (exit code "
            f"{sh.process.exitcode}); its sources are gone until it is restarted and they "
            "are loaded again",
        )

    def restart(self, k: int) -> list[str]:
        """Start shard k's process again, empty, and forget its sources; returns them, for the caller to load
        again (from their saved states)."""
        if not 1 <= k <= len(self._shards):
            raise ValueError(f"shard {k}: the workers are 1..{len(self._shards)}")
        old = self._shards[k - 1]
        if old.process.is_alive():
            old.process.kill()
        old.process.join(timeout=5)
        old.conn.close()
        self._shards[k - 1] = self._start()
        lost = sorted(s for s, owner in self._owner.items() if owner == k)
        for s in lost:
            for d in (self._owner, self._last_ts, self._step_ms, self._range, self._rows, self._model):
                d.pop(s, None)
        return lost

    def _send(self, k: int, op: str, arg=None) -> None:
        sh = self._shards[k - 1]
        try:
            sh.conn.send((sh.decision, op, arg))
        except OSError:  # a broken pipe: the worker is gone
            raise self._gone(k) from None
        if sh.decision is not None:
            sh.pending, sh.decision = False, None

    def _recv(self, k: int):
        sh = self._shards[k - 1]
        try:
            status, value = sh.conn.recv()
        except (EOFError, OSError):
            raise self._gone(k) from None
        if status == "error":
            raise value
        return value

    def _call(self, k: int, op: str, arg=None):
        self._send(k, op, arg)
        return self._recv(k)

    def close(self) -> None:
        for k, sh in enumerate(self._shards, start=1):
            if sh.process.is_alive():
                try:
                    self._call(k, "close")
                except (OSError, RuntimeError):
                    pass
            sh.process.join(timeout=5)
            if sh.process.is_alive():
                sh.process.kill()
        self._shards = []

    def __enter__(self) -> ShardedPredictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Predictor's calls
    # ----------------------------------------------------------------------------------------
    def load(self, serving: ServingState) -> None:
        """Add or replace a source (a new source goes to the shard with the fewest sources)."""
        source = serving.model.source
        k = self._owner.get(source)
        if k is None:
            counts = [0] * self.processes
            for owner in self._owner.values():
                counts[owner] += 1
            k = counts.index(min(counts))
        if k == 0:
            self.local.load(serving)
        else:
            self._call(k, "load", serving)
        self._owner[source] = k
        self._last_ts[source] = int(serving.stream.last_ts)
        self._step_ms[source] = float(serving.model.step_ms)
        self._range[source] = value_range(serving.stream)
        self._rows[source] = int(serving.stream.n_rows)
        self._model[source] = serving.model

    def sources(self) -> list[str]:
        return sorted(self._owner)

    def shard_of(self, source: str) -> int:
        """The shard that holds the source: 0 this process, k the k-th worker."""
        return self._get(source)

    def _get(self, source: str) -> int:
        try:
            return self._owner[source]
        except KeyError:
            loaded = ", ".join(self.sources()) or "none"
            raise KeyError(f"no model loaded for source {source!r}; loaded: {loaded}") from None

    def value_range(self, source: str) -> tuple[float, float]:
        """The values the source's state accepts, kept in this process (no call to its shard)."""
        return self._range[source]

    def last_ts(self, source: str) -> int:
        """The timestamp (ns) of the source's last row seen, without asking its shard."""
        self._get(source)
        return self._last_ts[source]

    def rows_seen(self, source: str) -> int:
        self._get(source)
        return self._rows[source]

    def model(self, source: str) -> ModelVersion:
        """The source's model version, without asking its shard."""
        self._get(source)
        return self._model[source]

    def serving_state(self, source: str) -> ServingState:
        return self.serving_states([source])[source]

    def serving_states(self, sources: list[str]) -> dict[str, ServingState]:
        """The states of several sources: one message per shard."""
        by_shard: dict[int, list[str]] = {}
        for s in sources:
            by_shard.setdefault(self._get(s), []).append(s)
        out = {}
        for k, names in by_shard.items():
            out.update(self.local.serving_states(names) if k == 0 else self._call(k, "states", names))
        return {s: out[s] for s in sources}

    def warm_up(self, source: str) -> None:
        k = self._get(source)
        self.local.warm_up(source) if k == 0 else self._call(k, "warm_up", source)

    def latest(self, source: str) -> dict:
        k = self._get(source)
        return self.local.latest(source) if k == 0 else self._call(k, "latest", source)

    def advance(self, source: str, values, timestamps=None) -> list[dict]:
        return self.advance_many({source: (values, timestamps)})[source]

    def advance_many(self, ticks: dict[str, tuple]) -> dict[str, list[dict]]:
        """As `Predictor.advance_many`; each shard advances its own sources, at the same time."""
        t_recv = time.perf_counter()
        by_shard: dict[int, dict] = {}
        for s, vt in ticks.items():
            by_shard.setdefault(self._get(s), {})[s] = vt
        checked: dict[str, tuple] = {}
        error: BaseException | None = None
        remote = []
        # the workers' input checked and sent first ...
        for k, part in sorted(by_shard.items(), reverse=True):
            try:
                part = check_ticks_many(part, self._last_ts, self._step_ms, self._range)
            except ValueError as exc:  # the shards already sent drop their part; raised once they answer
                error = exc
                break
            checked.update(part)
            by_shard[k] = part
            if k:
                try:
                    self._send(k, "advance", part)
                except RuntimeError as exc:  # a worker is gone: the shards already sent still answer
                    error = exc
                    break
                remote.append(k)
        out: dict[str, list[dict]] = {}
        undo = None
        self._last_call = None
        if error is None and 0 in by_shard:  # ... then this process advances its own sources meanwhile
            try:
                with single_threaded_blas():
                    got, pending = self.local.compute(by_shard[0], t_recv, checked=True)
                out.update(got)
                undo = self.local.commit(pending)  # rolled back below if a worker fails
            except Exception as exc:  # noqa: BLE001 - raised below, once every shard has answered
                error = exc
        for k in remote:
            try:
                out.update(self._recv(k))
                self._shards[k - 1].pending = True
            except Exception as exc:  # noqa: BLE001
                error = error or exc
        for k in remote:  # the decision goes with each worker's next message
            if self._shards[k - 1].pending:
                self._shards[k - 1].decision = error is None
        if error is not None:
            if undo is not None:
                self.local.rollback(undo)
            raise error
        elapsed_ms = (time.perf_counter() - t_recv) * 1000.0
        before = {s: (self._last_ts[s], self._rows[s]) for s in out}
        for s, recs in out.items():
            for r in recs:
                r["processing_time_ms"] = elapsed_ms
            self._last_ts[s] = int(checked[s][1][-1])
            self._rows[s] += len(recs)
        self._last_call = (undo, remote, before)
        return {s: out[s] for s in ticks}

    def undo_last(self) -> None:
        """As `Predictor.undo_last`: this process's sources rolled back, and each worker's decision on the
        last advance turned to undo (it travels with the worker's next message, as a failed call's does)."""
        if self._last_call is None:
            return
        undo, remote, before = self._last_call
        self._last_call = None
        if undo is not None:
            self.local.rollback(undo)
        for k in remote:
            sh = self._shards[k - 1]
            if sh.pending:
                sh.decision = False
        for s, (last_ts, rows) in before.items():
            if s in self._owner:  # (not a source of a shard restarted since)
                self._last_ts[s], self._rows[s] = last_ts, rows
