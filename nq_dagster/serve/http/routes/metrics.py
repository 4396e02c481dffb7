"""The server's figures (viewer): `GET /api/v1/metrics`, the original's metrics document with every figure
computed (latency percentiles, rates, validation and live accuracy, the models); `GET /metrics`, the
Prometheus exposition (viewer, or anyone when `NQ_SERVE_METRICS_OPEN` is set: a scrape on the cluster network
carries no key; the figures are operational, no prediction or tick is in them)."""

from __future__ import annotations

import asyncio
import time
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.serve.logs import iso

NOTES = {
    "latency": "tick received to record ready, exact percentiles over the last 10,000 predictions",
    "success_rate": "share of admitted processing requests (past key, role, rate and size checks) "
    "not answered with a server error (5xx) over the last 5 minutes; a refused bad tick (4xx) is a success",
    "validation": "from each source's latest validation report (realized outcomes)",
    "live": "served predictions whose outcome later ticks realized (last 500 per source)",
}


async def metrics_json(state: ServerState, request: Request, key: KeyRecord) -> Response:
    f = state.metrics.figures()
    validation = await asyncio.to_thread(state.figures.validation)
    eng = state.engine
    ms = f["processing_time_ms"]
    scope = Scope.of(key)  # the default namespace's keys: its sources' figures only, no tenant's

    def own(per_source: dict) -> dict:
        return {s: v for s, v in per_source.items() if scope.sees(s)}

    return JSONResponse(
        {
            "timestamp": iso(time.time()),
            "uptime_seconds": round(time.time() - eng.started_at, 3),
            "total_predictions": f["predictions_total"],
            "predictions_per_second": f["predictions_per_second_1m"],
            "average_processing_time_ms": ms["average"],
            "p50_latency_ms": ms["p50"],
            "p95_latency_ms": ms["p95"],
            "p99_latency_ms": ms["p99"],
            "latency_window": ms["over_last"],
            "success_rate": f["success_rate_5m"],
            "active_connections": len(state.hub.subs),
            "validation": own(validation),
            "live": own(state.figures.live()),
            "models": {
                s: {k: v for k, v in info.items() if k not in ("quantum", "reliability")}
                for s, info in own(eng.model_info()).items()
            },
            "notes": NOTES,
        }
    )


async def prometheus(state: ServerState, request: Request, key: KeyRecord | None = None) -> Response:
    m = state.metrics
    m.queue_depth.set(state.engine.queue_depth())
    j = state.engine.journal_status()
    m.journal_refused.set(j["refused_batches"])
    m.journal_quarantined.set(j["quarantined_segments"])
    m.tick_conflicts.set(j["tick_conflicts"])
    m.storage_up.set(0 if j.get("error") else 1)
    m.model_info.clear()
    for s, info in state.engine.model_info().items():
        m.model_info.labels(s, info["model_version"], info["config_version"]).set(1)
    for s, v in (await asyncio.to_thread(state.figures.validation)).items():
        m.validation_accuracy.labels(s).set(v["accuracy"])
        m.validation_score.labels(s).set(v["score"])
    for s, v in state.figures.live().items():
        if v["accuracy"] is not None:
            m.live_accuracy.labels(s).set(v["accuracy"])
            m.live_confidence.labels(s).set(v["mean_confidence"])
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


def platform_only(handler):
    """The server's figures cover every tenant's sources: a tenant's key is refused them."""

    async def endpoint(state: ServerState, request: Request, key: KeyRecord) -> Response:
        if key.tenant is not None:
            raise ApiError(
                403,
                f"the server's figures cover every tenant: a key of tenant {key.tenant!r} may not read them "
                "(its predictions, outcomes and models are at /api/v1/predictions, /outcomes, /models)",
            )
        return await handler(state, request, key)

    endpoint.__name__ = handler.__name__
    return endpoint


def routes(state: ServerState) -> list[BaseRoute]:
    viewer = partial(guarded, state.access, "viewer")
    return [
        Route("/api/v1/metrics", viewer(partial(platform_only(metrics_json), state)), methods=["GET"]),
        Route(
            "/metrics",
            partial(prometheus, state)
            if state.process.serve_metrics_open
            else viewer(partial(platform_only(prometheus), state)),
            methods=["GET"],
        ),
    ]
