"""Ticks from NATS JetStream (`nq serve --stream nats://host:4222`): consumed in the server's event loop,
predicted on the engine's one path, acknowledged only once their records are in the journal and published.

Subjects (one token per source; JSON payloads):

    nq.ticks.<source>        in: a tick, or several, in the realtime request's shape ({"data": [..],
                             "timestamp": .. | "timestamps": [..]}; "source", if present, must be <source>).
                             Publishers should set the Nats-Msg-Id header ("<source>:<timestamp>"): the broker
                             then drops a message published twice within the stream's duplicate window.
                             The stream files it as nq.tick.<k>.<source>, k = FNV-1a(source) mod P (the
                             broker's partition() mapping; `ownership.partition_of` computes the same)
    nq.predictions.<source>  out: each record, as the realtime answer carries it (Nats-Msg-Id: prediction_id)
    nq.outcomes.<source>     out: each prediction's realized outcome, as /api/v1/outcomes shows it
    nq.dead.<source>         out: a refused message as {"reason", "status", "field", "subject", "seq",
                             "payload"}

Two file-backed streams are created when missing: NQ_TICKS (nq.ticks.*, partitioned as above) and NQ_OUT (the
three out subjects). Partitions are consumed by the replicas that hold their leases (serve/stream/leases.py):
one durable pull consumer per partition (`nq-serve-p<k>`, filter nq.tick.<k>.>), explicit acknowledgements,
a bounded ack-pending count, consumed only while this replica's lease on the partition is valid.

Exactly once, in order. A partition's messages are handled in stream order: a batch is fetched, every message
of it queued on the engine at once (its worker keeps a source's ticks in the order queued), the answers
awaited in order, the records and refusals published (with message ids), and only then the messages
acknowledged. Any failure (broker gone, a publish refused) leaves the batch unacknowledged and rewinds: the
consumer is re-created at the first stream sequence not yet done, so the broker delivers from there again, in
order. A message delivered again is a tick the engine has stored: it answers with the stored record (never a
second row), and the record is published again only if the predictions subject does not hold it yet (the last
published timestamp per source, read back from NQ_OUT; the message id guards the rest). A gap in the delivery
sequence (a message lost in flight while the broker restarted) rewinds the same way, so a later tick never
overtakes an earlier one and is never refused as "older". Memory: one batch per owned partition; nothing more
is fetched for a partition before its batch in hand is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nq_dagster.ingest import rows_after
from nq_dagster.serve.engine import NoModel, NotOwner, Rejected
from nq_dagster.serve.engine.ownership import LeasedOwnership
from nq_dagster.serve.http import strictjson
from nq_dagster.serve.http.bodies import RealtimeBody, parse
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.stream.leases import LeaseOptions, PartitionLeases, recover_journal

log = logging.getLogger("nq.serve.stream")

TICKS, PREDICTIONS, OUTCOMES, DEAD = "nq.ticks", "nq.predictions", "nq.outcomes", "nq.dead"
FILED = "nq.tick"  # the stream's own subjects: nq.tick.<partition>.<source>
STREAM_KEY = "stream:nats"  # the engine's fair lane for the stream's ticks, beside the API keys' lanes


@dataclass
class StreamOptions:
    """The broker side: stream and consumer names and limits (defaults suit one replica)."""

    ticks_stream: str = "NQ_TICKS"
    out_stream: str = "NQ_OUT"
    durable: str = "nq-serve"  # partition k's consumer: nq-serve-p<k>
    batch: int = 256  # messages fetched at once per owned partition (the memory bound: batch x partitions)
    max_ack_pending: int = 1024  # per partition: the broker stops delivering past this many unacknowledged
    ack_wait_s: float = 30.0  # an unacknowledged message is delivered again after this
    duplicate_window_s: float = 3600.0  # the broker drops a message id seen within this
    max_age_s: float = 7 * 86400.0  # ticks and records are kept this long (a replayable history)
    max_values: int = 1000  # values in one message (as a realtime request)


@dataclass
class StreamStats:
    predicted: int = 0  # ticks predicted for the first time
    duplicates: int = 0  # ticks answered with their stored record (a message delivered or published again)
    dead: int = 0  # messages refused to nq.dead.<source>
    rewinds: int = 0  # a consumer re-created at the first sequence not done
    outcomes_dropped: int = 0  # outcomes not published (their queue full); /api/v1/outcomes still has them
    pending: int = 0  # messages of the owned partitions not yet delivered (the consumers' lag)
    ack_pending: int = 0
    lost: int = 0  # messages the stream no longer had when they were due (aged out, deleted)
    by_partition: dict[int, tuple[int, int]] = field(default_factory=dict)  # k -> (pending, ack_pending)


class LeaseGone(Exception):
    """A batch met a source whose partition this replica no longer holds: left unacknowledged."""


class Refused(Exception):
    """A message the stream cannot take: its reason goes to the dead-letter subject."""

    def __init__(self, reason: str, status: int = 422, field: str | None = None):
        super().__init__(reason)
        self.reason, self.status, self.field = reason, status, field


def source_of(subject: str) -> str:
    """The source of a tick subject, as published (nq.ticks.<source>) or as filed (nq.tick.<k>.<source>)."""
    if subject.startswith(FILED + "."):
        return subject.split(".", 3)[3]
    return subject[len(TICKS) + 1 :]


def ticks_of(subject: str, data: bytes, max_values: int) -> list[tuple]:
    """The message's ticks [(source, timestamp, value)] as the engine takes them, after the realtime request's
    checks; Refused with the reason otherwise."""
    source = source_of(subject)
    try:
        obj = strictjson.loads(data)  # the request bodies' bounds: depth, integer digits, finite numbers
    except strictjson.JsonLimitError as exc:
        raise Refused(exc.message, field=exc.field) from None
    except ValueError as exc:
        raise Refused(f"not JSON: {exc}", field="body") from None
    if not isinstance(obj, dict):
        raise Refused("expected a JSON object in the realtime request's shape", field="body")
    if obj.setdefault("source", source) != source:
        raise Refused(f"source {obj['source']!r} sent on the subject of {source!r}", field="source")
    try:
        return parse(RealtimeBody, obj, max_values=max_values).ticks()
    except ApiError as exc:
        raise Refused(exc.message, exc.status, exc.field) from None


class TickStream:
    """See the module docstring. `start()` and `stop()` on the server's event loop (`with_stream`). The
    engine's ownership must be a `LeasedOwnership`: the lease loop fills it, the engine and the HTTP layer
    read it."""

    def __init__(
        self,
        engine,
        url: str,
        options: StreamOptions | None = None,
        registry=None,
        startup=None,
        address: str = "",
        leases: LeaseOptions | None = None,
    ):
        """`startup`: the server's background start (serve/http/startup.py): nothing is consumed before the
        models are loaded (a tick would be refused as having no model), nor at all if the start failed."""
        if not isinstance(engine.own, LeasedOwnership):
            raise TypeError("the stream needs the engine built with a LeasedOwnership (nq serve --stream)")
        self.engine, self.url, self.startup, self.address = engine, url, startup, address
        self.own: LeasedOwnership = engine.own
        self.opt = options or StreamOptions()
        self.lease_opt = leases or LeaseOptions()
        self.stats = StreamStats()
        self.consumers: dict[int, PartitionConsumer] = {}
        self._outcomes: asyncio.Queue[list[dict]] = asyncio.Queue(maxsize=1024)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._info_at = 0.0
        self.nc = self.js = None
        self.leases: PartitionLeases | None = None
        self._gauges = _gauges(registry, self) if registry is not None else None

    # lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> TickStream:
        import nats

        # reconnect for ever: a broker restart is waited out, never fatal to the server
        self.nc = await nats.connect(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.25, name="nq-serve"
        )
        self.js = self.nc.jetstream()
        await self._ensure_streams()
        self.leases = PartitionLeases(
            self.js, self.own, self.address, self.lease_opt, self._claimed, self._released
        )
        await self.leases.open()
        self._hook_outcomes(asyncio.get_running_loop())
        self._tasks = [
            asyncio.create_task(self._run_leases()),
            asyncio.create_task(self._publish_outcomes()),
            asyncio.create_task(self._watch_info()),
        ]
        for t in self._tasks:  # a task that dies says so at once, not when it is collected
            t.add_done_callback(_log_failure)
        log.info(
            "stream %s: replica %d, %d partitions of %s.*, lease TTL %g s",
            self.url,
            self.own.replica,
            self.own.partitions,
            TICKS,
            self.lease_opt.ttl_s,
        )
        return self

    async def stop(self) -> None:
        """Let the partitions go (each consumer finishes its batch in hand, acknowledged; the journal into the
        tables), then close the connection."""
        self._stopping.set()
        if self.leases is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.leases.stop(), 60)
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 30)
        if self.nc is not None:  # everything was awaited: a drain has nothing left but pull requests
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _run_leases(self) -> None:
        while self.startup is not None and not self.startup.done.is_set():
            if self._stopping.is_set():
                return
            await asyncio.sleep(0.2)
        if self.startup is not None and not self.startup.ready:
            log.error("stream: the server's start failed (see /readyz); no partition is claimed")
            return
        await self.leases.mark_recovered()
        await self.leases.run()

    # the broker's objects -----------------------------------------------------------------------------------
    async def _ensure_streams(self) -> None:
        from nats.js.api import StorageType, StreamConfig, SubjectTransform
        from nats.js.errors import NotFoundError

        o, parts = self.opt, self.own.partitions
        # the broker files nq.ticks.<source> as nq.tick.<partition>.<source>: publishers need not know P
        dest = f"{FILED}.{{{{partition({parts},1)}}}}.{{{{wildcard(1)}}}}"
        for name, subjects, transform in (
            (o.ticks_stream, [f"{TICKS}.*"], SubjectTransform(src=f"{TICKS}.*", dest=dest)),
            (o.out_stream, [f"{PREDICTIONS}.>", f"{OUTCOMES}.>", f"{DEAD}.>"], None),
        ):
            try:
                info = await self.js.stream_info(name)
            except NotFoundError:
                cfg = StreamConfig(
                    name=name,
                    subjects=subjects,
                    storage=StorageType.FILE,
                    duplicate_window=o.duplicate_window_s,
                    max_age=o.max_age_s,
                    subject_transform=transform,
                )
                await self.js.add_stream(cfg)
                continue
            have = info.config.subject_transform
            if transform is not None and (have is None or have.dest != dest):
                raise RuntimeError(
                    f"stream {name} files ticks as {have.dest if have else 'published'}, not {dest}: it was "
                    f"made by another version or with another partition count. Fix: start every replica with "
                    f"the --partitions it was made with, or delete the stream (nats stream rm {name})"
                )

    # partitions ---------------------------------------------------------------------------------------------
    async def _claimed(self, k: int, previous: dict | None) -> None:
        consumer = PartitionConsumer(self, k)
        self.consumers[k] = consumer
        consumer.task = asyncio.create_task(consumer.run(previous))
        consumer.task.add_done_callback(_log_failure)

    async def _released(self, ks: list[int]) -> None:
        """Stop partitions `ks`' consumers (each batch in hand finished and acknowledged), then write the
        journal into the tables, so the next holders continue from them."""
        consumers = [c for c in (self.consumers.pop(k, None) for k in ks) if c is not None]
        for c in consumers:
            c.stopping.set()
        for c in consumers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(c.task), 30)
            self.stats.by_partition.pop(c.k, None)
        await asyncio.to_thread(flush_journal, self.engine)

    # figures ------------------------------------------------------------------------------------------------
    async def _watch_info(self) -> None:
        """The consumers' lag and unacknowledged counts, once a second (metrics, status)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)
            for k, c in list(self.consumers.items()):
                if c.sub is None:
                    continue
                try:
                    info = await c.sub.consumer_info()
                except Exception:  # noqa: BLE001 - the broker away: the figures wait for it
                    continue
                self.stats.by_partition[k] = (info.num_pending, info.num_ack_pending)
            held = self.own.held
            for k in [k for k in self.stats.by_partition if k not in held]:
                del self.stats.by_partition[k]
            self.stats.pending = sum(p for p, _ in self.stats.by_partition.values())
            self.stats.ack_pending = sum(a for _, a in self.stats.by_partition.values())
            if self._gauges is not None:
                self._gauges()

    # answering (shared by the partitions) -------------------------------------------------------------------
    async def answer(self, todo: list, published: dict[str, int]) -> None:
        """Queue every message's ticks on the engine at once, then publish each answer in order."""
        queued: list[tuple[object, object]] = []
        for m in todo:
            try:
                rows = ticks_of(m.subject, m.data, self.opt.max_values)
                label = f"message {m.metadata.sequence.stream}"
                queued.append((m, self.engine.submit(rows, label, key=STREAM_KEY)))
            except Refused as exc:
                queued.append((m, exc))
            except NotOwner:  # the partition's lease went meanwhile: not ours to answer, nor to acknowledge
                raise LeaseGone(f"partition of {source_of(m.subject)!r} no longer held here") from None
        out: list[tuple[str, bytes, str]] = []  # (subject, payload, message id)
        for m, fut in queued:
            source = source_of(m.subject)
            try:
                if isinstance(fut, Refused):
                    raise fut
                try:
                    answers = await asyncio.wrap_future(fut)
                except Rejected as exc:
                    raise Refused("; ".join(exc.messages), 422, exc.field) from None
                except NoModel as exc:
                    raise Refused(str(exc), 409, "source") from None
                except NotOwner as exc:
                    raise Refused(str(exc), 421, "source") from None
            except Refused as exc:
                self.stats.dead += 1
                seq = m.metadata.sequence.stream
                body = {"reason": exc.reason, "status": exc.status, "field": exc.field}
                body |= {
                    "subject": f"{TICKS}.{source}",
                    "seq": seq,
                    "payload": m.data.decode("utf-8", "replace"),
                }
                out.append((f"{DEAD}.{source}", json.dumps(body).encode(), f"dead:{seq}"))
                continue
            for a in answers:
                ts_ns = pd.Timestamp(a.record["timestamp"]).value
                if a.duplicate:
                    self.stats.duplicates += 1
                    if ts_ns <= await self._last_published(source, published):
                        continue
                else:
                    self.stats.predicted += 1
                text = a.text if a.text is not None else json.dumps(a.record)
                out.append((f"{PREDICTIONS}.{source}", text.encode(), str(a.record["prediction_id"])))
                published[source] = ts_ns
        # one connection: the broker stores them in the order sent, so a source's records stay in order
        acks = await asyncio.gather(
            *(self.js.publish(s, p, headers={"Nats-Msg-Id": i}, timeout=5) for s, p, i in out),
            return_exceptions=True,
        )
        for ack in acks:
            if isinstance(ack, BaseException):
                raise ack

    async def _last_published(self, source: str, published: dict[str, int]) -> int:
        """The timestamp (ns) of the last record on nq.predictions.<source>, or -1: read from the broker once,
        then kept as this consumer publishes."""
        from nats.js.errors import NotFoundError

        if source not in published:
            try:
                msg = await self.js.get_last_msg(self.opt.out_stream, f"{PREDICTIONS}.{source}")
                published[source] = pd.Timestamp(json.loads(msg.data)["timestamp"]).value
            except NotFoundError:
                published[source] = -1
        return published[source]

    # outcomes -----------------------------------------------------------------------------------------------
    def _hook_outcomes(self, loop: asyncio.AbstractEventLoop) -> None:
        """The engine reports each batch's realized outcomes on its worker thread; they are queued for the
        event loop (bounded: a full queue drops them, counted) next to the HTTP layer's own callback."""
        before = self.engine.on_records

        def put(outcomes: list[dict]) -> None:
            try:
                self._outcomes.put_nowait(outcomes)
            except asyncio.QueueFull:
                self.stats.outcomes_dropped += len(outcomes)

        def on_records(records: list[dict], outcomes: list[dict]) -> None:
            if before is not None:
                before(records, outcomes)
            if outcomes:
                loop.call_soon_threadsafe(put, outcomes)

        self.engine.on_records = on_records

    async def _publish_outcomes(self) -> None:
        while not (self._stopping.is_set() and self._outcomes.empty()):
            try:
                batch = await asyncio.wait_for(self._outcomes.get(), 0.5)
            except TimeoutError:
                continue
            for o in batch:
                mid = f"outcome:{o['source']}:{o['timestamp']}"
                try:
                    await self.js.publish(
                        f"{OUTCOMES}.{o['source']}", json.dumps(o).encode(), headers={"Nats-Msg-Id": mid}
                    )
                except Exception as exc:  # noqa: BLE001 - best effort: /api/v1/outcomes keeps them
                    self.stats.outcomes_dropped += 1
                    log.debug("outcome not published: %s", exc)


