"""The WebSocket subscription of the client: `subscribe(client, sources)` is an async iterator of
`PredictionMessage` and `OutcomeMessage` (the server's batch messages taken apart, in order) that survives
the server going away (a restart, a rolling update, a dropped connection, a 1013 for a slow reader): it
reconnects with backoff, subscribes again, and resumes: the predictions served while it was away come first
(from `GET /api/v1/predictions`, marked `resumed`), each prediction once (by `prediction_id`). A refused
subscription (a bad key: close code 4401/4403; a malformed one: 1008) is raised, not retried.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from nq_dagster.client.retry import Backoff
from nq_dagster.serve.http import schemas as s

if TYPE_CHECKING:
    from nq_dagster.client.http import AsyncClient

Message = s.PredictionMessage | s.OutcomeMessage
SEEN_KEPT = 10_000  # prediction ids remembered to drop the ones a resumption and the live stream both bring


class SubscriptionRefused(Exception):
    """The server closed the subscription for a reason a retry does not fix (`code`, `reason`)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"subscription refused ({code}): {reason}")
        self.code, self.reason = code, reason


def _refused(code: int | None) -> bool:
    return code == 1008 or (code is not None and 4000 <= code < 5000)


class _Resume:
    """What the stream has delivered: the last prediction time per source, the recent prediction ids."""

    def __init__(self):
        self.last: dict[str, datetime] = {}
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def fresh(self, rec: s.PredictionRecord) -> bool:
        if rec.prediction_id in self.seen:
            return False
        self.seen[rec.prediction_id] = None
        while len(self.seen) > SEEN_KEPT:
            self.seen.popitem(last=False)
        t = datetime.fromisoformat(rec.timestamp)
        if rec.source not in self.last or t > self.last[rec.source]:
            self.last[rec.source] = t
        return True

    def missed(self, recs: list[s.PredictionRecord]) -> list[s.PredictionRecord]:
        return [
            r
            for r in recs
            if r.source in self.last and datetime.fromisoformat(r.timestamp) > self.last[r.source]
        ]


async def subscribe(
    client: AsyncClient,
    sources: Sequence[str] | None = None,
    *,
    min_confidence: float = 0.0,
    directions: Sequence[str] | None = None,
    max_reconnects: int | None = None,
    backoff: Backoff | None = None,
) -> AsyncIterator[Message]:
    """Messages of the subscription to `sources` (None: every source the server serves); `max_reconnects`
    None: reconnect for ever."""
    backoff = backoff or Backoff(base_s=0.2, cap_s=10.0)
    url = "ws" + client.base_url.removeprefix("http") + "/ws/predictions"
    sub = {"type": "subscription", "sources": list(sources) if sources is not None else None}
    sub["filters"] = {
        "min_confidence": min_confidence,
        "directions": list(directions) if directions else None,
    }
    headers = {"Authorization": f"Bearer {client.key}"} if client.key else {}
    state, failures, connected_before = _Resume(), 0, False

    def wanted(rec: s.PredictionRecord) -> bool:
        return rec.confidence >= min_confidence and (not directions or rec.direction in directions)

    while True:
        try:
            async with connect(url, additional_headers=headers, open_timeout=10) as ws:
                await ws.send(json.dumps(sub))
                ack = json.loads(await ws.recv())
                if ack.get("type") != "subscribed":
                    raise SubscriptionRefused(1008, f"unexpected answer {ack!r}")
                failures = 0
                if connected_before:  # what was served while we were away, oldest first
                    for source in ack["sources"]:
                        recs = (await client.predictions(source, limit=1000)).get(source, [])
                        for rec in state.missed(recs):
                            if wanted(rec) and state.fresh(rec):
                                yield s.PredictionMessage(type="prediction", prediction=rec, resumed=True)
                connected_before = True
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("type") == "batch":  # the server's push: one message per engine batch
                        batch = s.BatchMessage.model_validate(msg)
                        for rec in batch.predictions:
                            if state.fresh(rec):
                                yield s.PredictionMessage(type="prediction", prediction=rec)
                        for outcome in batch.outcomes:
                            yield s.OutcomeMessage(type="outcome", outcome=outcome)
                    elif msg.get("type") == "prediction":  # servers before issue 26: one message each
                        pm = s.PredictionMessage.model_validate(msg)
                        if state.fresh(pm.prediction):
                            yield pm
                    elif msg.get("type") == "outcome":
                        yield s.OutcomeMessage.model_validate(msg)
                # the server closed normally (a shutdown): reconnect
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if _refused(code):
                raise SubscriptionRefused(code, exc.rcvd.reason) from None
        except (OSError, InvalidHandshake, TimeoutError):
            pass  # the server is away: try again
        failures += 1
        if max_reconnects is not None and failures > max_reconnects:
            raise ConnectionError(f"{url}: no connection after {max_reconnects} reconnection attempts")
        await asyncio.sleep(backoff.delay(failures, None))
