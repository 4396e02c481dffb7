"""API keys (admin): `GET /api/v1/keys` lists them (never a key or its hash), `POST /api/v1/keys` creates one
(the key shown once in the answer), `DELETE /api/v1/keys/{key_id}` revokes one. A tenant's admin administers
its tenant's keys only (lists them, creates keys of its tenant, revokes them; another tenant's key is 404 to
it); the platform's administrator (an admin without a tenant) every key, and creates keys of any tenant."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.bodies import NewKey, parse
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.keys import KeyRecord


def administers(admin: KeyRecord, rec: KeyRecord) -> bool:
    return admin.platform_admin or rec.tenant == admin.tenant


async def keys_list(state: ServerState, request: Request, key: KeyRecord) -> Response:
    return JSONResponse({"keys": [k.public() for k in state.keys.list() if administers(key, k)]})


async def keys_create(state: ServerState, request: Request, key: KeyRecord) -> Response:
    body: NewKey = parse(NewKey, await request.body())
    tenant = body.tenant if key.platform_admin else key.tenant
    if body.tenant is not None and body.tenant != tenant:
        raise ApiError(
            403,
            f"tenant: this admin key administers tenant {key.tenant!r} only; it may not create keys of "
            f"{body.tenant!r}",
            field="tenant",
        )
    try:
        new, rec = state.keys.create(
            body.role, body.rate, body.burst, body.max_concurrent, body.name, tenant=tenant
        )
    except ValueError as exc:
        raise ApiError(422, str(exc), field="rate") from None
    return JSONResponse(
        {"key": new, **rec.public(), "note": "shown once: only its hash is stored"}, status_code=201
    )


async def keys_revoke(state: ServerState, request: Request, key: KeyRecord) -> Response:
    kid = request.path_params["key_id"]
    known = next((k for k in state.keys.list() if k.id == kid), None)
    if known is not None and not administers(key, known):  # as unknown: another tenant's ids are not told
        raise ApiError(404, f"no key with id {kid!r}")
    try:
        rec = state.keys.revoke(kid)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None
    return JSONResponse(rec.public())


def routes(state: ServerState) -> list[BaseRoute]:
    admin = partial(guarded, state.access, "admin")
    return [
        Route("/api/v1/keys", admin(partial(keys_list, state)), methods=["GET"]),
        Route("/api/v1/keys", admin(partial(keys_create, state)), methods=["POST"]),
        Route("/api/v1/keys/{key_id}", admin(partial(keys_revoke, state)), methods=["DELETE"]),
    ]
