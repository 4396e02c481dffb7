"""Validation figures for people (viewer): `GET /reports/{source}.html` a source's validation report at a
stable URL, its "served live" section computed at the request from what was served since; and
`GET /api/v1/validation/history` each source's validation score per model version over time (the dashboard's
score chart).

The report file is written by training (`validation.report`); what was served after it (by this server, other
replicas, the streaming job) is not in it. So the live section between the report's markers is replaced at
each request: every live prediction stored in `predictions` (the `serve-` and `stream-` parts) and those still
in this server's memory (not yet flushed), scored with the targets of the source's stored ticks and the ticks
in memory (`fusion.walkforward.make_targets`, the rule training's held-out rows are scored by) by
`validation.evaluate.evaluate_live`, the function the report itself uses. The figures are cached until a part
or the memory changes.

The key comes in the `Authorization` header or, where a browser link cannot send one, in the `nq_report_key`
cookie the dashboard sets (path /reports, SameSite=Strict: no other site's page can make the browser send it).
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import threading
from functools import partial

import pandas as pd
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from nq_dagster.config import load_config
from nq_dagster.serve.engine.records import CACHE_PER_SOURCE
from nq_dagster.serve.http.auth import guarded
from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.store import LIVE_PARTS, SOURCE_RE, STORED_SOURCE_RE

log = logging.getLogger("nq.serve")
REPORT_COOKIE = "nq_report_key"  # dashboard.js sets it
LIVE_COLUMNS = [
    "timestamp",
    "direction",
    "confidence",
    "time_horizon_ms",
    "processing_time_ms",
    "model_version",
]
# the section as reports before its markers wrote it: from its heading to the next one
OLD_LIVE = re.compile(r"<h2>Served live \(.*?(?=<h2>)", re.S)


class LiveFigures:
    """Each source's live figures (`evaluate_live`'s dict with `by_model_version`), recomputed only when the
    source's stored parts or the records in memory changed since the last request."""

    def __init__(self, state: ServerState):
        self.state = state
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, dict | None]] = {}

    def of(self, source: str) -> dict | None:
        """Blocking I/O: call it in a thread."""
        wh, eng = self.state.wh, self.state.engine
        tick_parts = wh.table_parts("raw_ticks", source)
        live_parts = [p for p in wh.table_parts("predictions", source) if p.stem.startswith(LIVE_PARTS)]
        memory = eng.recent(source, CACHE_PER_SOURCE)
        stamp = (
            tuple(map(str, tick_parts)),
            tuple(map(str, live_parts)),
            len(memory),
            memory[-1]["timestamp"] if memory else "",
        )
        with self._lock:
            hit = self._cache.get(source)
            if hit is not None and hit[0] == stamp:
                return hit[1]
        figures = self._compute(source, tick_parts, live_parts, memory)
        with self._lock:
            self._cache[source] = (stamp, figures)
        return figures

    def _compute(self, source: str, tick_parts: list, live_parts: list, memory: list[dict]) -> dict | None:
        from nq_dagster.fusion.walkforward import make_targets
        from nq_dagster.validation.evaluate import evaluate_live

        wh = self.state.wh
        frames = [wh.read_part(p, LIVE_COLUMNS).to_pandas() for p in live_parts]
        if memory:
            frames.append(pd.DataFrame([{c: r.get(c) for c in LIVE_COLUMNS} for r in memory]))
        if not frames:
            return None
        live = pd.concat(frames, ignore_index=True)
        live["timestamp"] = pd.to_datetime(live["timestamp"], utc=True)
        live = live.drop_duplicates("timestamp").sort_values("timestamp", ignore_index=True)
        live["processing_time_ms"] = pd.to_numeric(live["processing_time_ms"], errors="coerce")
        ticks = [wh.read_part(p, ["timestamp", "value"]).to_pandas() for p in tick_parts]
        if memory:  # ticks the server answered and has not written into raw_ticks yet
            mem = pd.DataFrame(
                {"timestamp": [r["timestamp"] for r in memory], "value": [r.get("value") for r in memory]}
            )
            ticks.append(mem.dropna())
        series = pd.concat(ticks, ignore_index=True)
        series["timestamp"] = pd.to_datetime(series["timestamp"], utc=True)
        series = series.drop_duplicates("timestamp").sort_values("timestamp", ignore_index=True)
        cfg = self.state.engine.model_config(source) or load_config(wh.home)
        targets = make_targets(
            series["value"].to_numpy(float), cfg.horizon, cfg.hold_band, cfg.feature_window
        )
        figures = evaluate_live(live, series["timestamp"], targets, cfg.horizon)
        if figures is None:
            return None
        rows = []
        for version, group in live.groupby("model_version", sort=False):
            f = evaluate_live(group.reset_index(drop=True), series["timestamp"], targets, cfg.horizon) or {}
            rows.append(
                {
                    "model_version": version,
                    "served": f.get("served", 0),
                    "realized": f.get("realized", 0),
                    "accuracy": f.get("accuracy"),
                    "mean_confidence": f.get("mean_confidence"),
                }
            )
        return {**figures, "by_model_version": rows}


