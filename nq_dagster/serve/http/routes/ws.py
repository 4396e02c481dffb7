"""`WS /ws/predictions` (viewer): the client's first message subscribes,

    {"type": "subscription", "sources": [...], "filters": {"min_confidence": 0.6, "directions": ["up"]},
     "api_key": "..."}

(`api_key` because a browser cannot set headers on a WebSocket; no `sources`: every source served); the
server answers `{"type": "subscribed", ...}` and then pushes, once per engine batch that has any, one message

    {"type": "batch", "predictions": [<record>, ...], "outcomes": [<outcome>, ...]}

with the batch's new predictions of those sources (filtered) and the outcomes they realized. (Until issue 26
each prediction and each outcome was a message of its own, `{"type": "prediction", "prediction": ...}` and
`{"type": "outcome", "outcome": ...}`; a client reads each list of a batch message in their place.)

Close codes, each with a reason: 1003 a binary frame; 1007 a message that is not JSON, or past the bounds of
`strictjson` (depth, integer size); 1008 a subscription of the wrong shape (or none within 30 s); 1009 a
message over `MAX_MESSAGE` bytes; 4000 + the HTTP status of a refused key, also when the key is revoked while
the socket is open (checked every `keys.RELOAD_S`: closed within twice that); 1013 a subscriber that fell too
far behind (see `hub.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from pydantic import ValidationError
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from nq_dagster.serve.http import strictjson
from nq_dagster.serve.http.bodies import Filters, Subscription
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.serve.keys import RELOAD_S
from nq_dagster.store import TENANT_SEP
from nq_dagster.store.names import stored_source

log = logging.getLogger("nq.serve")

SUBSCRIBE_WITHIN_S = 30
MAX_MESSAGE = 64 * 1024  # bytes of a client's message (a subscription of 1,000 sources is about 20 KB)
BAD_SOURCES = "sources: a list of at most 1,000 names; filters: an object"
BAD_FILTERS = "filters: min_confidence a number, directions of up/down/hold"


class Refused(Exception):
    """A client message the socket is closed for: the close `code` and its `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason[:120]  # a close reason is at most 123 bytes


def _reason(exc: ValidationError) -> str:
    loc = exc.errors()[0]["loc"]
    return BAD_SOURCES if loc[0] == "sources" or loc == ("filters",) else BAD_FILTERS


def _text(message: dict) -> str:
    """The text of a received frame, or `Refused` for a binary one or one over `MAX_MESSAGE`."""
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise Refused(1003, "binary frames are not accepted: send JSON text")
    if len(text) > MAX_MESSAGE:
        raise Refused(1009, f"message over {MAX_MESSAGE} bytes")
    return text


def _subscription_message(text: str) -> dict:
    try:
        msg = strictjson.loads(text)
    except strictjson.JsonLimitError as exc:
        raise Refused(1007, exc.message) from None
    except ValueError:
        raise Refused(1007, "expected a JSON subscription message") from None
    if not isinstance(msg, dict) or msg.get("type") != "subscription":
        raise Refused(1008, 'expected {"type": "subscription", "sources": [...]}')
    return msg


async def subscribe(state: ServerState, websocket: WebSocket) -> None:
    await websocket.accept()
    sid = None
    try:
        try:
            first = await asyncio.wait_for(websocket.receive(), timeout=SUBSCRIBE_WITHIN_S)
        except TimeoutError:
            await websocket.close(code=1008, reason="expected a JSON subscription message within 30 s")
            return
        try:
            msg = _subscription_message(_text(first))
        except Refused as exc:
            await websocket.close(code=exc.code, reason=exc.reason)
            return
        headers = dict(websocket.headers)
        if "authorization" not in headers and isinstance(msg.get("api_key"), str):
            headers["authorization"] = f"Bearer {msg['api_key']}"
        try:
            rec = state.access.authenticate(headers, "viewer", {})
        except ApiError as exc:
            await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
            return
        try:
            sub = Subscription.model_validate(msg)
        except ValidationError as exc:
            await websocket.close(code=1008, reason=_reason(exc))
            return
        scope = Scope.of(rec)
        if sub.sources is None:
            sources = scope.visible(state.engine.sources())
        elif scope.tenant is not None:  # its names, in its namespace whatever they are
            sources = [stored_source(scope.tenant, s) for s in sub.sources]
        elif not scope.platform and any(TENANT_SEP in s for s in sub.sources):
            await websocket.close(code=1008, reason="sources: a name with '~' is not a valid source name")
            return
        else:
            sources = sub.sources
        filters = sub.filters or Filters()
        min_conf, directions = filters.min_confidence, filters.directions or []
        sid, q = state.hub.add(
            set(sources), float(min_conf), set(directions), None if scope.plain else scope.record
        )
        await websocket.send_json(
            {
                "type": "subscribed",
                "sources": sorted(scope.shown(s) for s in sources),
                "filters": {"min_confidence": min_conf, "directions": directions},
            }
        )
        await _push(state, websocket, q, headers)
    except WebSocketDisconnect:
        return
    finally:
        if sid is not None:
            state.hub.remove(sid)


async def _push(state: ServerState, websocket: WebSocket, q: asyncio.Queue, headers: dict) -> None:
    """Send the hub's messages until the client leaves, misbehaves, falls behind or its key stops working."""
    receiver = asyncio.get_running_loop().create_task(_drain(websocket))
    getter: asyncio.Future | None = None
    checked = time.monotonic()
    try:
        while True:
            if getter is None:
                getter = asyncio.ensure_future(q.get())
            done, _ = await asyncio.wait(
                {getter, receiver}, timeout=RELOAD_S, return_when=asyncio.FIRST_COMPLETED
            )
            if receiver in done:
                refused = receiver.result()
                if refused is not None:
                    await websocket.close(code=refused.code, reason=refused.reason)
                return
            if time.monotonic() - checked >= RELOAD_S:
                checked = time.monotonic()
                try:  # revoked (or its role lowered) while the socket is open
                    state.access.authenticate(headers, "viewer", {})
                except ApiError as exc:
                    await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
                    return
            if getter not in done:
                continue
            item, getter = getter.result(), None
            if item is None:
                behind = state.settings.ws_queue
                await websocket.close(code=1013, reason=f"too slow: {behind} messages behind")
                return
            await websocket.send_text(json.dumps(item, allow_nan=False))
    finally:
        receiver.cancel()
        if getter is not None:
            getter.cancel()


async def _drain(websocket: WebSocket) -> Refused | None:
    """Read (and drop) what the client sends, so its close is seen; a binary or oversized frame ends the
    socket (`Refused`)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            try:
                _text(await websocket.receive())
            except Refused as exc:
                return exc
    return None


def routes(state: ServerState) -> list[BaseRoute]:
    async def endpoint(websocket: WebSocket) -> None:
        await subscribe(state, websocket)

    return [WebSocketRoute("/ws/predictions", endpoint)]
