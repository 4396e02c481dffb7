"""Batch jobs (developer): `POST /api/v1/process/batch` takes data points of many sources and answers 202 with
a job id; `GET /api/v1/jobs/{job_id}` gives the job's status and results (to the key that posted it, or an
admin). Jobs are kept in SQLite, or in the store the replicas share (`batchjobs.py`: a TTL, a per-key quota,
marked failed when a restart or a replica's death interrupts them). A job's points run in chunks of 256 at
low priority, so the key's realtime requests get in between (and other keys get their share:
engine/fair.py); each chunk is validated as ingest validates a file, a refused chunk is tried point by point
so that a bad point fails alone, with its error in the job. An allowed callback URL gets the finished job.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from functools import partial

import httpx
import pandas as pd
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.batchjobs import Job, QuotaFull
from nq_dagster.serve.http.bodies import BatchBody, JobRef, parse, parse_object
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.routes.predict import run_ticks
from nq_dagster.serve.http.startup import require_ready
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import DEFAULT_SCOPE, Scope
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.serve.shared import StoreUnavailable
from nq_dagster.store import STORED_SOURCE_RE, TENANT_SEP
from nq_dagster.store.names import stored_source

log = logging.getLogger("nq.serve")

CHUNK = 256  # points of a job per engine request


def owner_id(key: KeyRecord) -> str:
    """A job's owner: the key's id; `<tenant>~<id>` for a tenant's key (its admins read its jobs)."""
    return key.id if key.tenant is None else stored_source(key.tenant, key.id)


def may_read(job: Job, key: KeyRecord) -> bool:
    """The key that posted the job; an admin of its tenant; the platform's administrator."""
    if job.key_id == owner_id(key) or key.platform_admin:
        return True
    return (
        key.role == "admin"
        and key.tenant is not None
        and job.key_id.startswith(stored_source(key.tenant, ""))
    )


def tenant_rows(rows: list[tuple], scope: Scope) -> list[tuple]:
    """The points with their sources' stored names. A tenant's names are prefixed whatever they are (a name
    with `~` stays invalid, refused as a bad point); in the default namespace a `~` name (another namespace's)
    is refused whole."""
    if scope.platform:
        return rows
    if scope.tenant is None:
        for i, (src, _, _) in enumerate(rows):
            if isinstance(src, str) and TENANT_SEP in src:
                raise ApiError(
                    422,
                    f"data_points[{i}].source: source name {src!r} is not valid: use 1-64 letters, digits, "
                    "'_', '-' or '.'",
                    field=f"data_points[{i}].source",
                )
        return rows
    return [(stored_source(scope.tenant, src) if isinstance(src, str) else src, t, v) for src, t, v in rows]


async def batch(state: ServerState, request: Request, key: KeyRecord) -> Response:
    require_ready(state.startup)  # a job queued while the models load would fail every chunk
    raw = parse_object(await request.body())
    job_id = parse(JobRef, raw).job_id or uuid.uuid4().hex
    known = _get(state, job_id)
    if known is not None and not may_read(known, key):
        # another key's job: its summary is that key's alone (issue 26: a reused job_id read it)
        raise ApiError(409, f"job_id {job_id!r} is taken; choose another (or omit it)", field="job_id")
    if known is not None:
        return JSONResponse(known.public(), status_code=200)
    s = state.settings
    body: BatchBody = parse(BatchBody, raw, max_points=s.max_points, callback_hosts=s.callback_hosts)
    scope = Scope.of(key)
    rows = tenant_rows(body.ticks(), scope)
    own = state.engine.own
    foreign = sorted({src for src, _, _ in rows if STORED_SOURCE_RE.match(src) and not own.owns(src)})
    if foreign:
        raise ApiError(
            421,
            "data_points: sources served by other replicas: "
            + ", ".join(f"{scope.shown(src)} (replica {own.owner(src)})" for src in foreign[:20])
            + "; send each its own batch",
            field="data_points",
        )
    tenants = state.access.tenants
    if tenants is not None and scope.tenant is not None:
        await asyncio.to_thread(tenants.check_store, scope.tenant, None, len(rows))
    job = Job(job_id, len(rows), owner_id(key), body.callback_url)
    try:
        state.jobs.add(job)
    except QuotaFull as exc:
        raise ApiError(429, str(exc), headers={"Retry-After": "5"}) from None
    except StoreUnavailable as exc:
        raise ApiError(503, f"batch jobs not stored: {exc}", headers={"Retry-After": "5"}) from None
    except (OSError, sqlite3.Error) as exc:
        raise ApiError(
            503,
            f"batch jobs store not writable: {state.jobs.where}: {exc}; retry when the data directory is "
            "writable",
            headers={"Retry-After": "5"},
        ) from None
    asyncio.get_running_loop().create_task(run_job(state, job, rows, scope))
    return JSONResponse(
        {
            "job_id": job_id,
            "status": job.status,
            "points": job.points,
            "status_url": f"/api/v1/jobs/{job_id}",
        },
        status_code=202,
    )


