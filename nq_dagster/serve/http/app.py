"""The app factory: the prediction server's HTTP and WebSocket face (Starlette under uvicorn) over the serving
engine. `create_server` starts an engine on a data directory and returns the app; `create_app` builds it on
an engine already started.

Routes (JSON; the record as DESIGN.md section 6), one module each under `routes/`:

    POST /api/v1/process/realtime  developer  one tick (or several) of one source -> its prediction(s)
    POST /api/v1/process/batch     developer  data points of many sources -> 202 and a job id
    GET  /api/v1/jobs/{id}         developer  a batch job's status and results
    GET  /api/v1/predictions       viewer     the latest predictions this replica served (?source=&limit=)
    GET  /api/v1/outcomes          viewer     realized outcomes of the predictions served since the start
    GET  /api/v1/models            viewer     each source's model, its validation; the portfolio
    GET  /api/v1/validation/history  viewer   each source's validation score per model version, over time
    WS   /ws/predictions           viewer     subscription -> a push of every new prediction of its sources
    GET  /api/v1/status            anyone: overall health only; viewer: components and measured figures
    GET  /api/v1/metrics           viewer     the original's metrics document, every figure computed
    GET  /metrics                  viewer     Prometheus exposition (open when NQ_SERVE_METRICS_OPEN is set)
    GET  /livez, /readyz           anyone     liveness (the process answers) and readiness (models loaded)
    GET  /openapi.json, /docs      anyone     the OpenAPI 3.1 document and Swagger UI (vendored, offline)
    GET/PUT /api/v1/config/{service}  viewer/admin  versioned pipeline config (neuromorphic, quantum, fusion)
    GET/POST /api/v1/keys, DELETE /api/v1/keys/{id}  admin
    GET  /api/v1/ping              viewer     an authenticated no-op (the benchmark's floor)
    GET  /, /static/*, /reports/{source}.html  the dashboard (static) and the validation reports (viewer;
                                   a report's live section computed at the request)

Layers of a request: `RequestMiddleware` (request id, body limit, timing, access log), then `DirectRoutes`,
which calls the GET and POST routes without path parameters directly (a dictionary lookup, as the router would
call them, errors answered by the same handlers) and hands everything else to Starlette's router: the router's
scan and its two error middlewares cost the event loop a measurable share of each request at high concurrency
(bench/RESULTS.md, prediction server).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nq_dagster.serve.engine import Engine, Ownership
from nq_dagster.serve.http.errors import EXCEPTION_HANDLERS, ApiError, BodyTooLarge, answer_error
from nq_dagster.serve.http.middleware import RequestMiddleware
from nq_dagster.serve.http.routes import (
    config,
    dashboard,
    docs,
    jobs,
    keys,
    metrics,
    models,
    predict,
    reports,
    status,
    ws,
)
from nq_dagster.serve.http.startup import Startup
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.keys import KeyStore
from nq_dagster.serve.server_settings import ServerSettings
from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse

log = logging.getLogger("nq.serve")

ROUTE_MODULES = (predict, jobs, models, status, metrics, config, keys, reports, dashboard, ws)


class DirectRoutes:
    """ASGI: an exact-path GET or POST route called as Starlette's router calls it (a Request, the endpoint,
    its response); any other request goes to the router. `table` maps (method, path) to the endpoint."""

    def __init__(self, router: Starlette, routes: list[BaseRoute]):
        self.router = router
        self.table = {
            (m, r.path): r.endpoint
            for r in routes
            if isinstance(r, Route) and not r.param_convertors and inspect.iscoroutinefunction(r.endpoint)
            for m in r.methods or ()
            if m in ("GET", "POST")
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.table.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            return await self.router(scope, receive, send)
        scope["app"] = self.router
        try:
            response = await endpoint(Request(scope, receive, send))
        except (ApiError, BodyTooLarge, HTTPException) as exc:  # anything else: the middleware's 500
            response = answer_error(exc, scope)
        await response(scope, receive, send)


@dataclass(frozen=True)
class ServerApp:
    """What the factory builds: `app` the ASGI application, `state` what its routes share."""

    app: ASGIApp  # the request middleware, inside CORS when origins are configured
    state: ServerState
    direct: DirectRoutes

    @property
    def engine(self) -> Engine:
        return self.state.engine

    @property
    def keys(self) -> KeyStore:
        return self.state.keys

    @property
    def _direct(self) -> dict:
        """The routes called without the router, by (method, path) (tests replace one)."""
        return self.direct.table


def _wire(state: ServerState) -> None:
    """The engine's callbacks (worker thread): count each batch's new predictions, push them and the outcomes
    they realized to the WebSocket subscribers on the event loop."""

    def on_records(records: list[dict], outcomes: list[dict]) -> None:
        now = time.monotonic()
        for rec in records:
            state.metrics.prediction(rec, now)
        if state.loop is not None and state.hub.subs:
            state.loop.call_soon_threadsafe(state.hub.publish, records, outcomes)

    state.engine.on_records = on_records
    state.engine.on_batch = lambda n, ticks, seconds: state.metrics.batch_seconds.observe(seconds)


def _close(startup: Startup) -> None:
    """The engine's close (SIGTERM: finish the queue, write the log into the tables). During the start there
    is nothing to finish: no request was acknowledged (processing answers 503 until the start is done), and a
    stop now is a crash during the start, which the next start recovers from; so the process is not held for
    the models to load (minutes on a loaded machine, past a pod's grace period)."""
    if not startup.done.is_set():
        log.warning("stopped while starting: the models were still loading; nothing was acknowledged yet")
        return
    with contextlib.suppress(Exception) if startup.error else contextlib.nullcontext():
        startup.engine.close()


def create_app(
    wh: Warehouse,
    engine: Engine,
    settings: ServerSettings,
    process: Settings | None = None,
    startup: Startup | None = None,
) -> ServerApp:
    """The app on `engine`; `startup` the engine's start in progress (default: the engine started already).
    `process`: the process's settings (CORS origins, open metrics, the identity provider)."""
    process = process or Settings()
    startup = startup or Startup(engine, started=True)
    state = ServerState.build(wh, engine, settings, startup, process)
    _wire(state)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            await asyncio.to_thread(_close, startup)
            if state.shared is not None:  # after the engine: the jobs it finished are stored
                await asyncio.to_thread(state.shared.close)
            if state.peers is not None:
                await state.peers.aclose()

    routes = [r for module in ROUTE_MODULES for r in module.routes(state)]
    routes += docs.routes(state, routes)
    router = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    direct = DirectRoutes(router, routes)
    app: ASGIApp = RequestMiddleware(
        direct, metrics=state.metrics, body_limit=settings.body_limit, routes=routes
    )
    origins = [o.strip() for o in process.serve_cors_origins.split(",") if o.strip()]
    if origins:  # off by default: a browser page of another origin may call the API only when listed
        app = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=[
                "X-Request-Id",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=600,
        )
    return ServerApp(app, state, direct)


def create_server(
    home: str | Path | Settings | None = None,
    ownership: Ownership = Ownership(),
    settings: ServerSettings | None = None,
    fsync: str = "interval",
    address: str = "",
    flush_interval_s: float = 10.0,
    watch_interval_s: float = 1.0,
    processes: int = 1,
    background: bool = False,
) -> ServerApp:
    """An engine on the data directory `home` (a path, with the environment's other settings, or the process's
    `Settings` from a composition root), started (models loaded, the log recovered), and its app.
    `background`: return at once and start the engine in a thread (`nq serve`: the port opens before the
    models load; `/readyz` says when they have)."""
    process = home if isinstance(home, Settings) else Settings.from_env().with_home(home)
    wh = Warehouse.from_settings(process)
    engine = Engine(
        wh,
        ownership,
        fsync=fsync,
        address=address,
        flush_interval_s=flush_interval_s,
        watch_interval_s=watch_interval_s,
        processes=processes,
    )
    if background:
        startup = Startup(engine).begin()
    else:
        startup = Startup(engine.start(), started=True)
    return create_app(wh, engine, settings or ServerSettings.load(wh), process, startup)