class PartitionConsumer:
    """Partition k of a replica holding its lease: prepare (the previous holder's journal into the tables,
    the sources' models loaded), then its durable consumer from the first unacknowledged message."""

    def __init__(self, stream: TickStream, k: int):
        self.stream, self.k = stream, k
        self.durable = f"{stream.opt.durable}-p{k}"
        self.filter = f"{FILED}.{k}.>"
        self.stopping = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.sub = None
        self._next: int = 1  # the next stream sequence to handle
        self._delivered = 0  # the consumer's delivery sequence seen last (a gap: a delivery lost in flight)
        self._published: dict[str, int] = {}  # per source: the last record's ts_ns on nq.predictions

    @property
    def js(self):
        return self.stream.js

    async def run(self, previous: dict | None) -> None:
        st, began = self.stream, time.monotonic()
        await self._prepare(previous)
        if self.stopping.is_set():
            return
        await st.leases.mark_taken(self.k)
        took = time.monotonic() - began
        if previous and previous["replica"] != st.own.replica and not previous.get("clean"):
            st.leases.stats.last_takeover_s = took
        log.info("stream: partition %d taken (previous %s) in %.2f s", self.k, previous, took)
        # where the last holder stopped: the consumer is re-created at its first unacknowledged sequence, so
        # what it had delivered and not acknowledged comes first, in order (not after ack_wait, behind newer)
        floor = await self._ack_floor()
        await self._rewind(floor + 1 if floor else 1, count=False)
        await self._consume()

    async def _prepare(self, previous: dict | None) -> None:
        st = self.stream
        prev = previous["replica"] if previous else None
        if prev is not None and prev != st.own.replica and not previous.get("clean"):
            # alive: it lets go cleanly at its next renewal (or, restarted, once its start recovered its
            # journal); dead: its journal is flushed here. Past 12 TTL the wait ends, with a warning
            deadline = time.monotonic() + 12 * st.lease_opt.ttl_s
            while await st.leases.previous_alive(prev, st.engine.wh) and time.monotonic() < deadline:
                if self.stopping.is_set():
                    return
                with contextlib.suppress(Exception):
                    h = json.loads((await st.leases.handoff.get(f"part.{self.k}")).value)
                    if h.get("clean"):
                        break
                await asyncio.sleep(st.lease_opt.renew_s)
            else:
                if time.monotonic() >= deadline:
                    log.warning(
                        "stream: partition %d: replica %d never let it go cleanly; going on", self.k, prev
                    )
                elif not await st.leases.previous_alive(prev, st.engine.wh):
                    n = await asyncio.to_thread(recover_journal, st.engine.wh, prev)
                    log.info("stream: journal of dead replica %d: %d segment(s) into the tables", prev, n)
        engine = st.engine
        mine = [s for s in engine.models.owned_trained_sources() if st.own.partition(s) == self.k]
        for s in mine:
            await asyncio.wrap_future(engine.call(lambda s=s: take_over(engine, s)))

    async def _ack_floor(self) -> int:
        """The stream sequence below which the durable consumer has everything acknowledged (0: none yet)."""
        from nats.js.errors import NotFoundError

        try:
            return (
                await self.js.consumer_info(self.stream.opt.ticks_stream, self.durable)
            ).ack_floor.stream_seq
        except NotFoundError:
            return 0

    async def _subscribe(self, start: int):
        """The pull subscription, its consumer created to deliver from stream sequence `start`."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        o = self.stream.opt
        cfg = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_wait=o.ack_wait_s,
            max_ack_pending=o.max_ack_pending,
            filter_subject=self.filter,
        )
        return await self.js.pull_subscribe(
            self.filter, durable=self.durable, stream=o.ticks_stream, config=cfg
        )

    async def _rewind(self, seq: int, count: bool = True) -> None:
        """Deliver again from stream sequence `seq` (everything of the partition after it, in order). Only the
        lease holder touches its partition's consumer, so deleting it races no one."""
        from nats.js.errors import NotFoundError

        st = self.stream
        st.stats.rewinds += count
        self._published.clear()  # read back from the broker: a failed publish may have gone through
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(st.opt.ticks_stream, self.durable)
        first = (await self.js.stream_info(st.opt.ticks_stream)).state.first_seq
        if first > seq:  # aged out of the stream before they were done (of all partitions: not counted)
            log.warning(
                "stream: partition %d: sequences %d-%d are no longer in the stream", self.k, seq, first - 1
            )
            seq = first
        self._next, self._delivered = max(seq, 1), 0
        self.sub = await self._subscribe(self._next)

    async def _consume(self) -> None:
        st = self.stream
        failures = 0  # in a row: the wait before delivering again doubles, up to 8 s (a journal refusing)
        while not self.stopping.is_set():
            if not st.leases.valid(self.k):  # not renewed in time (the broker away): take nothing
                await asyncio.sleep(0.1)
                continue
            try:
                try:
                    msgs = await self.sub.fetch(st.opt.batch, timeout=0.5)
                except TimeoutError:  # nothing new (nats.errors.TimeoutError is one too)
                    msgs = []
                if msgs:
                    await self._handle(msgs)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker away, a publish or the journal refused: again
                log.warning(
                    "stream: partition %d: %s: %s; delivering again from sequence %s",
                    self.k,
                    type(exc).__name__,
                    exc,
                    self._next,
                )
                await asyncio.sleep(min(8.0, 0.25 * 2**failures))
                failures += 1
                with contextlib.suppress(Exception):
                    await self._rewind(self._next)

    async def _handle(self, msgs: list) -> None:
        todo = []
        for m in msgs:
            seq, delivered = m.metadata.sequence.stream, m.metadata.sequence.consumer
            if delivered != self._delivered + 1:  # a delivery lost in flight: again from the first not done
                await self._rewind(self._next)
                break
            self._delivered = delivered
            if seq < self._next:  # done before (its acknowledgement was lost)
                await m.ack()
                continue
            todo.append(m)
            self._next = seq + 1
        if not todo:
            return
        first = todo[0].metadata.sequence.stream
        try:
            await self.stream.answer(todo, self._published)
        except BaseException:
            self._next = first  # nothing of the batch acknowledged: all of it again
            raise
        for m in todo:
            await m.ack()


