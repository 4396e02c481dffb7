"""`POST /api/v1/upload` (developer): a CSV / JSON-lines / Parquet file sent from the dashboard, ingested by
the same rules and the same `Ingestor` as `nq ingest` and the landing zone, with the row-level reasons in the
answer.

The body is the file's bytes (within the server's body limit); the query names the `source` (required: a
file name typed in a browser is no source name), the `filename` (its suffix says the format; default
`upload.csv`) and `skip_bad_rows`. A file with a bad row is refused whole (status `quarantined`), as
`nq ingest` does, unless `skip_bad_rows`; either way the answer lists each bad row with its column, problem,
value and fix. Rows stored for a source this server serves are predicted by it (it watches `raw_ticks`)."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nq_dagster.serve.http.errors import ApiError
from nq_dagster.serve.http.state import ServerState
from nq_dagster.serve.http.tenants import Scope
from nq_dagster.serve.keys import KeyRecord

BAD_ROWS_SHOWN = 100  # the answer lists this many bad rows at most (all are in the ingest log's reason file)
SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".parquet")


def _ingest(
    state: ServerState, data: bytes, source: str, filename: str, skip_bad_rows: bool, scope: Scope
) -> dict:
    """Write the bytes to a file of the data directory, ingest it, remove it; the answer as JSON. `source`:
    the stored name; a tenant's quotas of sources and stored rows are checked first (403 naming the quota)."""
    tenants = state.access.tenants
    if tenants is not None:
        tenants.check_store(scope.tenant, source)
    from nq_dagster.config import load_config, rows_needed
    from nq_dagster.ingest import Ingestor

    wh = state.wh
    folder = Path(wh.home) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex[:12]}-{filename}"
    path.write_bytes(data)
    try:
        r = Ingestor(wh).ingest_file(path, source=source, skip_bad_rows=skip_bad_rows)
    finally:
        path.unlink(missing_ok=True)
        if tenants is not None:
            tenants.forget(scope.tenant)
    need, rows = rows_needed(load_config(wh.home)), wh.stored_rows("raw_ticks", source)
    return {
        "file": filename,
        "status": r.status,
        "sources": {scope.shown(s): n for s, n in r.sources.items()},
        "rows_accepted": r.rows_accepted,
        "reason": scope.words(r.reason) if r.reason else r.reason,
        "notes": [scope.words(n) for n in r.notes],
        "bad_rows_total": max(r.bad_count, len(r.bad_rows)),  # exact: the list is capped
        "bad_rows": [
            {"row": b.row, "column": b.column, "problem": b.problem, "value": b.value, "fix": b.fix}
            for b in r.bad_rows[:BAD_ROWS_SHOWN]
        ],
        "stored_rows": rows,
        "rows_needed_to_train": need,
    }


async def upload(state: ServerState, request: Request, key: KeyRecord) -> Response:
    from nq_dagster.store import SOURCE_RE

    q = request.query_params
    source = q.get("source", "")
    if not SOURCE_RE.match(source):
        raise ApiError(422, "source: a source name (letters, digits, _ and -) is required", field="source")
    scope = Scope.of(key)
    source = scope.stored(source)
    filename = Path(q.get("filename") or "upload.csv").name
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[-80:] or "upload.csv"
    if not filename.lower().endswith(SUFFIXES):
        raise ApiError(
            422, f"filename: {filename!r} is not one of {', '.join(SUFFIXES)} files", field="filename"
        )
    data = await request.body()
    if not data:
        raise ApiError(422, "the body is empty: send the file's bytes", field="body")
    skip = q.get("skip_bad_rows", "false").lower() in ("1", "true", "yes", "on")
    answer = await asyncio.to_thread(_ingest, state, data, source, filename, skip, scope)
    # 200 whatever the rules decided: the request was served; `status` says what became of the file
    return JSONResponse(answer)
