"""Batch jobs (developer): `POST /api/v1/process/batch` takes data points of many sources and answers 202 with
a job id; `GET /api/v1/jobs/{job_id}` gives the job's status and results (to the key that posted it, or an
admin). A job's points run in chunks of 256 at low priority, so realtime requests get in between; each chunk
is validated as ingest validates a file, and a refused chunk's errors go into the job. An allowed callback URL
gets the finished job."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial

import httpx
import pandas as pd
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.batchjobs import Job
from nq_dagster.serve.http.bodies import BatchBody, JobRef, parse, parse_object
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.routes.predict import run_ticks
from nq_dagster.serve.http.startup import require_ready
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.store import SOURCE_RE

CHUNK = 256  # points of a job per engine request


async def batch(state: ServerState, request: Request, key: KeyRecord) -> Response:
    require_ready(state.startup)  # a job queued while the models load would fail every chunk
    raw = parse_object(await request.body())
    job_id = parse(JobRef, raw).job_id or uuid.uuid4().hex
    known = state.jobs.get(job_id)
    if known is not None and known.key_id != key.id and key.role != "admin":
        # another key's job: its summary is that key's alone (issue 26: a reused job_id read it)
        raise ApiError(409, f"job_id {job_id!r} is taken; choose another (or omit it)", field="job_id")
    if known is not None:
        return JSONResponse({k: v for k, v in known.public().items() if k != "results"}, status_code=200)
    s = state.settings
    body: BatchBody = parse(BatchBody, raw, max_points=s.max_points, callback_hosts=s.callback_hosts)
    rows = body.ticks()
    own = state.engine.own
    foreign = sorted({src for src, _, _ in rows if SOURCE_RE.match(src) and not own.owns(src)})
    if foreign:
        raise ApiError(
            421,
            "data_points: sources served by other replicas: "
            + ", ".join(f"{src} (replica {own.owner(src)})" for src in foreign[:20])
            + "; send each its own batch",
            field="data_points",
        )
    job = Job(job_id, len(rows), key.id, body.callback_url)
    state.jobs.add(job)
    asyncio.get_running_loop().create_task(run_job(state, job, rows))
    return JSONResponse(
        {
            "job_id": job_id,
            "status": job.status,
            "points": job.points,
            "status_url": f"/api/v1/jobs/{job_id}",
        },
        status_code=202,
    )


async def run_job(state: ServerState, job: Job, rows: list[tuple]) -> None:
    """The job's points sorted as ingest sorts (source, then time), in chunks; then the callback."""
    job.status = "running"
    order = pd.to_datetime(
        pd.Series([r[1] if isinstance(r[1], str) else None for r in rows]),
        utc=True,
        errors="coerce",
        format="ISO8601",
    )
    keyed = sorted(
        range(len(rows)),
        key=lambda i: (
            str(rows[i][0]),
            order.iloc[i].value if not pd.isna(order.iloc[i]) else 0,
            rows[i][1] if not isinstance(rows[i][1], str) else 0,
            i,
        ),
    )
    for start in range(0, len(keyed), CHUNK):
        chunk = [rows[i] for i in keyed[start : start + CHUNK]]
        try:
            answers = await run_ticks(state, chunk, f"job {job.id}: data_points", "low", None)
            job.results += [{**a.record, "duplicate": a.duplicate} for a in answers]
        except ApiError as exc:
            job.errors += exc.details or [exc.message]
        except Exception as exc:  # noqa: BLE001 - recorded in the job
            job.errors.append(f"{type(exc).__name__}: {exc}")
    job.status = "done" if not job.errors else ("failed" if not job.results else "done_with_errors")
    job.finished_at = time.time()
    if job.callback_url:
        try:
            async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
                r = await client.post(job.callback_url, json=job.public())
            job.callback = {"status_code": r.status_code}
        except httpx.HTTPError as exc:
            job.callback = {"error": str(exc)}


async def job_status(state: ServerState, request: Request, key: KeyRecord) -> Response:
    job = state.jobs.get(request.path_params["job_id"])
    if job is None or (job.key_id != key.id and key.role != "admin"):
        raise ApiError(404, f"no job {request.path_params['job_id']!r} of this key on this replica")
    return JSONResponse(job.public())


def routes(state: ServerState) -> list[BaseRoute]:
    dev = partial(guarded, state.access, "developer")
    return [
        Route("/api/v1/process/batch", dev(partial(batch, state)), methods=["POST"]),
        Route("/api/v1/jobs/{job_id}", dev(partial(job_status, state)), methods=["GET"]),
    ]