def _ingest_order(rows: list[tuple]) -> list[int]:
    """The positions of the points sorted as ingest sorts (source, then time; unparseable times first, where
    the engine refuses them)."""
    order = pd.to_datetime(
        pd.Series([r[1] if isinstance(r[1], str) else None for r in rows], dtype=object),
        utc=True,
        errors="coerce",
        format="ISO8601",
    )
    return sorted(
        range(len(rows)),
        key=lambda i: (
            str(rows[i][0]),
            # seconds, not `.value` (nanoseconds): a year-9999 point overflowed it and stopped the job
            order.iloc[i].timestamp() if not pd.isna(order.iloc[i]) else 0.0,
            rows[i][1] if not isinstance(rows[i][1], str) else 0,
            i,
        ),
    )


async def _run_chunk(state: ServerState, job: Job, chunk: list[tuple], scope: Scope) -> list[dict]:
    """A chunk's records (as the job's key knows its sources); a refused chunk is tried point by point, so a
    bad point fails alone (its error names it) and the others are predicted."""
    label = f"job {job.id}: data_points"
    try:
        answers = await run_ticks(state, chunk, label, "low", None, job.key_id, scope)
    except ApiError as exc:
        if len(chunk) == 1:
            for message in exc.details or [exc.message]:
                job.error(message)
            return []
        out = []
        for point in chunk:
            out += await _run_chunk(state, job, [point], scope)
        return out
    if scope.tenant is not None and state.access.tenants is not None:
        state.access.tenants.accepted(scope.tenant, sum(1 for a in answers if not a.duplicate))
    return [{**scope.record(a.record), "duplicate": a.duplicate} for a in answers]


async def run_job(state: ServerState, job: Job, rows: list[tuple], scope: Scope = DEFAULT_SCOPE) -> None:
    """The job's points sorted as ingest sorts (source, then time), in chunks; then the callback. Whatever
    fails is recorded in the job, which always ends finished or failed."""
    job.status = "running"
    try:
        state.jobs.save(job)
        keyed = _ingest_order(rows)
        for start in range(0, len(keyed), CHUNK):
            chunk = [rows[i] for i in keyed[start : start + CHUNK]]
            try:
                records = await _run_chunk(state, job, chunk, scope)
            except Exception as exc:  # noqa: BLE001 - recorded in the job, the next chunk goes on
                log.exception("batch job %s: a chunk failed", job.id)
                job.error(f"points {start + 1}-{start + len(chunk)}: {type(exc).__name__}: {exc}")
                records = []
            job.predicted += len(records)
            job.duplicates += sum(1 for r in records if r.get("duplicate"))
            state.jobs.save(job, records)
        job.status = "done" if not job.errors else ("failed" if not job.predicted else "done_with_errors")
    except Exception as exc:  # noqa: BLE001 - never left running
        log.exception("batch job %s failed", job.id)
        job.error(f"the job stopped: {type(exc).__name__}: {exc}")
        job.status = "failed"
    job.finished_at = time.time()
    if job.callback_url:
        try:
            async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
                r = await client.post(job.callback_url, json=job.public(state.jobs.results(job.id)))
            job.callback = {"status_code": r.status_code}
        except httpx.HTTPError as exc:
            job.callback = {"error": str(exc)}
    try:
        state.jobs.save(job)
    except (OSError, sqlite3.Error, StoreUnavailable):
        log.exception("batch job %s: its end could not be stored (a restart marks it failed)", job.id)


def _get(state: ServerState, job_id: str) -> Job | None:
    try:
        return state.jobs.get(job_id)
    except StoreUnavailable as exc:
        raise ApiError(503, f"batch jobs not readable: {exc}", headers={"Retry-After": "5"}) from None


async def job_status(state: ServerState, request: Request, key: KeyRecord) -> Response:
    job = _get(state, request.path_params["job_id"])
    if job is None or not may_read(job, key):
        where = "in the shared store" if state.shared is not None else "on this replica"
        raise ApiError(404, f"no job {request.path_params['job_id']!r} of this key {where}")
    try:
        results = state.jobs.results(job.id)
    except StoreUnavailable as exc:
        raise ApiError(503, f"batch jobs not readable: {exc}", headers={"Retry-After": "5"}) from None
    return JSONResponse(job.public(results))


def routes(state: ServerState) -> list[BaseRoute]:
    dev = partial(guarded, state.access, "developer")
    return [
        Route("/api/v1/process/batch", dev(partial(batch, state)), methods=["POST"]),
        Route("/api/v1/jobs/{job_id}", dev(partial(job_status, state)), methods=["GET"]),
    ]