def take_over(engine, source: str) -> int:
    """Load `source` as a new holder continues it (worker thread): its model from the furthest saved or live
    state (`streams.load_stream`), then that state advanced, without emitting, over the rows the tables and
    this replica's journal hold after it (the ticks the previous holder predicted after its last saved
    state). Returns the rows replayed."""
    if engine.models.load(source) == "failed" or source not in engine.predictor.sources():
        return 0  # status names the failure; its ticks get 409/422 to the dead-letter subject
    values, stamps = rows_after(lambda: engine.models.series(source))(engine.predictor.last_ts(source))
    if len(values):
        ns = np.asarray(pd.to_datetime(stamps, utc=True).as_unit("ns").asi8, dtype=np.int64)
        engine.restarts.predict(lambda: engine.predictor.advance(source, values, ns))
    log.info(json.dumps({"event": "source_taken_over", "source": source, "rows_replayed": len(values)}))
    return len(values)


def flush_journal(engine, timeout_s: float = 60.0) -> None:
    """Close the engine's open journal segment and wait until the flusher has written every closed one into
    the tables (with the states after them): what a partition's next holder reads. Blocking."""
    engine.call(engine._rotate).result(timeout_s)
    deadline = time.monotonic() + timeout_s
    while engine.flusher.backlog() or engine.log_backlog():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the journal was not written into the tables in {timeout_s:g} s")
        time.sleep(0.05)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stream: %s stopped: %r", task.get_coro().__name__, task.exception())


