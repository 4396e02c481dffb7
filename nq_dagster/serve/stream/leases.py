"""Partition leases in the broker's key-value store: which live replica consumes which stream partition.

Two JetStream key-value buckets (file storage, created when missing):

    nq_leases   (TTL = the lease TTL)  member.<replica> -> {"replica", "address"}: the live replicas
                                       part.<k>         -> {"replica", "address"}: partition k's holder
    nq_handoff  (no TTL)               part.<k>         -> {"replica", "clean"}: partition k's last
                                                          holder, and whether it flushed its journal when
                                                          it let go

A lease is taken with `kv.create` (fails while another replica's key lives) and renewed every TTL/4 with
`kv.update(key, last=revision)`: the revision is the fencing token. A renewal refused (the key expired and was
taken, or deleted) means the lease is lost: the partition's consumer stops at once, this replica's journal is
written into the tables, and the handoff says "clean". A key not renewed for the TTL expires in the broker, so
a replica killed -9 loses its partitions after at most the TTL; a survivor claims each one. Between two
renewals the holder trusts its lease only until `sent + 0.8 * TTL` (local monotonic clock, from before the
renewal was sent, so earlier than the broker's expiry): a replica that cannot renew (paused, cut from the
broker) stops taking ticks of the partition before anyone else can claim it.

Balance: each replica claims free partitions up to ceil(P / live replicas) and releases its extras (clean
handoff, then `kv.delete(last=revision)`) down to that, or down to floor(P / live) while another live replica
holds fewer, so a replica that joins gets its share without a restart and the survivors of a death share the
dead one's.

Takeover. Before the new holder consumes a partition it makes sure the ticks the previous holder journaled are
in the tables (serve/engine/ticklog.py: a replica's journal holds what it has not flushed yet): a clean
handoff, or itself as the last holder, needs nothing; a previous holder still alive is waited for (it lets go
cleanly within a renewal); a dead one's journal is flushed into the tables by the new holder
(`recover_journal`, under a file lock, idempotent: parts are named by the segment). Then the partition's
sources are loaded from their last saved state plus the rows after it (`streams.load_stream`), and the durable
consumer continues from its first unacknowledged message; a tick the dead replica had predicted and not
acknowledged is answered with its stored record.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nq_dagster.serve.engine.ownership import LeasedOwnership

log = logging.getLogger("nq.serve.stream")

SAFETY = 0.8  # of the TTL: how long a renewal is trusted locally (the broker's expiry comes later)


@dataclass
class LeaseOptions:
    """`ttl_s` bounds the takeover after a replica dies: its partitions are free at most `ttl_s` after its
    last renewal, and claimed at the next round of a survivor (`ttl_s / 4`)."""

    ttl_s: float = 5.0
    bucket: str = "nq_leases"
    handoff_bucket: str = "nq_handoff"

    @property
    def renew_s(self) -> float:
        return self.ttl_s / 4


@dataclass
class LeaseStats:
    claims: int = 0  # partitions claimed since the start
    takeovers: int = 0  # of which the previous holder was another replica that had not let go cleanly
    releases: int = 0  # partitions let go (rebalance or shutdown)
    lost: int = 0  # leases found taken or expired at renewal
    last_takeover_s: float = 0.0  # claim to consuming, the last takeover (journal recovery, model loading)
    owned: int = 0
    live: int = 0
    waiting: dict[int, float] = field(default_factory=dict)


class PartitionLeases:
    """The lease loop of one replica. `on_claim(k, previous)` prepares and starts partition k's consumer
    (previous: the handoff record or None); `on_release(ks)` stops partitions ks and flushes the journal."""

    def __init__(
        self,
        js,
        own: LeasedOwnership,
        address: str,
        options: LeaseOptions,
        on_claim: Callable[[int, dict | None], Awaitable[None]],
        on_release: Callable[[list[int]], Awaitable[None]],
    ):
        self.js, self.own, self.address, self.opt = js, own, address, options
        self.on_claim, self.on_release = on_claim, on_release
        self.stats = LeaseStats()
        self.revs: dict[int, int] = {}
        self.valid_until: dict[int, float] = {}  # monotonic
        self._member_rev: int | None = None
        self._letting_go: asyncio.Task | None = None
        self.kv = self.handoff = None
        self._stopping = asyncio.Event()

    # the buckets --------------------------------------------------------------------------------------------
    async def open(self) -> None:
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        for attr, name, ttl in (
            ("kv", self.opt.bucket, self.opt.ttl_s),
            ("handoff", self.opt.handoff_bucket, None),
        ):
            try:
                bucket = await self.js.key_value(name)
            except BucketNotFoundError:
                cfg = KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE, ttl=ttl)
                bucket = await self.js.create_key_value(cfg)
            setattr(self, attr, bucket)
        await self._join()

    def _value(self) -> bytes:
        return json.dumps({"replica": self.own.replica, "address": self.address}).encode()

    async def _join(self) -> None:
        """This replica's member key; a live one of the same number (another process, or this one's previous
        life killed -9) is waited out for up to 1.5 TTL, then refused."""
        from nats.js.errors import KeyWrongLastSequenceError

        deadline = time.monotonic() + 1.5 * self.opt.ttl_s
        while True:
            try:
                self._member_rev = await self.kv.create(f"member.{self.own.replica}", self._value())
                return
            except KeyWrongLastSequenceError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"replica {self.own.replica} is already running (its key member.{self.own.replica} "
                        f"in bucket {self.opt.bucket} is renewed): give this one another --replica"
                    ) from None
                await asyncio.sleep(0.25)

    # the loop -----------------------------------------------------------------------------------------------
    def valid(self, k: int) -> bool:
        return time.monotonic() < self.valid_until.get(k, 0.0)

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker away: the leases lapse locally, try again
                log.warning("leases: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.opt.renew_s)

    async def round(self) -> None:
        """Renew, read the table, then claim or release towards ceil(P / live)."""
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            self._member_rev = await self.kv.update(
                f"member.{self.own.replica}", self._value(), last=self._member_rev
            )
        except KeyWrongLastSequenceError:  # expired (the broker was away longer than the TTL): join again
            self._member_rev = await self.kv.create(f"member.{self.own.replica}", self._value())
        lost: list[int] = []
        for k in sorted(self.revs):
            sent = time.monotonic()
            try:
                self.revs[k] = await self.kv.update(f"part.{k}", self._value(), last=self.revs[k])
                self.valid_until[k] = sent + SAFETY * self.opt.ttl_s
            except KeyWrongLastSequenceError:
                self.stats.lost += 1
                log.warning("leases: partition %d lost (its lease expired or was taken)", k)
                lost.append(k)
        if lost:
            self._background(self._let_go(lost, delete=False))
        members, table = await self._read()
        self.own.table = {k: v for k, v in table.items() if k not in self.revs}
        live_set = members | {self.own.replica}
        live = len(live_set)
        high, low = math.ceil(self.own.partitions / live), self.own.partitions // live
        self.stats.live = live
        if self._letting_go is not None and not self._letting_go.done():
            return  # a release is flushing the journal: balance again once it is done; renewals go on
        counts = {r: sum(1 for h, _ in table.values() if h == r) for r in live_set}
        # down to ceil(P/live); down to floor(P/live) while another live replica holds less than that (a
        # replica that just joined), so the shares end within one of each other
        target = low if any(n < low for r, n in counts.items() if r != self.own.replica) else high
        extra = sorted(self.revs, reverse=True)[: max(0, len(self.revs) - target)]
        if extra:
            self._background(self._let_go(extra, delete=True))
            return
        free = [k for k in self._order() if k not in table and k not in self.revs]
        for k in free[: max(0, target - len(self.revs))]:
            await self._claim(k, members)
        self._publish_held()

    def _background(self, coro) -> None:
        """A release off the loop's round (stopping consumers and flushing the journal take seconds under
        load; the other leases must go on being renewed meanwhile)."""
        previous = self._letting_go

        async def after() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await coro

        self._letting_go = asyncio.create_task(after())

    def _order(self) -> list[int]:
        """Free partitions tried from an offset of this replica's own, so that replicas claiming at once
        mostly try different keys."""
        p = self.own.partitions
        start = (self.own.replica * 7919) % p
        return [(start + i) % p for i in range(p)]

    async def _read(self) -> tuple[set[int], dict[int, tuple[int, str]]]:
        from nats.js.errors import NoKeysError

        try:
            keys = await self.kv.keys()
        except NoKeysError:
            keys = []
        members, table = set(), {}
        for key in keys:
            kind, _, n = key.partition(".")
            if kind == "member":
                members.add(int(n))
            elif kind == "part":
                with contextlib.suppress(Exception):  # expired between keys() and get()
                    v = json.loads((await self.kv.get(key)).value)
                    table[int(n)] = (int(v["replica"]), str(v.get("address", "")))
        return members, table

    async def _claim(self, k: int, members: set[int]) -> None:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        sent = time.monotonic()
        try:
            self.revs[k] = await self.kv.create(f"part.{k}", self._value())
        except KeyWrongLastSequenceError:  # another replica was quicker
            return
        self.valid_until[k] = sent + SAFETY * self.opt.ttl_s
        previous = None
        with contextlib.suppress(KeyNotFoundError):
            previous = json.loads((await self.handoff.get(f"part.{k}")).value)
        self.stats.claims += 1
        if previous and previous["replica"] != self.own.replica and not previous.get("clean"):
            self.stats.takeovers += 1
        self._publish_held()
        await self.on_claim(k, previous)

    async def _let_go(self, ks: list[int], delete: bool) -> None:
        """Stop partitions `ks`, flush the journal once, say so in the handoff, then free the keys (unless
        lost)."""
        revs = {k: self.revs.pop(k, None) for k in ks}
        for k in ks:
            self.valid_until.pop(k, None)  # the consumers take no new batch
        await self.on_release(ks)  # the batches in hand finish (the engine still owns their sources)
        self._publish_held()
        value = json.dumps({"replica": self.own.replica, "clean": True}).encode()
        for k in ks:
            await self.handoff.put(f"part.{k}", value)
            if delete and revs[k] is not None:
                with contextlib.suppress(Exception):  # taken meanwhile: not ours to delete
                    await self.kv.delete(f"part.{k}", last=revs[k])
        self.stats.releases += len(ks) if delete else 0

    async def mark_taken(self, k: int) -> None:
        """The handoff record once partition k's consumer runs here: a death from now on is unclean."""
        value = json.dumps({"replica": self.own.replica, "clean": False}).encode()
        await self.handoff.put(f"part.{k}", value)

    async def previous_alive(self, replica: int, wh) -> bool:
        """A member key in the bucket, or its journal's lock held (the broker may have lost the keys)."""
        from nats.js.errors import KeyNotFoundError

        try:
            await self.kv.get(f"member.{replica}")
            return True
        except KeyNotFoundError:
            return not await asyncio.to_thread(journal_orphaned, wh, replica)

    async def mark_recovered(self) -> None:
        """At the start, once the engine recovered this replica's journal into the tables: every partition
        it held in a previous life is clean now (a new holder need not wait for it)."""
        from nats.js.errors import NoKeysError

        try:
            keys = await self.handoff.keys()
        except NoKeysError:
            return
        value = json.dumps({"replica": self.own.replica, "clean": True}).encode()
        for key in keys:
            with contextlib.suppress(Exception):
                entry = await self.handoff.get(key)
                h = json.loads(entry.value)
                if h.get("replica") == self.own.replica and not h.get("clean"):
                    await self.handoff.update(key, value, last=entry.revision)

    def _publish_held(self) -> None:
        self.own.held = frozenset(self.revs)
        self.stats.owned = len(self.revs)

    async def stop(self) -> None:
        """Let every partition go cleanly (shutdown): the others claim them at their next round."""
        self._stopping.set()
        if self._letting_go is not None:
            with contextlib.suppress(Exception):
                await self._letting_go
        if self.revs:
            with contextlib.suppress(Exception):
                await self._let_go(sorted(self.revs), delete=True)
        with contextlib.suppress(Exception):
            await self.kv.delete(f"member.{self.own.replica}")


