"""What the routes share: one `ServerState` per app, built by the app factory and passed to every route
module. The event loop is set when the app starts (the engine's worker thread hands it the WebSocket pushes);
the HTTP client for forwarding to the owning replica is made on first use. With `NQ_SERVE_SHARED_STORE` set,
the keys' limits and the batch jobs live in the store the replicas share (`serve/shared.py`), else in this
process (limits) and this replica's SQLite file (jobs)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from nq_dagster.serve.engine import Engine
from nq_dagster.serve.http.auth import Access
from nq_dagster.serve.http.batchjobs import Jobs, SharedJobs
from nq_dagster.serve.http.figures import Figures
from nq_dagster.serve.http.hub import Hub
from nq_dagster.serve.http.startup import Startup
from nq_dagster.serve.http.telemetry import Metrics
from nq_dagster.serve.http.tenants import Tenants
from nq_dagster.serve.http.tokens import TokenVerifier
from nq_dagster.serve.keys import KeyStore
from nq_dagster.serve.limits import LocalLimits, SharedLimits
from nq_dagster.serve.server_settings import ServerSettings
from nq_dagster.serve.shared import SharedStore
from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse
from nq_dagster.store.config_store import ConfigStore


@dataclass
class ServerState:
    wh: Warehouse
    engine: Engine
    settings: ServerSettings
    keys: KeyStore
    access: Access
    configs: ConfigStore
    metrics: Metrics
    hub: Hub
    jobs: Jobs | SharedJobs
    figures: Figures
    startup: Startup
    process: Settings  # the process's settings (metrics access, CORS, identity provider)
    shared: SharedStore | None = None  # the replicas' shared store, when configured
    loop: asyncio.AbstractEventLoop | None = None
    peers: httpx.AsyncClient | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, wh: Warehouse, engine: Engine, settings: ServerSettings, startup: Startup, process: Settings
    ) -> ServerState:
        keys, metrics = KeyStore(wh.home), Metrics()
        per_key, ttl_s = settings.jobs_per_key, settings.job_ttl_hours * 3600.0
        shared = None
        if process.serve_shared_store:
            shared = SharedStore(process.serve_shared_store, engine.own.replica, process.serve_shared_lease_s)
            limits, jobs = SharedLimits(shared), SharedJobs(shared, per_key=per_key, ttl_s=ttl_s)
        else:
            limits = LocalLimits()
            jobs = Jobs(wh.home / "serve" / "jobs" / f"r{engine.own.replica}.sqlite", per_key, ttl_s)
        return cls(
            wh=wh,
            engine=engine,
            settings=settings,
            keys=keys,
            access=Access(keys, TokenVerifier.from_settings(process), Tenants(wh), limits),
            configs=ConfigStore(wh.home),
            metrics=metrics,
            hub=Hub(metrics, settings.ws_queue),
            jobs=jobs,
            shared=shared,
            figures=Figures(wh, engine),
            startup=startup,
            process=process,
        )

    def peer_client(self) -> httpx.AsyncClient:
        if self.peers is None:
            self.peers = httpx.AsyncClient(timeout=10.0)
        return self.peers
