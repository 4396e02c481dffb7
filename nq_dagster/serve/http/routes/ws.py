"""`WS /ws/predictions` (viewer): the client's first message subscribes,

    {"type": "subscription", "sources": [...], "filters": {"min_confidence": 0.6, "directions": ["up"]},
     "api_key": "..."}

(`api_key` because a browser cannot set headers on a WebSocket; no `sources`: every source served); the
server answers `{"type": "subscribed", ...}` and then pushes each new prediction of those sources and each
outcome they realize. Close codes: 1008 a malformed subscription, 4000 + the HTTP status of a refused key,
1013 a subscriber that fell too far behind (see `hub.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from pydantic import ValidationError
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from nq_dagster.serve.http.bodies import Filters, Subscription
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState

SUBSCRIBE_WITHIN_S = 30
BAD_SOURCES = "sources: a list of names; filters: an object"
BAD_FILTERS = "filters: min_confidence a number, directions of up/down/hold"


def _reason(exc: ValidationError) -> str:
    loc = exc.errors()[0]["loc"]
    return BAD_SOURCES if loc[0] == "sources" or loc == ("filters",) else BAD_FILTERS


async def subscribe(state: ServerState, websocket: WebSocket) -> None:
    await websocket.accept()
    sid = None
    try:
        try:
            msg = json.loads(await asyncio.wait_for(websocket.receive_text(), timeout=SUBSCRIBE_WITHIN_S))
        except (TimeoutError, json.JSONDecodeError):
            await websocket.close(code=1008, reason="expected a JSON subscription message")
            return
        if not isinstance(msg, dict) or msg.get("type") != "subscription":
            await websocket.close(code=1008, reason='expected {"type": "subscription", "sources": [...]}')
            return
        headers = dict(websocket.headers)
        if "authorization" not in headers and isinstance(msg.get("api_key"), str):
            headers["authorization"] = f"Bearer {msg['api_key']}"
        try:
            state.access.authenticate(headers, "viewer", {})
        except ApiError as exc:
            await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
            return
        try:
            sub = Subscription.model_validate(msg)
        except ValidationError as exc:
            await websocket.close(code=1008, reason=_reason(exc))
            return
        sources = state.engine.sources() if sub.sources is None else sub.sources
        filters = sub.filters or Filters()
        min_conf, directions = filters.min_confidence, filters.directions or []
        sid, q = state.hub.add(set(sources), float(min_conf), set(directions))
        await websocket.send_json(
            {
                "type": "subscribed",
                "sources": sorted(sources),
                "filters": {"min_confidence": min_conf, "directions": directions},
            }
        )
        receiver = asyncio.get_running_loop().create_task(_drain(websocket))
        try:
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    getter.cancel()
                    return
                item = getter.result()
                if item is None:
                    behind = state.settings.ws_queue
                    await websocket.close(code=1013, reason=f"too slow: {behind} messages behind")
                    return
                await websocket.send_json(item)
        finally:
            receiver.cancel()
    except WebSocketDisconnect:
        return
    finally:
        if sid is not None:
            state.hub.remove(sid)


async def _drain(websocket: WebSocket) -> None:
    """Read (and drop) what the client sends, so its close is seen."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()


def routes(state: ServerState) -> list[BaseRoute]:
    async def endpoint(websocket: WebSocket) -> None:
        await subscribe(state, websocket)

    return [WebSocketRoute("/ws/predictions", endpoint)]