def _gauges(registry, stream: TickStream):
    """Prometheus figures of the stream on the server's registry; returns the function that updates them."""
    from prometheus_client import Gauge

    stats = stream.stats
    g = {
        name: Gauge(f"nq_stream_{name}", doc, registry=registry)
        for name, doc in (
            ("pending", "Ticks of the owned partitions not yet delivered to this server (consumer lag)"),
            ("ack_pending", "Ticks delivered and not yet acknowledged"),
            ("predicted", "Stream ticks predicted since the start"),
            ("duplicates", "Stream ticks answered with their stored record (delivered or published again)"),
            ("dead", "Stream messages refused to the dead-letter subject"),
            ("rewinds", "Times a consumer was re-created at the first sequence not done"),
            ("lost", "Stream messages gone (aged out, deleted) before they were handled"),
        )
    }
    leases = {
        name: Gauge(f"nq_stream_{name}", doc, registry=registry)
        for name, doc in (
            ("owned_partitions", "Stream partitions whose lease this replica holds"),
            ("live_replicas", "Replicas with a live member key in the lease bucket"),
            ("claims", "Partitions claimed since the start"),
            ("takeovers", "Partitions claimed from a replica that had not let go (died or cut off)"),
            ("leases_lost", "Leases found expired or taken at renewal"),
            (
                "last_takeover_seconds",
                "Claim to consuming, the last takeover (journal recovery, model loads)",
            ),
        )
    }
    part_pending = Gauge(
        "nq_stream_partition_pending",
        "Ticks of the partition not yet delivered (lag)",
        ["partition"],
        registry=registry,
    )
    part_ack = Gauge(
        "nq_stream_partition_ack_pending",
        "Ticks of the partition delivered, not acknowledged",
        ["partition"],
        registry=registry,
    )
    shown: set[int] = set()

    def update() -> None:
        for name, gauge in g.items():
            gauge.set(getattr(stats, name))
        ls = stream.leases.stats if stream.leases is not None else None
        if ls is not None:
            for name, attr in (
                ("owned_partitions", "owned"),
                ("live_replicas", "live"),
                ("claims", "claims"),
                ("takeovers", "takeovers"),
                ("leases_lost", "lost"),
                ("last_takeover_seconds", "last_takeover_s"),
            ):
                leases[name].set(getattr(ls, attr))
        for k in shown - set(stats.by_partition):  # a partition let go: its series goes, not a stale figure
            part_pending.remove(str(k))
            part_ack.remove(str(k))
        for k, (pending, ack) in stats.by_partition.items():
            part_pending.labels(str(k)).set(pending)
            part_ack.labels(str(k)).set(ack)
        shown.clear()
        shown.update(stats.by_partition)

    return update


class with_stream:  # noqa: N801 - used as a function: with_stream(app, stream)
    """ASGI: `app` whose lifespan also starts `stream` (after the app's startup) and stops it before the
    app's shutdown, so the batch in hand is acknowledged before the engine closes."""

    def __init__(self, app, stream: TickStream):
        self.app, self.stream = app, stream

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def receive_() -> dict:
            msg = await receive()
            if msg["type"] == "lifespan.shutdown":
                await self.stream.stop()
            return msg

        async def send_(msg: dict) -> None:
            if msg["type"] == "lifespan.startup.complete":
                try:
                    await self.stream.start()
                except Exception as exc:  # noqa: BLE001 - the server does not start without its stream
                    msg = {"type": "lifespan.startup.failed", "message": f"stream {self.stream.url}: {exc}"}
            await send(msg)

        await self.app(scope, receive_, send_)
