"""The prediction server's HTTP and WebSocket face (Starlette under uvicorn), on the serving engine (engine.py).

Routes (JSON; the record as DESIGN.md section 6):
    POST /api/v1/process/realtime   developer   one tick (or several) of one source -> its prediction(s)
    POST /api/v1/process/batch      developer   data points of many sources -> 202 and a job id
    GET  /api/v1/jobs/{id}          developer   a batch job's status and results
    GET  /api/v1/predictions        viewer      the latest predictions this replica served (?source=&limit=)
    WS   /ws/predictions            viewer      subscription -> a push of every new prediction of its sources
    GET  /api/v1/status             anyone: overall health only; viewer: components and measured figures
    GET  /api/v1/metrics            viewer      the original's metrics document, every figure computed
    GET  /metrics                   viewer      Prometheus exposition
    GET/PUT /api/v1/config/{service}  viewer / admin   versioned pipeline config (neuromorphic, quantum, fusion)
    GET/POST /api/v1/keys, DELETE /api/v1/keys/{id}   admin
    GET  /api/v1/ping               viewer      an authenticated no-op (the benchmark's floor)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import json
import logging
import math
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from nq_dagster.config import SERVICES, ConfigError
from nq_dagster.serve.engine import Engine, NoModel, NotOwner, Ownership, Rejected
from nq_dagster.serve.keys import ROLES, KeyRecord, KeyStore, TokenBucket, role_allows
from nq_dagster.settings import Settings as NQSettings
from nq_dagster.store import SOURCE_RE, Warehouse
from nq_dagster.store.config_store import ConfigStore

access_log = logging.getLogger("nq.serve.access")
log = logging.getLogger("nq.serve")
STATIC = Path(__file__).parent / "static"  # the dashboard page, its script and the vendored chart library
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5, 5, 10)


@dataclass
class Settings:
    body_limit: int = 1 << 20  # bytes of a request body
    max_points: int = 100_000  # data points of one batch job
    max_values: int = 1_000  # values of one realtime request
    ws_queue: int = 1_000  # predictions a WebSocket client may fall behind before it is closed
    callback_hosts: tuple[str, ...] = ()  # hosts batch callbacks may go to (empty: callbacks refused)
    max_model_age_hours: float = 48.0  # status says "degraded" for a source whose model is older
    jobs_kept: int = 1_000

    @classmethod
    def load(cls, wh: Warehouse, **overrides) -> Settings:
        """Defaults, then `$NQ_HOME/serve/settings.json`, then the command line."""
        path = wh.home / "serve" / "settings.json"
        values = {}
        if path.exists():
            try:
                values = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
            unknown = sorted(set(values) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "callback_hosts" in values:
            values["callback_hosts"] = tuple(str(h).lower() for h in values["callback_hosts"])
        return cls(**values)


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None,
                 details: list[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers, self.details = status, message, field, headers, details

    def response(self, request_id: str) -> JSONResponse:
        err = {"code": self.status, "message": self.message}
        if self.field:
            err["field"] = self.field
        if self.details:
            err["details"] = self.details
        return JSONResponse({"error": err, "request_id": request_id}, status_code=self.status, headers=self.headers)


class BodyTooLarge(Exception):
    pass


class Metrics:
    """Prometheus metrics (one registry per app) and the exact rolling figures behind status and /api/v1/metrics."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram("nq_http_request_duration_seconds", "HTTP request latency",
                                         ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("nq_http_requests", "HTTP requests by status", ["endpoint", "method", "status"],
                                registry=r)
        self.errors = Counter("nq_http_errors", "HTTP responses with status >= 400", ["endpoint", "code"], registry=r)
        self.predictions = Counter("nq_predictions", "Predictions served (new ticks)", ["source"], registry=r)
        self.processing = Histogram("nq_prediction_processing_seconds",
                                    "Tick received to record ready, per prediction", buckets=LATENCY_BUCKETS, registry=r)
        self.ws_clients = Gauge("nq_websocket_clients", "Connected WebSocket subscribers", registry=r)
        self.ws_dropped = Counter("nq_websocket_slow_closed", "Subscribers closed for falling behind", registry=r)
        self.model_info = Gauge("nq_model_info", "Model version loaded per source (value 1)",
                                ["source", "model_version", "config_version"], registry=r)
        self.validation_accuracy = Gauge("nq_validation_accuracy", "Accuracy on realized outcomes, latest report",
                                         ["source"], registry=r)
        self.validation_score = Gauge("nq_validation_score", "Validation score (0-100), latest report", ["source"],
                                      registry=r)
        self.live_accuracy = Gauge("nq_live_accuracy", "Accuracy of the last 500 served predictions whose outcome "
                                   "is known (realized by later ticks)", ["source"], registry=r)
        self.queue_depth = Gauge("nq_engine_queue_depth", "Requests waiting for the engine", registry=r)
        self.batch_seconds = Histogram("nq_engine_batch_seconds", "Engine time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.recent_ms: collections.deque = collections.deque(maxlen=10_000)  # processing_time_ms, exact
        self.pred_times: collections.deque = collections.deque(maxlen=200_000)  # monotonic time of each prediction
        self.outcomes: collections.deque = collections.deque(maxlen=20_000)  # (monotonic time, ok) of processing
        self.total_predictions = 0

    def prediction(self, rec: dict, now: float) -> None:
        self.predictions.labels(rec["source"]).inc()
        ms = rec.get("processing_time_ms")
        if ms is not None:
            self.processing.observe(ms / 1000.0)
            self.recent_ms.append(ms)
        self.pred_times.append(now)
        self.total_predictions += 1

    def figures(self) -> dict:
        now = time.monotonic()
        ms = np.array(self.recent_ms) if self.recent_ms else np.zeros(0)
        window = [code for t, code in self.outcomes if now - t <= 300]
        per_s = sum(1 for t in itertools.takewhile(lambda t: now - t <= 60, reversed(self.pred_times))) / 60.0
        def pct(q):
            return (float(np.percentile(ms, q)) if len(ms) else None)
        return {"predictions_total": self.total_predictions, "predictions_per_second_1m": per_s,
                "processing_time_ms": {"average": float(ms.mean()) if len(ms) else None, "p50": pct(50), "p95": pct(95),
                                       "p99": pct(99), "over_last": len(ms)},
                "success_rate_5m": (sum(c < 300 for c in window) / len(window)) if window else None,
                "server_error_rate_5m": (sum(c >= 500 for c in window) / len(window)) if window else None,
                "requests_5m": len(window)}


class Hub:
    """WebSocket subscribers; `publish` runs on the event loop. A subscriber that falls `ws_queue` predictions
    behind is closed (code 1013), so one slow client never slows the others."""

    def __init__(self, metrics: Metrics, limit: int):
        self.subs: dict[int, tuple[asyncio.Queue, set, float, set]] = {}
        self.metrics, self.limit = metrics, limit
        self._ids = itertools.count()

    def add(self, sources: set, min_conf: float, directions: set) -> tuple[int, asyncio.Queue]:
        q: asyncio.Queue = asyncio.Queue(maxsize=self.limit)
        sid = next(self._ids)
        self.subs[sid] = (q, sources, min_conf, directions)
        self.metrics.ws_clients.set(len(self.subs))
        return sid, q

    def remove(self, sid: int) -> None:
        self.subs.pop(sid, None)
        self.metrics.ws_clients.set(len(self.subs))

    def publish(self, records: list[dict], outcomes: list[dict] = ()) -> None:
        for sid, (q, sources, min_conf, directions) in list(self.subs.items()):
            items = [{"type": "prediction", "prediction": rec} for rec in records
                     if rec["source"] in sources and rec["confidence"] >= min_conf
                     and (not directions or rec["direction"] in directions)]
            items += [{"type": "outcome", "outcome": o} for o in outcomes if o["source"] in sources]
            for item in items:
                try:
                    q.put_nowait(item)
                except asyncio.QueueFull:
                    self.subs.pop(sid, None)
                    self.metrics.ws_dropped.inc()
                    self.metrics.ws_clients.set(len(self.subs))
                    with contextlib.suppress(asyncio.QueueEmpty):
                        while True:
                            q.get_nowait()
                    q.put_nowait(None)  # the sender closes the socket
                    break


@dataclass
class Job:
    id: str
    points: int
    key_id: str
    callback_url: str | None
    status: str = "queued"
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    results: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    callback: dict | None = None

    def public(self) -> dict:
        return {"job_id": self.id, "status": self.status, "points": self.points, "predicted": len(self.results),
                "duplicates": sum(1 for r in self.results if r.get("duplicate")), "errors": self.errors,
                "submitted_at": _iso(self.submitted_at), "finished_at": _iso(self.finished_at),
                "callback": self.callback, "results": self.results}


def _iso(t: float | None) -> str | None:
    import datetime as dt

    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _timestamp_ok(v) -> bool:
    return isinstance(v, str) or _number(v)


class Server:
    """The app and everything it holds; `app` is the ASGI application."""

    def __init__(self, wh: Warehouse, engine: Engine, settings: Settings | None = None):
        self.wh, self.engine = wh, engine
        self.settings = settings or Settings.load(wh)
        # request ids: unique per process (a random prefix and a counter); uuid4 per request, a urandom call each,
        # was 13 % of the event loop at 32 concurrent clients
        self._rid_prefix, self._rid_counter = uuid.uuid4().hex[:12], itertools.count()
        self.keys = KeyStore(wh.home)
        self.configs = ConfigStore(wh.home)
        self.metrics = Metrics()
        self.hub = Hub(self.metrics, self.settings.ws_queue)
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.buckets: dict[str, TokenBucket] = {}
        self.inflight: collections.Counter = collections.Counter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._http = None
        self._validation_cache: tuple[float, dict] = (0.0, {})
        routes = [
            Route("/api/v1/process/realtime", self.api("developer", self.realtime), methods=["POST"]),
            Route("/api/v1/process/batch", self.api("developer", self.batch), methods=["POST"]),
            Route("/api/v1/jobs/{job_id}", self.api("developer", self.job), methods=["GET"]),
            Route("/api/v1/predictions", self.api("viewer", self.predictions), methods=["GET"]),
            Route("/api/v1/status", self.status, methods=["GET"]),
            Route("/api/v1/metrics", self.api("viewer", self.metrics_json), methods=["GET"]),
            Route("/metrics", self.api("viewer", self.prometheus), methods=["GET"]),
            Route("/api/v1/config/{service}", self.api("viewer", self.config_get), methods=["GET"]),
            Route("/api/v1/config/{service}", self.api("admin", self.config_put), methods=["PUT"]),
            Route("/api/v1/keys", self.api("admin", self.keys_list), methods=["GET"]),
            Route("/api/v1/keys", self.api("admin", self.keys_create), methods=["POST"]),
            Route("/api/v1/keys/{key_id}", self.api("admin", self.keys_revoke), methods=["DELETE"]),
            Route("/api/v1/ping", self.api("viewer", self.ping), methods=["GET"]),
            Route("/api/v1/outcomes", self.api("viewer", self.outcomes), methods=["GET"]),
            Route("/api/v1/models", self.api("viewer", self.models), methods=["GET"]),
            Route("/reports/{name}", self.api("viewer", self.report), methods=["GET"]),
            Route("/", self.index, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            WebSocketRoute("/ws/predictions", self.ws),
        ]
        self.routes = routes
        self._endpoints: dict[tuple[str, str], str] = {}
        self._series: dict[tuple[str, str, int], tuple] = {}
        # routes without path parameters, by (method, path): called directly (see `_dispatch`)
        self._direct = {(m, r.path): r.endpoint for r in routes if isinstance(r, Route) and not r.param_convertors
                        and inspect.iscoroutinefunction(r.endpoint) for m in r.methods or () if m in ("GET", "POST")}
        self.starlette = Starlette(routes=routes, lifespan=self.lifespan)
        engine.on_records = self._on_records
        engine.on_batch = lambda n, ticks, s: self.metrics.batch_seconds.observe(s)

    # ASGI: request id, body limit, timing, access log ---------------------------------------------------------
    async def app(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.starlette(scope, receive, send)
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        rid = rid if REQUEST_ID_RE.match(rid) else f"{self._rid_prefix}{next(self._rid_counter):012x}"
        scope.setdefault("state", {})["request_id"] = rid
        scope["state"]["received"] = t0
        key = (scope["method"], scope["path"])
        endpoint = self._endpoints.get(key)
        if endpoint is None:  # the route template (the metrics label), found once per method and path
            endpoint = next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), "unmatched")
            if len(self._endpoints) > 4096:  # paths with ids (jobs, keys) vary without bound
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        status = {"code": 500, "started": False}
        limit = self.settings.body_limit

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await ApiError(413, f"request body of {declared} bytes is over the limit of {limit}")\
                .response(rid)(scope, receive, send_wrapped)
        else:
            seen = {"n": 0}

            async def receive_limited():
                message = await receive()
                if message["type"] == "http.request":
                    seen["n"] += len(message.get("body", b""))
                    if seen["n"] > limit:
                        raise BodyTooLarge(f"request body over the limit of {limit} bytes")
                return message

            direct = self._direct.get(key)
            if direct is not None:
                await self._dispatch(direct, scope, receive_limited, send_wrapped, status)
            else:
                await self.starlette(scope, receive_limited, send_wrapped)
        elapsed = time.perf_counter() - t0
        code = status["code"]
        series = self._series.get((endpoint, scope["method"], code))
        if series is None:  # the labelled series of this endpoint, method and status, looked up once
            if len(self._series) > 4096:
                self._series.clear()
            m = self.metrics
            series = self._series[(endpoint, scope["method"], code)] = (
                m.request_seconds.labels(endpoint, scope["method"]), m.requests.labels(endpoint, scope["method"], str(code)),
                m.errors.labels(endpoint, str(code)) if code >= 400 else None)
        series[0].observe(elapsed)
        series[1].inc()
        if series[2] is not None:
            series[2].inc()
        if endpoint.startswith("/api/v1/process/") and code not in (401, 403, 413, 429):
            self.metrics.outcomes.append((time.monotonic(), code))  # admitted processing requests
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({"ts": _iso(time.time()), "request_id": rid, "method": scope["method"],
                                        "path": scope["path"], "endpoint": endpoint, "status": code,
                                        "ms": round(elapsed * 1000, 3), "key_id": scope["state"].get("key_id"),
                                        "client": (scope.get("client") or ["?"])[0]}))

    async def _dispatch(self, endpoint, scope, receive, send, status: dict) -> None:
        """An exact-path route called as Starlette's router would call it (a Request, the endpoint, its response),
        without the error middlewares and the router's scan that find it: at 32 concurrent clients those layers
        were a fifth of the event loop's time per request. An unexpected error answers 500 with the request id
        and logs its traceback, as Starlette's error middleware does; `ApiError`s are answered by `api`."""
        scope["app"] = self.starlette
        try:
            response = await endpoint(Request(scope, receive, send))
            await response(scope, receive, send)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"],
                          scope["state"]["request_id"])
            if not status["started"]:
                await ApiError(500, "internal server error; the server log has the details")\
                    .response(scope["state"]["request_id"])(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            await asyncio.to_thread(self.engine.close)
            if self._http is not None:
                await self._http.aclose()

    def _on_records(self, records: list[dict], outcomes: list[dict]) -> None:
        """Worker thread: count and push the batch's new predictions and the outcomes they realized."""
        now = time.monotonic()
        for rec in records:
            self.metrics.prediction(rec, now)
        if self.loop is not None and self.hub.subs:
            self.loop.call_soon_threadsafe(self.hub.publish, records, outcomes)

    # auth, limits ------------------------------------------------------------------------------------------------
    def authenticate(self, headers, role: str, scope_state: dict) -> KeyRecord:
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise ApiError(401, "missing API key: send `Authorization: Bearer <key>` (create one with `nq keys create`)",
                           headers={"WWW-Authenticate": "Bearer"})
        rec = self.keys.verify(auth[7:].strip())
        if rec is None:
            raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        scope_state["key_id"] = rec.id
        if not role_allows(rec.role, role):
            raise ApiError(403, f"this key's role {rec.role!r} may not do this: it needs {role!r} or above")
        return rec

    def admit(self, rec: KeyRecord) -> None:
        bucket = self.buckets.get(rec.id)
        if bucket is None or bucket.rate != rec.rate_per_s or bucket.burst != rec.burst:
            bucket = self.buckets[rec.id] = TokenBucket(rec.rate_per_s, rec.burst)
        wait = bucket.take()
        if wait > 0:
            raise ApiError(429, f"rate limit of {rec.rate_per_s * 60:g}/min (burst {rec.burst}) reached; retry in "
                           f"{wait:.2f} s", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if self.inflight[rec.id] >= rec.max_concurrent:
            raise ApiError(429, f"{rec.max_concurrent} requests of this key are in flight already; wait for one",
                           headers={"Retry-After": "1"})

    def api(self, role: str, fn):
        async def endpoint(request: Request):
            rid = request.scope["state"]["request_id"]
            key = None
            try:
                key = self.authenticate(request.headers, role, request.scope["state"])
                self.admit(key)
                self.inflight[key.id] += 1
                try:
                    return await fn(request, key)
                finally:
                    self.inflight[key.id] -= 1
            except ApiError as exc:
                return exc.response(rid)
            except BodyTooLarge as exc:
                return ApiError(413, str(exc)).response(rid)
        return endpoint

    async def body(self, request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(422, f"body is not valid JSON: {exc}", field="body") from None
        if not isinstance(body, dict):
            raise ApiError(422, f"body must be a JSON object, got {type(body).__name__}", field="body")
        return body

    # processing -------------------------------------------------------------------------------------------------
    async def realtime(self, request: Request, key: KeyRecord):
        body = await self.body(request)
        source = body.get("source")
        if not isinstance(source, str):
            raise ApiError(422, "source: required, a string", field="source")
        if not SOURCE_RE.match(source):
            raise ApiError(422, f"source name {source!r} is not valid: use 1-64 letters, digits, '_', '-' or '.', "
                           "starting with a letter or digit", field="source")
        data = body.get("data")
        if not isinstance(data, list) or not data:
            raise ApiError(422, "data: required, a non-empty list of numbers", field="data")
        if len(data) > self.settings.max_values:
            raise ApiError(413, f"data: {len(data)} values, at most {self.settings.max_values} per request; use "
                           "/api/v1/process/batch", field="data")
        for i, v in enumerate(data):
            if not _number(v):
                raise ApiError(422, f"data[{i}]: expected a number, got {type(v).__name__} {v!r}", field=f"data[{i}]")
        if "timestamps" in body:
            ts = body["timestamps"]
            if not isinstance(ts, list) or len(ts) != len(data):
                raise ApiError(422, f"timestamps: one per value ({len(data)})", field="timestamps")
        elif "timestamp" in body:
            if len(data) != 1:
                raise ApiError(422, f"timestamp: one timestamp for {len(data)} values; send `timestamps`, one per value",
                               field="timestamp")
            ts = [body["timestamp"]]
        else:
            raise ApiError(422, "timestamp: required (ISO 8601 or epoch seconds/milliseconds); the same tick posted "
                           "again is recognised by its timestamp", field="timestamp")
        for i, t in enumerate(ts):
            if not _timestamp_ok(t):
                raise ApiError(422, f"timestamps[{i}]: expected a string or a number, got {type(t).__name__}",
                               field="timestamp" if "timestamp" in body else f"timestamps[{i}]")
        cfg = body.get("config", {})
        if not isinstance(cfg, dict):
            raise ApiError(422, "config: expected an object", field="config")
        for name in ("neuromorphic_enabled", "quantum_enabled"):
            if name in cfg and not isinstance(cfg[name], bool):
                raise ApiError(422, f"config.{name}: expected true or false", field=f"config.{name}")
        priority = cfg.get("priority", "normal")
        if priority not in ("low", "normal", "high"):
            raise ApiError(422, "config.priority: one of low, normal, high", field="config.priority")
        if not self.engine.own.owns(source):
            return await self.forward(request, source, body)
        rows = [(source, t, v) for t, v in zip(ts, data, strict=True)]
        res = await self._run(rows, "POST /api/v1/process/realtime", priority, request)
        omitted = [k for k, flag in (("neuromorphic_results", "neuromorphic_enabled"),
                                     ("quantum_results", "quantum_enabled")) if cfg.get(flag) is False]
        if len(res) == 1 and res[0][1] is not None and not omitted:  # the common case: the record's JSON as encoded
            return Response(f'{res[0][1][:-1]}, "duplicate": {json.dumps(res[0][2])}}}', media_type="application/json")
        out = []
        for rec, _, dup in res:
            rec = {k: v for k, v in rec.items() if k not in omitted}
            out.append({**rec, "duplicate": dup})
        if omitted:
            for r in out:
                r["omitted"] = omitted  # left out of the answer; the served model is the trained fused model
        return JSONResponse(out[0] if len(out) == 1 else {"source": source, "predictions": out})

    async def _run(self, rows, label: str, priority: str, request: Request | None):
        received = request.scope["state"]["received"] if request is not None else None
        try:
            return await asyncio.wrap_future(self.engine.submit(rows, label, priority, received=received))
        except Rejected as exc:
            raise ApiError(422, exc.messages[0], field=exc.field, details=exc.messages) from None
        except NoModel as exc:
            raise ApiError(409, str(exc), field="source") from None
        except NotOwner as exc:
            raise ApiError(421, str(exc), field="source") from None

    async def forward(self, request: Request, source: str, body: dict):
        """A source another replica owns: pass the request to it, or say who owns it (421)."""
        owner = self.engine.own.owner(source)
        peers = self.engine.own.peers
        if not peers:
            raise ApiError(421, f"source {source!r} is served by replica {owner} of {self.engine.own.replicas}; "
                           "send it there", field="source", headers={"X-NQ-Owner": str(owner)})
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        hdr = {"authorization": request.headers.get("authorization", ""),
               "x-request-id": request.scope["state"]["request_id"], "x-nq-forwarded": "1"}
        if request.headers.get("x-nq-forwarded"):
            raise ApiError(421, f"source {source!r}: forwarded to a replica that does not own it (replica count "
                           "differs between replicas?)", field="source")
        try:
            r = await self._http.post(f"{peers[owner].rstrip('/')}{request.url.path}", json=body, headers=hdr)
        except httpx.HTTPError as exc:
            raise ApiError(503, f"the owner of {source!r} (replica {owner}, {peers[owner]}) is unreachable: {exc}",
                           headers={"Retry-After": "1"}) from None
        return Response(r.content, status_code=r.status_code, media_type="application/json",
                        headers={"X-NQ-Replica": str(owner)})

    async def batch(self, request: Request, key: KeyRecord):
        body = await self.body(request)
        job_id = body.get("job_id") or uuid.uuid4().hex
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise ApiError(422, "job_id: 1-64 letters, digits, '_' or '-'", field="job_id")
        if job_id in self.jobs:
            job = self.jobs[job_id]
            return JSONResponse({k: v for k, v in job.public().items() if k != "results"}, status_code=200)
        points = body.get("data_points")
        if not isinstance(points, list) or not points:
            raise ApiError(422, "data_points: required, a non-empty list of {source, timestamp, value}",
                           field="data_points")
        if len(points) > self.settings.max_points:
            raise ApiError(413, f"data_points: {len(points)} points, at most {self.settings.max_points} per job",
                           field="data_points")
        rows = []
        for i, p in enumerate(points):
            if not isinstance(p, dict):
                raise ApiError(422, f"data_points[{i}]: expected an object", field=f"data_points[{i}]")
            for name, ok in (("source", lambda v: isinstance(v, str)), ("timestamp", _timestamp_ok), ("value", _number)):
                if name not in p or not ok(p[name]):
                    raise ApiError(422, f"data_points[{i}].{name}: required, "
                                   + {"source": "a string", "timestamp": "a string or a number", "value": "a number"}[name],
                                   field=f"data_points[{i}].{name}")
            rows.append((p["source"], p["timestamp"], p["value"]))
        callback = body.get("callback_url")
        if callback is not None:
            u = urlparse(callback) if isinstance(callback, str) else None
            host = (u.hostname or "").lower() if u else ""
            if not u or u.scheme not in ("http", "https") or host not in self.settings.callback_hosts:
                raise ApiError(422, f"callback_url: host {host or callback!r} is not on the callback allow-list "
                               f"({', '.join(self.settings.callback_hosts) or 'empty'}; `callback_hosts` in "
                               "serve/settings.json)", field="callback_url")
        foreign = sorted({s for s, _, _ in rows if isinstance(s, str) and SOURCE_RE.match(s)
                          and not self.engine.own.owns(s)})
        if foreign:
            raise ApiError(421, "data_points: sources served by other replicas: " + ", ".join(
                f"{s} (replica {self.engine.own.owner(s)})" for s in foreign[:20]) + "; send each its own batch",
                field="data_points")
        job = Job(job_id, len(rows), key.id, callback)
        self.jobs[job_id] = job
        while len(self.jobs) > self.settings.jobs_kept:
            self.jobs.popitem(last=False)
        asyncio.get_running_loop().create_task(self._run_job(job, rows))
        return JSONResponse({"job_id": job_id, "status": job.status, "points": job.points,
                             "status_url": f"/api/v1/jobs/{job_id}"}, status_code=202)

    async def _run_job(self, job: Job, rows: list) -> None:
        """The job's points in chunks of 256 (realtime requests get in between), each validated as ingest does."""
        import pandas as pd

        job.status = "running"
        order = pd.to_datetime(pd.Series([r[1] if isinstance(r[1], str) else None for r in rows]), utc=True,
                               errors="coerce", format="ISO8601")
        keyed = sorted(range(len(rows)), key=lambda i: (str(rows[i][0]),
                                                         order.iloc[i].value if not pd.isna(order.iloc[i]) else 0,
                                                         rows[i][1] if not isinstance(rows[i][1], str) else 0, i))
        for start in range(0, len(keyed), 256):
            chunk = [rows[i] for i in keyed[start:start + 256]]
            try:
                res = await self._run(chunk, f"job {job.id}: data_points", "low", None)
                job.results += [{**rec, "duplicate": dup} for rec, _, dup in res]
            except ApiError as exc:
                job.errors += exc.details or [exc.message]
            except Exception as exc:  # noqa: BLE001 - recorded in the job
                job.errors.append(f"{type(exc).__name__}: {exc}")
        job.status = "done" if not job.errors else ("failed" if not job.results else "done_with_errors")
        job.finished_at = time.time()
        if job.callback_url:
            import httpx

            try:
                async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
                    r = await client.post(job.callback_url, json=job.public())
                job.callback = {"status_code": r.status_code}
            except httpx.HTTPError as exc:
                job.callback = {"error": str(exc)}

    async def job(self, request: Request, key: KeyRecord):
        job = self.jobs.get(request.path_params["job_id"])
        if job is None or (job.key_id != key.id and key.role != "admin"):
            raise ApiError(404, f"no job {request.path_params['job_id']!r} of this key on this replica")
        return JSONResponse(job.public())

    async def predictions(self, request: Request, key: KeyRecord):
        source = request.query_params.get("source")
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise ApiError(422, "limit: an integer", field="limit") from None
        sources = [source] if source else self.engine.sources()
        return JSONResponse({s: self.engine.recent(s, limit) for s in sources})

    async def ping(self, request: Request, key: KeyRecord):
        return JSONResponse({"ok": True})

    async def outcomes(self, request: Request, key: KeyRecord):
        """Realized outcomes of the predictions served since the server started (the live reliability view)."""
        source = request.query_params.get("source")
        sources = [source] if source else self.engine.sources()
        return JSONResponse({s: self.engine.outcomes(s) for s in sources})

    async def models(self, request: Request, key: KeyRecord):
        """Each source's model version: selected features, the quantum selection's results, the reliability of
        its walk-forward predictions, its latest validation figures; and the cross-source quantum portfolio."""
        validation = await asyncio.to_thread(self._validation)
        models = {s: {**info, "validation": validation.get(s)} for s, info in self.engine.model_info().items()}
        portfolio = None
        with contextlib.suppress(Exception):
            if self.wh.table_parts("portfolio"):
                df = self.wh.read_table("portfolio")
                cols = [c for c in ("source", "predicted_edge", "volatility", "chosen") if c in df.columns]
                portfolio = json.loads(df[cols].to_json(orient="records"))
        return JSONResponse({"models": models, "portfolio": portfolio})

    async def report(self, request: Request, key: KeyRecord):
        """A source's HTML validation report (viewers may read it)."""
        name = request.path_params["name"]
        source = name[:-5] if name.endswith(".html") else ""
        if not SOURCE_RE.match(source):
            raise ApiError(404, f"no report {name!r}: reports are <source>.html")
        path = self.wh.reports / f"{source}.html"
        if not path.is_file():
            raise ApiError(404, f"no validation report for {source!r} yet: run `nq run --source {source}`")
        return Response(path.read_bytes(), media_type="text/html; charset=utf-8")

    async def index(self, request: Request):
        """The dashboard: a static page; it asks for a key and talks to the API like any client."""
        return Response((STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    # WebSocket ---------------------------------------------------------------------------------------------------
    async def ws(self, websocket: WebSocket):
        await websocket.accept()
        headers = websocket.headers
        sid = None
        try:
            try:
                msg = json.loads(await asyncio.wait_for(websocket.receive_text(), timeout=30))
            except (TimeoutError, json.JSONDecodeError):
                await websocket.close(code=1008, reason="expected a JSON subscription message")
                return
            if not isinstance(msg, dict) or msg.get("type") != "subscription":
                await websocket.close(code=1008, reason='expected {"type": "subscription", "sources": [...]}')
                return
            hdrs = dict(headers)
            if "authorization" not in hdrs and isinstance(msg.get("api_key"), str):
                hdrs["authorization"] = f"Bearer {msg['api_key']}"  # browsers cannot set headers on a WebSocket
            try:
                self.authenticate(hdrs, "viewer", {})
            except ApiError as exc:
                await websocket.close(code=4000 + exc.status, reason=exc.message[:120])
                return
            sources, filters = msg.get("sources"), msg.get("filters") or {}
            if sources is None:
                sources = self.engine.sources()
            if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources) or not isinstance(filters, dict):
                await websocket.close(code=1008, reason="sources: a list of names; filters: an object")
                return
            min_conf = filters.get("min_confidence", 0.0)
            directions = filters.get("directions") or []
            if not _number(min_conf) or not isinstance(directions, list) or not set(directions) <= {"up", "down", "hold"}:
                await websocket.close(code=1008, reason="filters: min_confidence a number, directions of up/down/hold")
                return
            sid, q = self.hub.add(set(sources), float(min_conf), set(directions))
            await websocket.send_json({"type": "subscribed", "sources": sorted(sources),
                                       "filters": {"min_confidence": min_conf, "directions": directions}})
            receiver = asyncio.get_running_loop().create_task(self._ws_drain(websocket))
            try:
                while True:
                    getter = asyncio.ensure_future(q.get())
                    done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                    if receiver in done:
                        getter.cancel()
                        return
                    item = getter.result()
                    if item is None:
                        await websocket.close(code=1013, reason=f"too slow: {self.settings.ws_queue} messages behind")
                        return
                    await websocket.send_json(item)
            finally:
                receiver.cancel()
        except WebSocketDisconnect:
            return
        finally:
            if sid is not None:
                self.hub.remove(sid)

    async def _ws_drain(self, websocket: WebSocket) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                await websocket.receive_text()

    # status, metrics -----------------------------------------------------------------------------------------------
    def _validation(self) -> dict:
        """Each source's latest validation report figures (the `validation_metrics` table), re-read every 10 s."""
        t, cached = self._validation_cache
        if time.monotonic() - t < 10:
            return cached
        out = {}
        for s in self.engine.sources():
            with contextlib.suppress(Exception):
                if self.wh.table_parts("validation_metrics", s):
                    m = self.wh.read_table("validation_metrics", s).iloc[-1]
                    out[s] = {"score": float(m["score"]), "accuracy": float(m["accuracy"]),
                              "predictions": int(m["predictions"]), "model_version": str(m["model_version"]),
                              "report": f"{s}.html"}
        self._validation_cache = (time.monotonic(), out)
        return out

    def _live(self) -> dict:
        out = {}
        for s in self.engine.sources():
            o = self.engine.outcomes(s)
            out[s] = {"realized": len(o), "accuracy": (sum(x["correct"] for x in o) / len(o)) if o else None,
                      "mean_confidence": (sum(x["confidence"] for x in o) / len(o)) if o else None}
        return out

    def _storage_writable(self) -> tuple[bool, str]:
        probe = self.wh.home / "serve" / f".probe-{self.engine.own.replica}"
        try:
            from nq_dagster.store import atomic_write_bytes

            atomic_write_bytes(probe, b"ok")
            return True, "writable"
        except OSError as exc:
            return False, f"not writable: {exc}"

    def status_document(self) -> tuple[str, dict]:
        import pandas as pd

        now = pd.Timestamp.now(tz="UTC")
        models = {}
        for s, info in self.engine.model_info().items():
            age_h = (now - pd.Timestamp(info["trained_at"])).total_seconds() / 3600
            models[s] = {"status": "healthy" if age_h <= self.settings.max_model_age_hours else "degraded",
                         "model_version": info["model_version"], "trained_at": info["trained_at"],
                         "age_hours": round(age_h, 3), "rows_seen": info["rows_seen"],
                         "last_timestamp": info["last_timestamp"], "process": info["process"]}
        for s, err in self.engine.load_errors().items():
            models[s] = {"status": "down", "error": err}
        writable, why = self._storage_writable()
        backlog = max(0, len(list(self.engine.wal_dir.glob("*.jsonl"))) - 1)  # closed, not yet in the tables
        storage = {"status": "healthy" if writable and not self.engine.last_flush_error else ("degraded" if writable else "down"),
                   "detail": why, "last_flush_error": self.engine.last_flush_error, "log_segments": backlog}
        engine = {"status": "healthy" if self.engine.alive else "down", "queue_depth": self.engine.queue_depth(),
                  "replica": self.engine.own.replica, "replicas": self.engine.own.replicas}
        figures = self.metrics.figures()
        overall = "healthy"
        if engine["status"] == "down" or storage["status"] == "down":
            overall = "down"
        elif (storage["status"] != "healthy" or not models or any(m["status"] != "healthy" for m in models.values())
              or (figures["server_error_rate_5m"] or 0.0) > 0.05):
            overall = "degraded"
        return overall, {"status": overall, "components": {"engine": engine, "storage": storage, "models": models},
                         "average_processing_time_ms": figures["processing_time_ms"]["average"],
                         "success_rate_5m": figures["success_rate_5m"],
                         "server_error_rate_5m": figures["server_error_rate_5m"],
                         "predictions_per_second_1m": figures["predictions_per_second_1m"],
                         "uptime_seconds": round(time.time() - self.engine.started_at, 3)}

    async def status(self, request: Request):
        overall, doc = await asyncio.to_thread(self.status_document)
        code = 503 if overall == "down" else 200
        if "authorization" in request.headers:
            try:
                self.authenticate(request.headers, "viewer", request.scope["state"])
            except ApiError as exc:
                return exc.response(request.scope["state"]["request_id"])
            return JSONResponse(doc, status_code=code)
        return JSONResponse({"status": overall, "detail": "send a viewer key for components and figures"},
                            status_code=code)

    async def metrics_json(self, request: Request, key: KeyRecord):
        f = self.metrics.figures()
        validation = await asyncio.to_thread(self._validation)
        return JSONResponse({
            "timestamp": _iso(time.time()), "uptime_seconds": round(time.time() - self.engine.started_at, 3),
            "total_predictions": f["predictions_total"], "predictions_per_second": f["predictions_per_second_1m"],
            "average_processing_time_ms": f["processing_time_ms"]["average"],
            "p50_latency_ms": f["processing_time_ms"]["p50"], "p95_latency_ms": f["processing_time_ms"]["p95"],
            "p99_latency_ms": f["processing_time_ms"]["p99"], "latency_window": f["processing_time_ms"]["over_last"],
            "success_rate": f["success_rate_5m"], "active_connections": len(self.hub.subs),
            "validation": validation, "live": self._live(),
            "models": {s: {k: v for k, v in info.items() if k not in ("quantum", "reliability")}
                       for s, info in self.engine.model_info().items()},
            "notes": {"latency": "tick received to record ready, exact percentiles over the last 10,000 predictions",
                      "success_rate": "share of admitted processing requests (past key, role, rate and size checks) "
                                      "answered 2xx over the last 5 minutes; 4xx for bad ticks count as failures",
                      "validation": "from each source's latest validation report (realized outcomes)",
                      "live": "served predictions whose outcome later ticks realized (last 500 per source)"},
        })

    async def prometheus(self, request: Request, key: KeyRecord):
        m = self.metrics
        m.queue_depth.set(self.engine.queue_depth())
        m.model_info.clear()
        for s, info in self.engine.model_info().items():
            m.model_info.labels(s, info["model_version"], info["config_version"]).set(1)
        for s, v in (await asyncio.to_thread(self._validation)).items():
            m.validation_accuracy.labels(s).set(v["accuracy"])
            m.validation_score.labels(s).set(v["score"])
        for s, v in self._live().items():
            if v["accuracy"] is not None:
                m.live_accuracy.labels(s).set(v["accuracy"])
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    # config, keys ----------------------------------------------------------------------------------------------------
    async def config_get(self, request: Request, key: KeyRecord):
        service = request.path_params["service"]
        try:
            doc = self.configs.describe(service)
            if "version" in request.query_params:
                v = self.configs.version(request.query_params["version"])
                doc["requested_version"] = {**v, "config": {k: v["config"][k] for k in SERVICES[service]}}
        except ConfigError as exc:
            raise ApiError(404 if exc.field == "service" else 422, str(exc), field=exc.field) from None
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0]), field="version") from None
        return JSONResponse(doc)

    async def config_put(self, request: Request, key: KeyRecord):
        service = request.path_params["service"]
        body = await self.body(request)
        changes = body.get("values", body) if isinstance(body.get("values"), dict) else body
        try:
            entry = self.configs.update(service, changes, author=f"key {key.id}" + (f" ({key.name})" if key.name else ""))
        except ConfigError as exc:
            raise ApiError(404 if exc.field == "service" else 422, str(exc), field=exc.field) from None
        return JSONResponse({k: entry[k] for k in ("number", "hash", "service", "author", "created_at", "changes")}
                            | {"note": "active now: the next training uses it"})

    async def keys_list(self, request: Request, key: KeyRecord):
        return JSONResponse({"keys": [k.public() for k in self.keys.list()]})

    async def keys_create(self, request: Request, key: KeyRecord):
        body = await self.body(request)
        role = body.get("role")
        if role not in ROLES:
            raise ApiError(422, f"role: one of {', '.join(ROLES)}", field="role")
        try:
            new, rec = self.keys.create(role, str(body.get("rate", "600/min")), int(body.get("burst", 50)),
                                        int(body.get("max_concurrent", 32)), str(body.get("name", "")))
        except (ValueError, TypeError) as exc:
            raise ApiError(422, str(exc), field="rate") from None
        return JSONResponse({"key": new, **rec.public(), "note": "shown once: only its hash is stored"}, status_code=201)

    async def keys_revoke(self, request: Request, key: KeyRecord):
        try:
            rec = self.keys.revoke(request.path_params["key_id"])
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from None
        return JSONResponse(rec.public())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger and the message's fields (a message that is a JSON object
    is merged in), plus the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        try:
            payload = json.loads(msg) if msg.startswith("{") else {"message": msg}
        except json.JSONDecodeError:
            payload = {"message": msg}
        doc = {"ts": _iso(record.created), "level": record.levelname, "logger": record.name, **payload}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Structured logs on stderr for the server, the engine and uvicorn (access lines carry the request id and the
    key's id, never a key or the server secret)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("nq.serve", "nq.serve.access", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False


def create_server(home: str | None = None, ownership: Ownership = Ownership(), settings: Settings | None = None,
                  fsync: str = "interval", address: str = "", flush_interval_s: float = 10.0,
                  watch_interval_s: float = 1.0, processes: int = 1) -> Server:
    wh = Warehouse.from_settings(NQSettings.from_env().with_home(home))
    engine = Engine(wh, ownership, fsync=fsync, address=address, flush_interval_s=flush_interval_s,
                    watch_interval_s=watch_interval_s, processes=processes).start()
    return Server(wh, engine, settings or Settings.load(wh))