def with_live_section(page: str, section: str) -> str:
    """The report's page with its live section replaced by `section` (the markers of
    `validation.report.live_section`, else the section as older reports wrote it, else added at the end)."""
    from nq_dagster.validation.report import LIVE_END, LIVE_START

    start = page.find(LIVE_START)
    if start >= 0:
        end = page.find(LIVE_END, start)
        if end >= 0:
            return page[:start] + section + page[end + len(LIVE_END) :]
    if OLD_LIVE.search(page):
        return OLD_LIVE.sub(lambda _: section, page, count=1)
    return page.replace("</body>", section + "</body>", 1)


def report_page(state: ServerState, live: LiveFigures, source: str) -> bytes:
    """The stored report with its live section as of now (blocking I/O: call it in a thread)."""
    from nq_dagster.validation.report import live_section

    path = state.wh.reports / f"{source}.html"
    if not path.is_file():
        raise ApiError(404, f"no validation report for {source!r} yet: run `nq run --source {source}`")
    page = path.read_text(encoding="utf-8")
    now = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        section = live_section(live.of(source), as_of=now)
    except Exception as exc:  # noqa: BLE001 - the report stays readable; the section says what failed
        log.warning("report %s: the live section could not be computed: %s", source, exc)
        why = html.escape(f"{type(exc).__name__}: {exc}")
        section = (
            "<section id='live'><h2>Served live</h2><p>The live figures could not be computed at this "
            f"request ({why}); the rest of the report is as training wrote it.</p></section>"
        )
    return with_live_section(page, section).encode()


async def report(state: ServerState, live: LiveFigures, request: Request, key: KeyRecord) -> Response:
    name = request.path_params["name"]
    source = name[:-5] if name.endswith(".html") else ""
    scope = Scope.of(key)
    if not (STORED_SOURCE_RE if scope.platform else SOURCE_RE).match(source):
        raise ApiError(404, f"no report {name!r}: reports are <source>.html")
    stored = scope.stored(source)  # a tenant's report is its own source's (tenants.py)
    try:
        body = await asyncio.to_thread(report_page, state, live, stored)
    except ApiError as exc:  # worded with the caller's names, never the stored one
        raise ApiError(exc.status, scope.words(exc.message)) from None
    # computed at each request: a cached copy would show an old live section
    return Response(body, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"})


def _report_endpoint(state: ServerState):
    """`report` for a viewer, whose key comes in the header, else in the report cookie."""
    by_header = guarded(state.access, "viewer", partial(report, state, LiveFigures(state)))

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


async def validation_history(state: ServerState, request: Request, key: KeyRecord) -> Response:
    from nq_dagster.validation.history import trend

    source = request.query_params.get("source")
    scope = Scope.of(key)
    sources = [scope.stored(source)] if source is not None else scope.visible(state.engine.sources())

    def read() -> dict:
        return {scope.shown(s): trend(state.wh, s) for s in sources}

    return JSONResponse(await asyncio.to_thread(read))


def routes(state: ServerState) -> list[BaseRoute]:
    return [
        Route("/reports/{name}", _report_endpoint(state), methods=["GET"]),
        Route(
            "/api/v1/validation/history",
            guarded(state.access, "viewer", partial(validation_history, state)),
            methods=["GET"],
        ),
    ]
