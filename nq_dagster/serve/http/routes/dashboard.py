"""The dashboard: `GET /` a static page that asks for a key and talks to the API like any client, its script
and vendored chart library under `/static`, and `GET /reports/{source}.html` a source's validation report
(viewer)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.store import SOURCE_RE

STATIC = Path(__file__).resolve().parents[2] / "static"  # nq_dagster/serve/static


async def index(request: Request) -> Response:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def report(state: ServerState, request: Request, key: KeyRecord) -> Response:
    name = request.path_params["name"]
    source = name[:-5] if name.endswith(".html") else ""
    if not SOURCE_RE.match(source):
        raise ApiError(404, f"no report {name!r}: reports are <source>.html")
    path = state.wh.reports / f"{source}.html"
    if not path.is_file():
        raise ApiError(404, f"no validation report for {source!r} yet: run `nq run --source {source}`")
    return Response(path.read_bytes(), media_type="text/html; charset=utf-8")


def routes(state: ServerState) -> list[BaseRoute]:
    viewer_report = guarded(state.access, "viewer", partial(report, state))
    return [
        Route("/reports/{name}", viewer_report, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
