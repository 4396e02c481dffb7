"""Health. `GET /livez` (anyone): the process answers (503 when its engine failed to start or its threads
died: restart it). `GET /readyz` (anyone): 200 when the owned sources' models are loaded, the tick log
recovered and storage writable; else 503 with what is missing (a model that failed to load is listed, and
does not hold readiness back: the server serves the others).

`GET /api/v1/status`: anyone gets the overall health (200, or 503 when down); a viewer key gets the
components (engine, storage, each model) and the measured figures. Overall: down when the engine or the
storage is; degraded when storage had an error, no model is loaded, a model is older than
`max_model_age_hours` or failed to load, or more than 5 % of the last 5 minutes' processing requests failed
on the server's side."""

from __future__ import annotations

import asyncio
import time

import pandas as pd
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.store import atomic_write_bytes

SERVER_ERRORS_DEGRADED = 0.05  # share of 5xx answers over 5 minutes past which the server is degraded


def storage_writable(state: ServerState) -> tuple[bool, str]:
    probe = state.wh.home / "serve" / f".probe-{state.engine.own.replica}"
    try:
        atomic_write_bytes(probe, b"ok")
        return True, "writable"
    except OSError as exc:
        return False, f"not writable: {exc}"


def status_document(state: ServerState) -> tuple[str, dict]:
    """(overall status, the viewer's document); blocking I/O: call it in a thread."""
    eng = state.engine
    now = pd.Timestamp.now(tz="UTC")
    models = {}
    for s, info in eng.model_info().items():
        age_h = (now - pd.Timestamp(info["trained_at"])).total_seconds() / 3600
        models[s] = {
            "status": "healthy" if age_h <= state.settings.max_model_age_hours else "degraded",
            "model_version": info["model_version"],
            "trained_at": info["trained_at"],
            "age_hours": round(age_h, 3),
            "rows_seen": info["rows_seen"],
            "last_timestamp": info["last_timestamp"],
            "process": info["process"],
        }
    for s, err in eng.load_errors().items():
        models[s] = {"status": "down", "error": err}
    writable, why = storage_writable(state)
    flush_error = eng.last_flush_error
    journal = eng.journal_status()  # a batch the journal refused: down while its directory takes no write
    if journal["error"] and not journal["writable"]:
        writable, why = False, journal["error"]
    elif journal["error"]:
        why = f"writable again; the next batch retries the journal (it refused one: {journal['error']})"
    storage = {
        "status": "healthy"
        if writable and not flush_error and not journal["error"]
        else ("degraded" if writable else "down"),
        "detail": why,
        "last_flush_error": flush_error,
        "log_segments": eng.log_backlog(),
        "journal": journal,
    }
    starting = not state.startup.done.is_set()
    engine = {
        "status": "starting" if starting else ("healthy" if eng.alive else "down"),
        "queue_depth": eng.queue_depth(),
        "replica": eng.own.replica,
        "replicas": eng.own.replicas,
    }
    figures = state.metrics.figures()
    overall = "healthy"
    if engine["status"] == "down" or storage["status"] == "down":
        overall = "down"
    elif (
        starting
        or storage["status"] != "healthy"
        or not models
        or any(m["status"] != "healthy" for m in models.values())
        or (figures["server_error_rate_5m"] or 0.0) > SERVER_ERRORS_DEGRADED
    ):
        overall = "degraded"
    components = {"engine": engine, "storage": storage, "models": models}
    return overall, {
        "status": overall,
        "components": components,
        "average_processing_time_ms": figures["processing_time_ms"]["average"],
        "success_rate_5m": figures["success_rate_5m"],
        "server_error_rate_5m": figures["server_error_rate_5m"],
        "predictions_per_second_1m": figures["predictions_per_second_1m"],
        "uptime_seconds": round(time.time() - eng.started_at, 3),
    }


async def status(state: ServerState, request: Request) -> Response:
    overall, doc = await asyncio.to_thread(status_document, state)
    code = 503 if overall == "down" else 200
    if "authorization" in request.headers:
        key = state.access.authenticate(request.headers, "viewer", request.scope["state"])
        if not key.platform_admin:  # a tenant's key its own sources' models, the default namespace's its own
            scope = Scope.of(key)
            models = doc["components"]["models"]
            shown = {scope.shown(s): m for s, m in models.items() if scope.sees(s)}
            doc = {**doc, "components": {**doc["components"], "models": shown}}
        return JSONResponse(doc, status_code=code)
    return JSONResponse(
        {"status": overall, "detail": "send a viewer key for components and figures"}, status_code=code
    )


async def livez(state: ServerState, request: Request) -> Response:
    st = state.startup
    alive = st.error is None and (not st.done.is_set() or state.engine.alive)
    doc = {
        "status": "alive" if alive else "dead",
        "uptime_seconds": round(time.time() - state.engine.started_at, 3),
    }
    if not alive:
        doc["error"] = st.error or "the engine's threads stopped; see the server log"
    return JSONResponse(doc, status_code=200 if alive else 503)


async def readyz(state: ServerState, request: Request) -> Response:
    missing = state.startup.missing()
    if missing:  # still starting: the write probe would only slow the loading down (probes come every second)
        why = "not checked while starting"
    else:
        writable, why = await asyncio.to_thread(storage_writable, state)
        if not writable:
            missing.append(f"storage {why}")
    models = state.startup.model_states()
    doc = {"ready": not missing, "missing": missing, "models": models, "storage": why}
    return JSONResponse(doc, status_code=503 if missing else 200)


def routes(state: ServerState) -> list[BaseRoute]:
    async def endpoint(request: Request) -> Response:  # open to anyone: no key needed for the overall health
        return await status(state, request)

    async def live(request: Request) -> Response:
        return await livez(state, request)

    async def ready(request: Request) -> Response:
        return await readyz(state, request)

    return [
        Route("/api/v1/status", endpoint, methods=["GET"]),
        Route("/livez", live, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
    ]
