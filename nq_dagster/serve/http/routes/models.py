"""What the replica serves (viewer): `GET /api/v1/models` (each source's model: selected features, the quantum
selection, the walk-forward reliability, the latest validation; and the cross-source portfolio),
`GET /api/v1/predictions` (the latest predictions served, `?source=&limit=`), `GET /api/v1/outcomes` (realized
outcomes of the predictions served since the start), `GET /api/v1/ping` (an authenticated no-op: the
benchmark's floor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.serve.keys import KeyRecord

RECENT_MAX = 1000  # predictions one `GET /api/v1/predictions` returns at most per source


async def ping(state: ServerState, request: Request, key: KeyRecord) -> Response:
    return JSONResponse({"ok": True})


async def predictions(state: ServerState, request: Request, key: KeyRecord) -> Response:
    source = request.query_params.get("source")
    try:
        limit = min(RECENT_MAX, max(1, int(request.query_params.get("limit", "100"))))
    except ValueError:
        raise ApiError(422, "limit: an integer", field="limit") from None
    scope = Scope.of(key)
    sources = [scope.stored(source)] if source else scope.visible(state.engine.sources())
    if scope.plain:
        return JSONResponse({s: state.engine.recent(s, limit) for s in sources})
    return JSONResponse(
        {scope.shown(s): [scope.record(r) for r in state.engine.recent(s, limit)] for s in sources}
    )


async def outcomes(state: ServerState, request: Request, key: KeyRecord) -> Response:
    source = request.query_params.get("source")
    scope = Scope.of(key)
    sources = [scope.stored(source)] if source else scope.visible(state.engine.sources())
    return JSONResponse(
        {scope.shown(s): [scope.record(o) for o in state.engine.outcomes(s)] for s in sources}
    )


def _portfolio(state: ServerState, scope: Scope) -> list[dict] | None:
    """The cross-source portfolio's rows of the sources the caller sees."""
    with contextlib.suppress(Exception):
        if state.wh.table_parts("portfolio"):
            df = state.wh.read_table("portfolio")
            cols = [c for c in ("source", "predicted_edge", "volatility", "chosen") if c in df.columns]
            rows = json.loads(df[cols].to_json(orient="records"))
            return [scope.record(r) for r in rows if "source" not in r or scope.sees(str(r["source"]))]
    return None


async def models(state: ServerState, request: Request, key: KeyRecord) -> Response:
    validation = await asyncio.to_thread(state.figures.validation)
    states = await asyncio.to_thread(state.startup.model_states)
    loaded = state.engine.model_info()
    errors = state.engine.load_errors()
    scope = Scope.of(key)
    info = {}
    for s, st in states.items():  # every owned source: loaded (its model), loading, or failed (why)
        if not scope.sees(s):
            continue
        if s in loaded:
            v = validation.get(s)
            if v is not None and not scope.plain:
                v = {**v, "report": f"{scope.shown(s)}.html"}  # the caller's report URL (dashboard.py)
            info[scope.shown(s)] = {"status": "loaded", **loaded[s], "validation": v}
        else:
            error = {"error": scope.words(errors[s])} if s in errors else {}
            info[scope.shown(s)] = {"status": st} | error
    return JSONResponse({"models": info, "portfolio": _portfolio(state, scope)})


def routes(state: ServerState) -> list[BaseRoute]:
    viewer = partial(guarded, state.access, "viewer")
    return [
        Route("/api/v1/predictions", viewer(partial(predictions, state)), methods=["GET"]),
        Route("/api/v1/ping", viewer(partial(ping, state)), methods=["GET"]),
        Route("/api/v1/outcomes", viewer(partial(outcomes, state)), methods=["GET"]),
        Route("/api/v1/models", viewer(partial(models, state)), methods=["GET"]),
    ]
