"""What flows through the serving engine: the queued work items and their priorities, the ticks a request
carries once validated, the answers a request's future resolves with, and the refusals it may fail with.

Named types instead of tuples: a `Tick` is one validated (source, time, value); an `Answer` is one tick's
record as the client gets it; a `Planned` answer says where that record will come from before the batch is
predicted.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# the worker takes the lowest number first; equal numbers in the order they were queued
PRIORITY_STOP = -10  # ends the worker, before anything still queued (close() waits for a last rotation first)
PRIORITY_CALL = -1  # a function run on the worker between two batches (model swap, log rotation)
PRIORITY_HIGH = 0  # realtime requests with config.priority "high"
PRIORITY_NORMAL = 1  # every other request and the rows picked up from files
PRIORITY_LOW = 2  # config.priority "low" and batch jobs' chunks: after the same key's other requests

Priority = Literal["low", "normal", "high"]
WorkKind = Literal["ticks", "call", "stop"]


def queue_priority(priority: Priority | str) -> int:
    return {"high": PRIORITY_HIGH, "low": PRIORITY_LOW}.get(priority, PRIORITY_NORMAL)


@dataclass(order=True)
class Work:
    """One item of the worker's queue: a request's ticks, a call, or the stop mark."""

    priority: int
    seq: int
    kind: WorkKind = field(compare=False)
    rows: list = field(compare=False, default_factory=list)  # [(source, timestamp, value)] as the client sent
    label: str = field(compare=False, default="request")  # how error messages name the request
    stored: bool = field(compare=False, default=False)  # rows already in raw_ticks (picked up from files)
    fn: Callable[[], object] | None = field(compare=False, default=None)
    future: cf.Future = field(compare=False, default_factory=cf.Future)
    enqueued: float = field(compare=False, default_factory=time.perf_counter)  # processing_time_ms from here
    key: str = field(compare=False, default="")  # the API key's id ("": the server's own, picked-up files)


@dataclass(slots=True)
class Tick:
    """One validated tick of a request: `ts_ns` nanoseconds since the epoch (UTC). `repost`: the same
    (source, time) as a tick of another request in the same batch, answered with that tick's record."""

    source: str
    ts_ns: int
    value: float
    repost: bool = False


@dataclass(slots=True)
class Answer:
    """One tick's answer: its prediction `record` (JSON-ready), `text` the record's JSON as written to the log
    (None for a record read back from the tables), `duplicate` whether the tick was seen before."""

    record: dict
    text: str | None
    duplicate: bool


@dataclass(slots=True)
class Planned:
    """Where a tick's answer will come from: `stored`, a record kept from before (a re-post of an older tick);
    else this batch's prediction of (source, ts_ns); `duplicate` unless this request brought the tick
    first."""

    source: str
    ts_ns: int
    duplicate: bool = False
    stored: dict | None = None


class Rejected(Exception):
    """A request the ingest rules or the stream order refuse (HTTP 422); `field` names the request's part."""

    def __init__(self, messages: list[str], field: str = "data"):
        super().__init__(messages[0] + (f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""))
        self.messages, self.field = messages, field


class NoModel(Exception):
    """A source without a trained model (HTTP 409)."""

    def __init__(self, source: str, rows: int, needed: int):
        more = max(0, needed - rows)
        super().__init__(
            f"source {source!r} has no trained model yet: {rows} row(s) stored, training needs "
            f"{needed} ({more} more); ingest history and run `nq run --source {source}`"
        )
        self.source, self.rows, self.needed = source, rows, needed


class NotOwner(Exception):
    """A source another replica serves (HTTP 421)."""

    def __init__(self, source: str, owner: int):
        super().__init__(f"source {source!r} is served by replica {owner}")
        self.source, self.owner = source, owner


class JournalUnavailable(Exception):
    """The tick journal could not commit a batch (a storage error, `ticklog.py`): nothing of it is
    acknowledged or kept (HTTP 503 with the reason)."""
