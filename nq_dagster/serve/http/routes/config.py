"""The versioned pipeline config: `GET /api/v1/config/{service}` (viewer; `?version=N` adds that version),
`PUT /api/v1/config/{service}` (admin: the changes, validated by the config store, active at the next
training). Services: neuromorphic, quantum, fusion."""

from __future__ import annotations

from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.config import SERVICES, ConfigError
from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.bodies import parse_object
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.keys import KeyRecord

PATH = "/api/v1/config/{service}"


def _config_error(exc: ConfigError) -> ApiError:
    return ApiError(404 if exc.field == "service" else 422, str(exc), field=exc.field)


async def config_get(state: ServerState, request: Request, key: KeyRecord) -> Response:
    service = request.path_params["service"]
    try:
        doc = state.configs.describe(service)
        if "version" in request.query_params:
            v = state.configs.version(request.query_params["version"])
            doc["requested_version"] = {**v, "config": {k: v["config"][k] for k in SERVICES[service]}}
    except ConfigError as exc:
        raise _config_error(exc) from None
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0]), field="version") from None
    return JSONResponse(doc)


async def config_put(state: ServerState, request: Request, key: KeyRecord) -> Response:
    """The body is the changes, or `{"values": {...changes}}`. The pipeline's configuration is the platform's:
    a tenant's admin may read it, not change it."""
    if key.tenant is not None:
        raise ApiError(
            403,
            f"the pipeline configuration is the platform's: an admin of tenant {key.tenant!r} may read it, "
            "not change it (ask the platform's administrator)",
        )
    body = parse_object(await request.body())
    changes = body["values"] if isinstance(body.get("values"), dict) else body
    author = f"key {key.id}" + (f" ({key.name})" if key.name else "")
    try:
        entry = state.configs.update(request.path_params["service"], changes, author=author)
    except ConfigError as exc:
        raise _config_error(exc) from None
    shown = ("number", "hash", "service", "author", "created_at", "changes")
    return JSONResponse({k: entry[k] for k in shown} | {"note": "active now: the next training uses it"})


def routes(state: ServerState) -> list[BaseRoute]:
    return [
        Route(PATH, guarded(state.access, "viewer", partial(config_get, state)), methods=["GET"]),
        Route(PATH, guarded(state.access, "admin", partial(config_put, state)), methods=["PUT"]),
    ]
