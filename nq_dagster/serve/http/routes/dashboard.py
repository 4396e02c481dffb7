"""The dashboard: `GET /` a static page that asks for a key and talks to the API like any client, its script
and vendored chart library under `/static`, and `GET /reports/{source}.html` a source's validation report
(viewer): a stable URL that a link, a bookmark or a new tab can open, with the key in the `Authorization`
header or, where a browser cannot send one, in the `nq_report_key` cookie that the dashboard sets (path
/reports, SameSite=Strict: no other site's page can make the browser send it)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.routes.upload import upload
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.store import SOURCE_RE, STORED_SOURCE_RE

STATIC = Path(__file__).resolve().parents[2] / "static"  # nq_dagster/serve/static
REPORT_COOKIE = "nq_report_key"  # dashboard.js sets it


async def index(request: Request) -> Response:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def report(state: ServerState, request: Request, key: KeyRecord) -> Response:
    name = request.path_params["name"]
    source = name[:-5] if name.endswith(".html") else ""
    scope = Scope.of(key)
    if not (STORED_SOURCE_RE if scope.platform else SOURCE_RE).match(source):
        raise ApiError(404, f"no report {name!r}: reports are <source>.html")
    stored = scope.stored(source)  # a tenant's report is its own source's (tenants.py)
    path = state.wh.reports / f"{stored}.html"
    if not path.is_file():
        raise ApiError(404, f"no validation report for {source!r} yet: run `nq run --source {stored}`")
    return Response(path.read_bytes(), media_type="text/html; charset=utf-8")


def _report_endpoint(state: ServerState):
    """`report` for a viewer, whose key comes in the header, else in the report cookie."""
    by_header = guarded(state.access, "viewer", partial(report, state))

    async def endpoint(request: Request) -> Response:
        cookie = request.cookies.get(REPORT_COOKIE, "").strip()
        if cookie and not request.headers.get("authorization"):
            # the same authentication as a header (401, 403, 429 alike), from the cookie's key
            request.scope["headers"] = [
                *request.scope["headers"],
                (b"authorization", f"Bearer {cookie}".encode("latin-1", "replace")),
            ]
            request = Request(request.scope, request.receive)
        return await by_header(request)

    return endpoint


def routes(state: ServerState) -> list[BaseRoute]:
    viewer_report = _report_endpoint(state)
    return [
        Route("/reports/{name}", viewer_report, methods=["GET"]),
        # the dashboard's upload form (developers and admins): the ingest rules of `nq ingest`
        Route("/api/v1/upload", guarded(state.access, "developer", partial(upload, state)), methods=["POST"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
