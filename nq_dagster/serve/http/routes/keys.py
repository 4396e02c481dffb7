"""API keys (admin): `GET /api/v1/keys` lists them (never a key or its hash), `POST /api/v1/keys` creates one
(the key shown once in the answer), `DELETE /api/v1/keys/{key_id}` revokes one."""

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


async def keys_list(state: ServerState, request: Request, key: KeyRecord) -> Response:
    return JSONResponse({"keys": [k.public() for k in state.keys.list()]})


async def keys_create(state: ServerState, request: Request, key: KeyRecord) -> Response:
    body: NewKey = parse(NewKey, await request.body())
    try:
        new, rec = state.keys.create(body.role, body.rate, body.burst, body.max_concurrent, body.name)
    except ValueError as exc:
        raise ApiError(422, str(exc), field="rate") from None
    return JSONResponse(
        {"key": new, **rec.public(), "note": "shown once: only its hash is stored"}, status_code=201
    )


async def keys_revoke(state: ServerState, request: Request, key: KeyRecord) -> Response:
    try:
        rec = state.keys.revoke(request.path_params["key_id"])
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
