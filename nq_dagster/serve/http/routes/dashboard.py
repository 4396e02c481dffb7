"""The dashboard: `GET /` a static page that asks for a key and talks to the API like any client, its script
and vendored chart library under `/static`, and its upload form's `POST /api/v1/upload` (developer). The
reports it links to and the validation score's history are `routes/reports.py`'s."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.routes.upload import upload
from nq_dagster.serve.http.state import ServerState

STATIC = Path(__file__).resolve().parents[2] / "static"  # nq_dagster/serve/static


async def index(request: Request) -> Response:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def routes(state: ServerState) -> list[BaseRoute]:
    return [
        # the dashboard's upload form (developers and admins): the ingest rules of `nq ingest`
        Route("/api/v1/upload", guarded(state.access, "developer", partial(upload, state)), methods=["POST"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
