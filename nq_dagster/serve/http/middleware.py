"""The server's one middleware, pure ASGI: for each HTTP request a request id (the client's `X-Request-Id`
when well formed, else a new one; echoed in the answer), the body limit (413 before reading a declared body
over it, and while reading one that grows past it), the timing into the Prometheus series of the route's
template, the share of admitted processing requests that succeed, and one JSON access-log line. An exception
that escapes the app is logged with the request id and answered 500 if nothing was sent yet.

Request ids are a random per-process prefix and a counter: unique per process, and without the system call a
uuid4 per request costs.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nq_dagster.serve.http.errors import BodyTooLarge, answer_error, error_response
from nq_dagster.serve.http.telemetry import Metrics
from nq_dagster.serve.logs import iso

access_log = logging.getLogger("nq.serve.access")
log = logging.getLogger("nq.serve")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LABELS_KEPT = 4096  # paths with ids (jobs, keys) vary without bound: the label caches start over past this
UNCOUNTED = (401, 403, 413, 429)  # processing requests refused before admission: not in the success rate


@dataclass(slots=True)
class _Series:
    """The labelled Prometheus children of one (endpoint, method, status), looked up once."""

    seconds: Histogram
    requests: Counter
    errors: Counter | None


class _Answer:
    __slots__ = ("code", "started")

    def __init__(self):
        self.code, self.started = 500, False


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, body_limit: int, routes: list[BaseRoute]):
        """`routes`: the app's routes, to label a request by its route's template
        (`/api/v1/jobs/{job_id}`)."""
        self.app, self.metrics, self.body_limit, self.routes = app, metrics, body_limit, routes
        self._rid_prefix, self._rid_counter = uuid.uuid4().hex[:12], itertools.count()
        self._endpoints: dict[tuple[str, str], str] = {}
        self._series: dict[tuple[str, str, int], _Series] = {}

    def endpoint(self, scope: Scope) -> str:
        """The template of the route the request matches (the metrics label), found once per method and
        path."""
        key = (scope["method"], scope["path"])
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = next((r.path for r in self.routes if r.matches(scope)[0] == Match.FULL), "unmatched")
            if len(self._endpoints) > LABELS_KEPT:
                self._endpoints.clear()
            self._endpoints[key] = endpoint
        return endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        rid = rid if REQUEST_ID_RE.match(rid) else f"{self._rid_prefix}{next(self._rid_counter):012x}"
        state = scope.setdefault("state", {})
        state["request_id"], state["received"] = rid, t0
        endpoint = self.endpoint(scope)
        answer = _Answer()
        limit = self.body_limit

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.code, answer.started = message["status"], True
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            declared = int(headers.get("content-length", "0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                await error_response(
                    413, f"request body of {declared} bytes is over the limit of {limit}", rid
                )(scope, receive, send_with_id)
            else:
                seen = 0

                async def receive_limited() -> Message:
                    nonlocal seen
                    message = await receive()
                    if message["type"] == "http.request":
                        seen += len(message.get("body", b""))
                        if seen > limit:
                            raise BodyTooLarge(f"request body over the limit of {limit} bytes")
                    return message

                await self.app(scope, receive_limited, send_with_id)
        except Exception as exc:  # noqa: BLE001 - answered and logged here, the server keeps serving
            log.exception("unhandled error in %s %s (request %s)", scope["method"], scope["path"], rid)
            if not answer.started:
                await answer_error(exc, scope)(scope, receive, send_with_id)
        self._record(scope, rid, endpoint, answer.code, time.perf_counter() - t0)

    def _record(self, scope: Scope, rid: str, endpoint: str, code: int, elapsed: float) -> None:
        method = scope["method"]
        series = self._series.get((endpoint, method, code))
        if series is None:
            if len(self._series) > LABELS_KEPT:
                self._series.clear()
            m = self.metrics
            series = self._series[(endpoint, method, code)] = _Series(
                m.request_seconds.labels(endpoint, method),
                m.requests.labels(endpoint, method, str(code)),
                m.errors.labels(endpoint, str(code)) if code >= 400 else None,
            )
        series.seconds.observe(elapsed)
        series.requests.inc()
        if series.errors is not None:
            series.errors.inc()
        if endpoint.startswith("/api/v1/process/") and code not in UNCOUNTED:
            self.metrics.outcomes.append((time.monotonic(), code))  # admitted processing requests
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "ts": iso(time.time()),
                        "request_id": rid,
                        "method": method,
                        "path": scope["path"],
                        "endpoint": endpoint,
                        "status": code,
                        "ms": round(elapsed * 1000, 3),
                        "key_id": scope["state"].get("key_id"),
                        "client": (scope.get("client") or ["?"])[0],
                    }
                )
            )