def journal_lock_path(wh, replica: int):
    return wh.home / "serve" / "wal" / f"r{replica}.owner.lock"


def hold_journal_lock(wh, replica: int, wait_s: float):
    """The exclusive lock a live replica holds on its journal for its whole life (the open file is returned:
    keep it). A replica's process gone, the kernel frees it, so a survivor knows the journal is an orphan
    even when the broker lost the member keys (a broker restart longer than the TTL). RuntimeError when
    another live process holds it past `wait_s`."""
    path = journal_lock_path(wh, replica)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held for the process's life
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() > deadline:
                fh.close()
                raise RuntimeError(
                    f"replica {replica}'s journal is held by another live process ({path}): give this one "
                    "another --replica"
                ) from None
            time.sleep(0.1)


def journal_orphaned(wh, replica: int) -> bool:
    """Whether no live process holds replica `replica`'s journal (see `hold_journal_lock`)."""
    path = journal_lock_path(wh, replica)
    if not path.exists():
        return True
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def recover_journal(wh, replica: int) -> int:
    """Flush a dead replica's journal segments (`serve/wal/r<replica>`) into the tables, without states (the
    next owner continues from the saved state over the rows); under a file lock, so survivors taking the dead
    replica's partitions at once flush it once. Returns the segments flushed. Blocking: run off the loop."""
    from nq_dagster.serve.engine.flusher import Flusher
    from nq_dagster.serve.engine.ticklog import TickLog
    from nq_dagster.store.locks import file_locks

    wal = wh.home / "serve" / "wal" / f"r{replica}"
    if not wal.exists():
        return 0
    with file_locks(wh.home / ".locks", [f"journal-r{replica}"], timeout_s=120):
        if not journal_orphaned(wh, replica):  # it came back meanwhile: its own start recovers it
            return 0
        ticklog = TickLog(wal)
        flusher = Flusher(wh, replica, ticklog, 1.0, 1.0, rotate=lambda: None, stop=threading.Event())
        ticklog.remove_orphans()
        done = 0
        for path in ticklog.segments():
            if not flusher.flush_segment(path, None):
                raise RuntimeError(f"journal segment {path} of dead replica {replica}: {flusher.last_error}")
            done += 1
        return done
