"""`POST /api/v1/process/realtime` (developer): one tick, or several, of one source -> its prediction(s).

A source another replica owns is forwarded to it (`X-NQ-Replica` names the replica that answered), or refused
with 421 and its owner when no peers are configured. The common answer, one new tick with every result, is the
record's JSON as the engine encoded it for the log, with `duplicate` appended: no second encoding.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.engine import Answer, JournalUnavailable, NoModel, NotOwner, Rejected
from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.bodies import RealtimeBody, parse
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.startup import require_ready
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import DEFAULT_SCOPE, Scope
from nq_dagster.serve.keys import KeyRecord

REALTIME = "/api/v1/process/realtime"


async def run_ticks(
    state: ServerState,
    rows: list[tuple],
    label: str,
    priority: str,
    received: float | None,
    key: str,
    scope: Scope = DEFAULT_SCOPE,
) -> list[Answer]:
    """The engine's answers to ticks [(source, timestamp, value)] (stored source names) of the key with id
    `key`; its refusals as API errors, worded with the names `scope` knows its sources by."""
    require_ready(state.startup)
    try:
        return await asyncio.wrap_future(
            state.engine.submit(rows, label, priority, received=received, key=key)
        )
    except Rejected as exc:
        messages = [scope.words(m) for m in exc.messages]
        raise ApiError(422, messages[0], field=exc.field, details=messages) from None
    except NoModel as exc:
        raise ApiError(409, scope.words(str(exc)), field="source") from None
    except NotOwner as exc:
        raise ApiError(421, scope.words(str(exc)), field="source") from None
    except JournalUnavailable as exc:  # fail closed: not stored, so not acknowledged (engine/ticklog.py)
        raise ApiError(503, str(exc), headers={"Retry-After": "1"}) from None


async def realtime(state: ServerState, request: Request, key: KeyRecord) -> Response:
    raw = await request.body()
    body: RealtimeBody = parse(RealtimeBody, raw, max_values=state.settings.max_values)
    if not request.scope["state"].get("forwarded"):  # else charged by the replica that forwarded it
        state.access.charge(key, len(body.data))
    if key.tenant is not None:  # a tenant's source: stored as `<tenant>~<name>` (tenants.py)
        return await realtime_tenant(state, request, key, body, raw)
    if not state.engine.own.owns(body.source):
        return await forward(state, request, body.source, raw, key)
    answers = await run_ticks(
        state,
        body.ticks(),
        f"POST {REALTIME}",
        body.config.priority,
        request.scope["state"]["received"],
        key.id,
    )
    return _answer(body, answers, DEFAULT_SCOPE)


async def realtime_tenant(
    state: ServerState, request: Request, key: KeyRecord, body: RealtimeBody, raw: bytes
) -> Response:
    """`realtime` for a tenant's key: its quota of stored rows; its names mapped to the stored ones, back."""
    scope, tenants = Scope.of(key), state.access.tenants
    source = scope.stored(body.source)
    if not state.engine.own.owns(source):
        return await forward(state, request, source, raw, key)
    n = len(body.data)
    if tenants is not None:
        if tenants.fresh(key.tenant):
            tenants.check_store(key.tenant, rows=n)
        else:  # reads the parts' footers: off the event loop
            await asyncio.to_thread(tenants.check_store, key.tenant, None, n)
    rows = [(source, t, v) for _, t, v in body.ticks()]
    answers = await run_ticks(
        state,
        rows,
        f"POST {REALTIME}",
        body.config.priority,
        request.scope["state"]["received"],
        key.id,
        scope,
    )
    if tenants is not None:
        tenants.accepted(key.tenant, sum(1 for a in answers if not a.duplicate))
    return _answer(body, answers, scope)


def _answer(body: RealtimeBody, answers: list[Answer], scope: Scope) -> Response:
    """The answer to a realtime request: its records as the caller knows its sources."""
    omitted = body.omitted()
    if not omitted:  # the records' JSON as the engine encoded it for the log, `duplicate` appended
        parts = [_with_duplicate(a, scope) for a in answers]
        if len(parts) == 1:  # the common case
            return Response(parts[0], media_type="application/json")
        # joined, not encoded again: a 1,000-record answer encoded here held the event loop (other keys'
        # requests) for tens of milliseconds
        source = json.dumps(body.source)
        return Response(
            f'{{"source": {source}, "predictions": [{", ".join(parts)}]}}', media_type="application/json"
        )
    out = [
        {**{k: v for k, v in scope.record(a.record).items() if k not in omitted}, "duplicate": a.duplicate}
        for a in answers
    ]
    if omitted:
        for r in out:
            r["omitted"] = omitted  # left out of the answer; the served model is the trained fused model
    return JSONResponse(out[0] if len(out) == 1 else {"source": body.source, "predictions": out})


def _with_duplicate(a: Answer, scope: Scope) -> str:
    text = a.text if a.text is not None else json.dumps(a.record, allow_nan=False)
    text = scope.record_text(text, a.record["source"])
    return f'{text[:-1]}, "duplicate": {json.dumps(a.duplicate)}}}'


async def forward(state: ServerState, request: Request, source: str, raw: bytes, key: KeyRecord) -> Response:
    """A source another replica owns: pass the request to it, or say who owns it (421)."""
    own = state.engine.own
    owner = own.owner(source)
    if owner is None:  # leased ownership: the partition's lease expired and no replica has claimed it yet
        raise ApiError(
            503,
            f"source {source!r}: its partition is being taken over by another replica; retry shortly",
            headers={"Retry-After": "1"},
        )
    if not own.peers or owner not in (own.peers if isinstance(own.peers, dict) else range(len(own.peers))):
        raise ApiError(
            421,
            f"source {source!r} is served by replica {owner} of {own.replicas}; send it there",
            field="source",
            headers={"X-NQ-Owner": str(owner)},
        )
    if request.headers.get("x-nq-forwarded"):
        raise ApiError(
            421,
            f"source {source!r}: forwarded to a replica that does not own it (replica count "
            "differs between replicas?)",
            field="source",
        )
    hdr = {
        "authorization": request.headers.get("authorization", ""),
        "content-type": "application/json",
        "x-request-id": request.scope["state"]["request_id"],
        "x-nq-forwarded": state.access.forward_mark(key, request.scope["state"]["request_id"]),
    }
    try:
        r = await state.peer_client().post(
            f"{own.peers[owner].rstrip('/')}{request.url.path}", content=raw, headers=hdr
        )
    except httpx.HTTPError as exc:
        raise ApiError(
            503,
            f"the owner of {source!r} (replica {owner}, {own.peers[owner]}) is unreachable: {exc}",
            headers={"Retry-After": "1"},
        ) from None
    return Response(
        r.content,
        status_code=r.status_code,
        media_type="application/json",
        headers={"X-NQ-Replica": str(owner)},
    )


def routes(state: ServerState) -> list[BaseRoute]:
    return [Route(REALTIME, guarded(state.access, "developer", partial(realtime, state)), methods=["POST"])]
