"""The WebSocket hub: subscribers and what each asked for; `publish` runs on the event loop, once per engine
batch. Each subscriber gets one message per batch (the batch's predictions and outcomes of its sources, as
lists), so a 1,000-value request is one message to a reader, not 2,000 (issue 26 item 4: a subscriber that
kept up was closed because each tick queued two messages). A subscriber that falls `limit` messages behind is
closed (code 1013, by its sender), so one slow client never slows the others."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from nq_dagster.serve.http.telemetry import Metrics


@dataclass(frozen=True)
class Subscriber:
    queue: asyncio.Queue  # messages to send; None: too slow, close the socket
    sources: set[str]
    min_confidence: float
    directions: set[str]  # empty: every direction
    rename: Callable[[dict], dict] | None = None  # a tenant's: records and outcomes by the names it knows

    def wants(self, rec: dict) -> bool:
        return (
            rec["source"] in self.sources
            and rec["confidence"] >= self.min_confidence
            and (not self.directions or rec["direction"] in self.directions)
        )


def batch_message(predictions: list[dict], outcomes: list[dict]) -> dict:
    """What a subscriber receives for one engine batch (ws.py documents it)."""
    return {"type": "batch", "predictions": predictions, "outcomes": outcomes}


class Hub:
    def __init__(self, metrics: Metrics, limit: int):
        self.subs: dict[int, Subscriber] = {}
        self.metrics, self.limit = metrics, limit
        self._ids = itertools.count()

    def add(
        self,
        sources: set,
        min_conf: float,
        directions: set,
        rename: Callable[[dict], dict] | None = None,
    ) -> tuple[int, asyncio.Queue]:
        """A subscriber of `sources` (stored names); `rename`: how it knows a record (a tenant's names)."""
        q: asyncio.Queue = asyncio.Queue(maxsize=self.limit)
        sid = next(self._ids)
        self.subs[sid] = Subscriber(q, sources, min_conf, directions, rename)
        self.metrics.ws_clients.set(len(self.subs))
        return sid, q

    def remove(self, sid: int) -> None:
        self.subs.pop(sid, None)
        self.metrics.ws_clients.set(len(self.subs))

    def publish(self, records: list[dict], outcomes: list[dict] = ()) -> None:
        for sid, sub in list(self.subs.items()):
            preds = [rec for rec in records if sub.wants(rec)]
            outs = [o for o in outcomes if o["source"] in sub.sources]
            if not preds and not outs:
                continue
            if sub.rename is not None:
                preds, outs = [sub.rename(r) for r in preds], [sub.rename(o) for o in outs]
            try:
                sub.queue.put_nowait(batch_message(preds, outs))
            except asyncio.QueueFull:
                self.subs.pop(sid, None)
                self.metrics.ws_dropped.inc()
                self.metrics.ws_clients.set(len(self.subs))
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        sub.queue.get_nowait()
                sub.queue.put_nowait(None)  # the sender closes the socket
