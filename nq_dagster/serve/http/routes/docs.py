"""The API's own documentation: `GET /openapi.json` (the OpenAPI 3.1 document, generated once per app from the
models, see `openapi.py`) and `GET /docs` (Swagger UI from the vendored files under `/static/vendor`: no CDN,
so the docs work offline). Both open: the document describes the API, not its data."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nq_dagster.serve.http.openapi import document
from nq_dagster.serve.http.routes.dashboard import STATIC
from nq_dagster.serve.http.state import ServerState


def routes(state: ServerState, app_routes: list[BaseRoute]) -> list[BaseRoute]:
    """Takes the app's other routes: the document describes them and fails the app's creation when one is
    not described."""
    mine = [Route("/openapi.json", _none, methods=["GET"]), Route("/docs", _none, methods=["GET"])]
    body = json.dumps(document([*app_routes, *mine]), separators=(",", ":")).encode()
    page = (STATIC / "docs.html").read_bytes()

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    return [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"])]


async def _none(request: Request) -> Response:  # a placeholder while the document is built
    raise NotImplementedError
