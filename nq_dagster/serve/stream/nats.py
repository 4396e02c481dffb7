"""Ticks from NATS JetStream (`nq serve --stream nats://host:4222`): consumed in the server's event loop,
predicted on the engine's one path, acknowledged only once their records are in the journal and published.

Subjects (one token per source; JSON payloads):

    nq.ticks.<source>        in: a tick, or several, in the realtime request's shape ({"data": [..],
                             "timestamp": .. | "timestamps": [..]}; "source", if present, must be <source>).
                             Publishers should set the Nats-Msg-Id header ("<source>:<timestamp>"): the broker
                             then drops a message published twice within the stream's duplicate window
    nq.predictions.<source>  out: each record, as the realtime answer carries it (Nats-Msg-Id: prediction_id)
    nq.outcomes.<source>     out: each prediction's realized outcome, as /api/v1/outcomes shows it
    nq.dead.<source>         out: a refused message as {"reason", "status", "field", "subject", "seq",
                             "payload"}

Two file-backed streams are created when missing: NQ_TICKS (nq.ticks.>) and NQ_OUT (the three out subjects),
and one durable pull consumer on NQ_TICKS with explicit acknowledgements and a bounded ack-pending count.

Exactly once, in order. Messages are handled in stream order: a batch is fetched, every message of it queued
on the engine at once (its worker keeps a source's ticks in the order queued), the answers awaited in order,
the records and refusals published (with message ids), and only then the messages acknowledged. Any failure
(broker gone, a publish refused) leaves the batch unacknowledged and rewinds: the consumer is re-created at
the first stream sequence not yet done, so the broker delivers from there again, in order. A message delivered
again is a tick the engine has stored: it answers with the stored record (never a second row), and the record
is published again only if the predictions subject does not hold it yet (the last published timestamp per
source, read back from NQ_OUT; the message id guards the rest). A gap in the sequences (a message lost in
flight while the broker restarted, or a previous process that died with messages delivered and unacknowledged)
rewinds the same way, so a later tick never overtakes an earlier one and is never refused as "older". Memory
is one batch: nothing is fetched before the batch in hand is acknowledged.

One replica only: the consumer is rewound by deleting and re-creating it, which two replicas sharing it would
race on (ownership that fails over between replicas is not built; see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import pandas as pd

from nq_dagster.serve.engine import NoModel, NotOwner, Rejected
from nq_dagster.serve.http import strictjson
from nq_dagster.serve.http.bodies import RealtimeBody, parse
from nq_dagster.serve.http.errors import ApiError

log = logging.getLogger("nq.serve.stream")

TICKS, PREDICTIONS, OUTCOMES, DEAD = "nq.ticks", "nq.predictions", "nq.outcomes", "nq.dead"
STREAM_KEY = "stream:nats"  # the engine's fair lane for the stream's ticks, beside the API keys' lanes


@dataclass
class StreamOptions:
    """The broker side: stream and consumer names and limits (defaults suit one replica)."""

    ticks_stream: str = "NQ_TICKS"
    out_stream: str = "NQ_OUT"
    durable: str = "nq-serve"
    batch: int = 256  # messages fetched at once (the memory bound)
    max_ack_pending: int = 1024  # the broker stops delivering past this many unacknowledged messages
    ack_wait_s: float = 30.0  # an unacknowledged message is delivered again after this
    duplicate_window_s: float = 3600.0  # the broker drops a message id seen within this
    max_age_s: float = 7 * 86400.0  # ticks and records are kept this long (a replayable history)
    max_values: int = 1000  # values in one message (as a realtime request)


@dataclass
class StreamStats:
    predicted: int = 0  # ticks predicted for the first time
    duplicates: int = 0  # ticks answered with their stored record (a message delivered or published again)
    dead: int = 0  # messages refused to nq.dead.<source>
    rewinds: int = 0  # consumer re-created at the first sequence not done
    outcomes_dropped: int = 0  # outcomes not published (their queue full); /api/v1/outcomes still has them
    pending: int = 0  # messages in the stream not yet delivered (the consumer's lag)
    ack_pending: int = 0
    lost: int = 0  # messages the stream no longer had when they were due (aged out, deleted)


class Refused(Exception):
    """A message the stream cannot take: its reason goes to the dead-letter subject."""

    def __init__(self, reason: str, status: int = 422, field: str | None = None):
        super().__init__(reason)
        self.reason, self.status, self.field = reason, status, field


def ticks_of(subject: str, data: bytes, max_values: int) -> list[tuple]:
    """The message's ticks [(source, timestamp, value)] as the engine takes them, after the realtime request's
    checks; Refused with the reason otherwise."""
    source = subject[len(TICKS) + 1 :]
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
    """See the module docstring. `start()` and `stop()` on the server's event loop (`with_stream`)."""

    def __init__(self, engine, url: str, options: StreamOptions | None = None, registry=None, startup=None):
        """`startup`: the server's background start (serve/http/startup.py): nothing is consumed before the
        models are loaded (a tick would be refused as having no model), nor at all if the start failed."""
        self.engine, self.url, self.startup = engine, url, startup
        self.opt = options or StreamOptions()
        self.stats = StreamStats()
        self._next: int | None = None  # the next stream sequence to handle
        self._rewound_to: int | None = None
        self._published: dict[str, int] = {}  # per source: the last record's ts_ns on nq.predictions
        self._outcomes: asyncio.Queue[list[dict]] = asyncio.Queue(maxsize=1024)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._info_at = 0.0
        self.nc = self.js = self._sub = None
        self._gauges = _gauges(registry, self.stats) if registry is not None else None

    # lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> TickStream:
        import nats

        # reconnect for ever: a broker restart is waited out, never fatal to the server
        self.nc = await nats.connect(
            self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.25, name="nq-serve"
        )
        self.js = self.nc.jetstream()
        await self._ensure_streams()
        # where the last process stopped: the consumer is re-created at its first unacknowledged sequence, so
        # what it had delivered and not acknowledged comes first, in order (not after ack_wait, behind newer)
        floor = await self._ack_floor()
        await self._rewind(floor + 1 if floor else max(1, await self._first_seq()), count=False)
        self._hook_outcomes(asyncio.get_running_loop())
        self._tasks = [asyncio.create_task(self._consume()), asyncio.create_task(self._publish_outcomes())]
        for t in self._tasks:  # a task that dies says so at once, not when it is collected
            t.add_done_callback(_log_failure)
        log.info("stream %s: consuming %s.> from sequence %d", self.url, TICKS, self._next)
        return self

    async def stop(self) -> None:
        """Finish the batch in hand (its ticks acknowledged), then close the connection."""
        self._stopping.set()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 30)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    # the broker's objects -----------------------------------------------------------------------------------
    async def _ensure_streams(self) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        o = self.opt
        for name, subjects in (
            (o.ticks_stream, [f"{TICKS}.>"]),
            (o.out_stream, [f"{PREDICTIONS}.>", f"{OUTCOMES}.>", f"{DEAD}.>"]),
        ):
            try:
                await self.js.stream_info(name)
            except NotFoundError:
                cfg = StreamConfig(
                    name=name,
                    subjects=subjects,
                    storage=StorageType.FILE,
                    duplicate_window=o.duplicate_window_s,
                    max_age=o.max_age_s,
                )
                await self.js.add_stream(cfg)

    async def _ack_floor(self) -> int:
        """The stream sequence below which the durable consumer has everything acknowledged (0: none yet)."""
        from nats.js.errors import NotFoundError

        try:
            return (await self.js.consumer_info(self.opt.ticks_stream, self.opt.durable)).ack_floor.stream_seq
        except NotFoundError:
            return 0

    async def _first_seq(self) -> int:
        return (await self.js.stream_info(self.opt.ticks_stream)).state.first_seq

    async def _subscribe(self, start: int):
        """The pull subscription, its consumer created to deliver from stream sequence `start`."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        cfg = ConsumerConfig(
            durable_name=self.opt.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_wait=self.opt.ack_wait_s,
            max_ack_pending=self.opt.max_ack_pending,
        )
        return await self.js.pull_subscribe(
            f"{TICKS}.>", durable=self.opt.durable, stream=self.opt.ticks_stream, config=cfg
        )

    async def _rewind(self, seq: int, count: bool = True) -> None:
        """Deliver again from stream sequence `seq` (everything after it is redelivered, in order)."""
        from nats.js.errors import NotFoundError

        self.stats.rewinds += count
        self._published.clear()  # read back from the broker: a failed publish may have gone through
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.opt.ticks_stream, self.opt.durable)
        first = await self._first_seq()
        if first > seq:  # aged out of the stream before they were done
            self.stats.lost += first - seq
            log.warning("stream: sequences %d-%d are no longer in the stream", seq, first - 1)
            seq = first
        self._next = self._rewound_to = max(seq, 1)
        self._sub = await self._subscribe(self._next)

    # consuming ----------------------------------------------------------------------------------------------
    async def _consume(self) -> None:
        while self.startup is not None and not self.startup.done.is_set():
            if self._stopping.is_set():
                return
            await asyncio.sleep(0.2)
        if self.startup is not None and not self.startup.ready:
            log.error("stream: the server's start failed (see /readyz); nothing is consumed")
            return
        failures = 0  # in a row: the wait before delivering again doubles, up to 8 s (a journal refusing)
        while not self._stopping.is_set():
            try:
                try:
                    msgs = await self._sub.fetch(self.opt.batch, timeout=0.5)
                except TimeoutError:  # nothing new (nats.errors.TimeoutError is one too)
                    msgs = []
                if msgs:
                    await self._handle(msgs)
                    failures = 0
                await self._refresh_info()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker away, a publish or the journal refused: again
                log.warning(
                    "stream: %s: %s; delivering again from sequence %s", type(exc).__name__, exc, self._next
                )
                await asyncio.sleep(min(8.0, 0.25 * 2**failures))
                failures += 1
                with contextlib.suppress(Exception):
                    await self._rewind(self._next)

    async def _handle(self, msgs: list) -> None:
        todo = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq < self._next:  # done before (its acknowledgement was lost)
                await m.ack()
                continue
            if seq > self._next:
                if self._rewound_to != self._next:  # a gap: deliver again from the first not done
                    await self._rewind(self._next)
                    break
                self.stats.lost += seq - self._next  # deleted from the stream: not deliverable
            todo.append(m)
            self._next = seq + 1
        if not todo:
            return
        first = todo[0].metadata.sequence.stream
        try:
            await self._answer(todo)
        except BaseException:
            self._next = first  # nothing of the batch acknowledged: all of it again
            raise
        self._rewound_to = None
        for m in todo:
            await m.ack()

    async def _answer(self, todo: list) -> None:
        """Queue every message's ticks on the engine at once, then publish each answer in order."""
        queued: list[tuple[object, object]] = []
        for m in todo:
            try:
                rows = ticks_of(m.subject, m.data, self.opt.max_values)
                label = f"message {m.metadata.sequence.stream}"
                queued.append((m, self.engine.submit(rows, label, key=STREAM_KEY)))
            except Refused as exc:
                queued.append((m, exc))
            except NotOwner as exc:
                queued.append((m, Refused(str(exc), 421, "source")))
        out: list[tuple[str, bytes, str]] = []  # (subject, payload, message id)
        for m, fut in queued:
            source = m.subject[len(TICKS) + 1 :]
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
                body = {"reason": exc.reason, "status": exc.status, "field": exc.field, "subject": m.subject}
                body |= {"seq": seq, "payload": m.data.decode("utf-8", "replace")}
                out.append((f"{DEAD}.{source}", json.dumps(body).encode(), f"dead:{seq}"))
                continue
            for a in answers:
                ts_ns = pd.Timestamp(a.record["timestamp"]).value
                if a.duplicate:
                    self.stats.duplicates += 1
                    if ts_ns <= await self._last_published(source):
                        continue
                else:
                    self.stats.predicted += 1
                text = a.text if a.text is not None else json.dumps(a.record)
                out.append((f"{PREDICTIONS}.{source}", text.encode(), str(a.record["prediction_id"])))
                self._published[source] = ts_ns
        # one connection: the broker stores them in the order sent, so a source's records stay in order
        acks = await asyncio.gather(
            *(self.js.publish(s, p, headers={"Nats-Msg-Id": i}, timeout=5) for s, p, i in out),
            return_exceptions=True,
        )
        for ack in acks:
            if isinstance(ack, BaseException):
                raise ack

    async def _last_published(self, source: str) -> int:
        """The timestamp (ns) of the last record on nq.predictions.<source>, or -1: read from the broker once,
        then kept as this process publishes."""
        from nats.js.errors import NotFoundError

        if source not in self._published:
            try:
                msg = await self.js.get_last_msg(self.opt.out_stream, f"{PREDICTIONS}.{source}")
                self._published[source] = pd.Timestamp(json.loads(msg.data)["timestamp"]).value
            except NotFoundError:
                self._published[source] = -1
        return self._published[source]

    async def _refresh_info(self) -> None:
        """The consumer's lag and unacknowledged count, once a second (metrics, status)."""
        now = time.monotonic()
        if now - self._info_at < 1.0:
            return
        self._info_at = now
        try:
            info = await self._sub.consumer_info()
        except Exception:  # noqa: BLE001 - the broker away: the figures wait for it
            return
        self.stats.pending, self.stats.ack_pending = info.num_pending, info.num_ack_pending
        if self._gauges is not None:
            self._gauges()

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


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stream: %s stopped: %r", task.get_coro().__name__, task.exception())


def _gauges(registry, stats: StreamStats):
    """Prometheus figures of the stream on the server's registry; returns the function that updates them."""
    from prometheus_client import Gauge

    g = {
        name: Gauge(f"nq_stream_{name}", doc, registry=registry)
        for name, doc in (
            ("pending", "Ticks in the broker's stream not yet delivered to this server (consumer lag)"),
            ("ack_pending", "Ticks delivered and not yet acknowledged"),
            ("predicted", "Stream ticks predicted since the start"),
            ("duplicates", "Stream ticks answered with their stored record (delivered or published again)"),
            ("dead", "Stream messages refused to the dead-letter subject"),
            ("rewinds", "Times the consumer was re-created at the first sequence not done"),
            ("lost", "Stream messages gone (aged out, deleted) before they were handled"),
        )
    }

    def update() -> None:
        for name, gauge in g.items():
            gauge.set(getattr(stats, name))

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
