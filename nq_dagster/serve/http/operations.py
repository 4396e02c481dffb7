"""The table the OpenAPI document (`openapi.py`) is built from: per route its method and path, summary, role,
parameters, request body model and answers, and an example message for each error it can give."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from nq_dagster.serve.http import schemas as s
from nq_dagster.serve.http.bodies import BatchBody, NewKey, RealtimeBody

ROLE_NOTE = {
    None: "open: no key needed",
    "viewer": "viewer key",
    "developer": "developer key",
    "admin": "admin",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" or "path"
    schema: dict
    description: str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    role: str | None  # None: open to anyone
    ok: dict[int, tuple[type[BaseModel] | None, str]]  # status -> (model, what it means)
    description: str = ""
    body: type[BaseModel] | None = None
    body_example: dict | None = None
    params: tuple[Param, ...] = ()
    errors: dict[int, str] = field(default_factory=dict)  # status -> an example message
    media: str = "application/json"  # of the success answers


def error_example(message: str) -> dict:
    return {"error": {"code": 0, "message": message}, "request_id": "4f1c2a9b7d3e000000000001"}


# a real answer of the test server (tests/serving.py's trained source), rounded
RECORD_EXAMPLE = {
    "prediction_id": "92434a66-2101-545f-954f-c4c5d156deb6",
    "source": "market_A",
    "timestamp": "2026-01-05T10:00:00+00:00",
    "direction": "up",
    "confidence": 0.533736,
    "probabilities": {"down": 0.415857, "hold": 0.050408, "up": 0.533736},
    "magnitude": 0.004242,
    "predicted_change": -0.004242,
    "time_horizon_ms": 60000.0,
    "processing_time_ms": 3.417197,
    "model_version": "20edf19590cf-20261202T152132",
    "config_version": "20edf19590cf",
    "train_end": "2026-01-05T07:29:00+00:00",
    "neuromorphic_results": {
        "patterns": {
            "synchronous": 0.1702,
            "travelling_wave": 0.0967,
            "standing_wave": 0.0646,
            "emergent": 0.1548,
            "rhythmic": 0.0,
            "sparse": 0.8849,
            "burst": 0.1488,
            "chaotic": 0.9714,
        },
        "spike_analysis": {"spike_rate": 0.010833},
        "reservoir_state": {"mean": 0.01651, "norm": 2.576557},
    },
    "quantum_results": {
        "energy": -16.380126,
        "phase_coherence": 0.785843,
        "convergence": {
            "converged": False,
            "iterations": 50,
            "annealing_success_probability": 0.002188,
            "method": "state-vector (exact ground state)",
        },
    },
    "calibration": {
        "confidence_bin": [0.5, 0.6],
        "predictions": 143,
        "observed_accuracy": 0.398601,
        "note": "walk-forward predictions of this source in this confidence bin, realized outcomes",
    },
    "hold_band": 0.037474,
    "interval_80": [-0.061, 0.058],
    "interval_95": [-0.094, 0.091],
    "value": 80.692562,
    "duplicate": False,
}
TICK_EXAMPLE = {"source": "market_A", "data": [101.25], "timestamp": "2026-12-02T15:20:00Z"}
SOURCE_Q = Param("source", "query", {"type": "string"}, "one source (default: every source served)")
COMMON_ERRORS = {
    401: "missing API key: send `Authorization: Bearer <key>` (create one with `nq keys create`)",
    403: "this key's role 'viewer' may not do this: it needs 'developer' or above",
    429: "rate limit of 600/min (burst 50) reached; retry in 0.10 s",
}
BODY_ERRORS = {
    413: "data: 5000 values, at most 1000 per request; use /api/v1/process/batch",
    422: "data[1]: expected a number, got str 'x'",
}
SERVICE = Param(
    "service", "path", {"type": "string", "enum": ["neuromorphic", "quantum", "fusion"]}, "the config's part"
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/api/v1/process/realtime",
        "Predict from one source's new tick(s)",
        "predictions",
        "developer",
        {200: (s.PredictionRecord, "one value: its record; several: `PredictionList`")},
        "Each value is validated by the ingest rules, stored exactly once (a tick posted again answers its "
        "stored record with `duplicate: true`) and advanced through the one prediction path. A source "
        "another replica owns is forwarded to it, or refused with 421 naming its owner.",
        body=RealtimeBody,
        body_example=TICK_EXAMPLE,
        errors={
            **BODY_ERRORS,
            409: "no trained model for source 'market_A' yet: run `nq run --source market_A`",
            421: "source 'market_A' is served by replica 1 of 2; send it there",
            503: "the server is still loading its models (2 of 6 loaded); retry shortly",
        },
    ),
    Operation(
        "POST",
        "/api/v1/process/batch",
        "Queue a batch job over many sources",
        "predictions",
        "developer",
        {202: (s.BatchAccepted, "queued"), 200: (s.BatchAccepted, "a job with this job_id exists already")},
        "The points run in chunks at low priority, so realtime requests get in between; read the job at "
        "`status_url`. A `callback_url` on the server's allow-list gets the finished job.",
        body=BatchBody,
        body_example={
            "data_points": [{"source": "market_A", "timestamp": "2026-12-02T15:20:00Z", "value": 101.25}]
        },
        errors={
            **BODY_ERRORS,
            409: "job_id 'nightly' is taken; choose another (or omit it)",
            421: "data_points: sources served by other replicas: market_B (replica 1); send each its own "
            "batch",
            503: "the server is still loading its models (2 of 6 loaded); retry shortly",
        },
    ),
    Operation(
        "GET",
        "/api/v1/jobs/{job_id}",
        "A batch job's status and results",
        "predictions",
        "developer",
        {200: (s.Job, "the job (to the key that posted it, or an admin)")},
        params=(Param("job_id", "path", {"type": "string"}, "the id the batch answer gave", True),),
        errors={404: "no job 'nightly' of this key on this replica"},
    ),
    Operation(
        "GET",
        "/api/v1/predictions",
        "The latest predictions this replica served",
        "predictions",
        "viewer",
        {200: (s.PredictionsBySource, "per source, oldest first")},
        params=(
            SOURCE_Q,
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "per source"),
        ),
        errors={422: "limit: an integer (or `source`: a name that is not valid, e.g. with `~`)"},
    ),
    Operation(
        "GET",
        "/api/v1/outcomes",
        "Realized outcomes of the predictions served",
        "predictions",
        "viewer",
        {200: (s.OutcomesBySource, "per source, oldest first (the last 500)")},
        params=(SOURCE_Q,),
        errors={422: "source: source name 'beta~x' is not valid: use 1-64 letters, digits, '_', '-' or '.'"},
    ),
    Operation(
        "GET",
        "/api/v1/models",
        "Each owned source's model and whether it is loaded",
        "models",
        "viewer",
        {200: (s.Models, "per source its model (status loaded, loading or failed); the portfolio")},
    ),
    Operation(
        "GET",
        "/api/v1/validation/history",
        "Each source's validation score per model version, over time",
        "models",
        "viewer",
        {200: (s.ValidationHistory, "per source, oldest first: one point per trained model version")},
        description="The figures of each model version's validation report (score, accuracy, held-out "
        "predictions, verdict) and the promotion gate's decision on it: the dashboard's score trend.",
        params=(SOURCE_Q,),
        errors={422: "source 'a b': 1-64 letters, digits, '_', '-' or '.'"},
    ),
    Operation(
        "GET",
        "/api/v1/ping",
        "An authenticated no-op",
        "health",
        "viewer",
        {200: (s.Ping, "the key is valid")},
    ),
    Operation(
        "GET",
        "/api/v1/status",
        "Overall health; components and figures with a viewer key",
        "health",
        None,
        {200: (s.Status, "healthy or degraded (`StatusPublic` without a key)")},
        "Without a key: `{status, detail}`. With a viewer key: the engine, the storage and each model.",
        errors={401: "invalid or revoked API key", 503: "down"},
    ),
    Operation(
        "GET",
        "/livez",
        "Liveness: the process answers",
        "health",
        None,
        {200: (s.Live, "alive")},
        "For an orchestrator's liveness probe: no I/O, answers while the models load; 503 when the engine "
        "failed to start or its threads stopped.",
        errors={503: "dead"},
    ),
    Operation(
        "GET",
        "/readyz",
        "Readiness: models of the owned sources loaded, storage writable",
        "health",
        None,
        {200: (s.Ready, "ready")},
        "For a readiness probe and load balancers: 503 with what is missing while the models load or when "
        "storage is not writable. A model that failed to load is listed but does not hold readiness back.",
        errors={503: "not ready"},
    ),
    Operation(
        "GET",
        "/api/v1/metrics",
        "The metrics document: latency percentiles, rates, validation and live accuracy",
        "metrics",
        "viewer",
        {200: (s.MetricsDocument, "every figure computed from served requests and realized outcomes")},
    ),
    Operation(
        "GET",
        "/metrics",
        "Prometheus exposition",
        "metrics",
        "viewer",
        {200: (None, "text exposition format 0.0.4")},
        "Readable without a key when NQ_SERVE_METRICS_OPEN is set (a scrape inside the cluster).",
        media="text/plain",
    ),
    Operation(
        "GET",
        "/api/v1/config/{service}",
        "A part of the versioned pipeline config",
        "config",
        "viewer",
        {200: (s.ConfigDocument, "the active values and the history")},
        params=(SERVICE, Param("version", "query", {"type": "string"}, "also show this version")),
        errors={404: "'x' is not one of ['neuromorphic', 'quantum', 'fusion']"},
    ),
    Operation(
        "PUT",
        "/api/v1/config/{service}",
        "Change the pipeline config (active at the next training)",
        "config",
        "admin",
        {200: (s.ConfigUpdated, "the new version")},
        'The body is the changes (`{"reservoir_size": 400}`), or `{"values": {...}}`.',
        body_example={"reservoir_size": 400},
        params=(SERVICE,),
        errors={
            404: "'x' is not one of ['neuromorphic', 'quantum', 'fusion']",
            413: "request body of 2000000 bytes is over the limit of 1048576",
            422: "reservoir_size: expected an integer between 10 and 20000",
        },
    ),
    Operation(
        "GET",
        "/api/v1/keys",
        "List API keys (never a key itself)",
        "keys",
        "admin",
        {200: (s.KeyList, "keys")},
    ),
    Operation(
        "POST",
        "/api/v1/keys",
        "Create an API key (shown once)",
        "keys",
        "admin",
        {201: (s.NewKeyAnswer, "the new key")},
        body=NewKey,
        body_example={"role": "developer", "rate": "600/min", "name": "ingest-bot"},
        errors=BODY_ERRORS,
    ),
    Operation(
        "DELETE",
        "/api/v1/keys/{key_id}",
        "Revoke an API key",
        "keys",
        "admin",
        {200: (s.KeyInfo, "the revoked key")},
        params=(Param("key_id", "path", {"type": "string"}, "the key's id", True),),
        errors={404: "no key 'abc123'"},
    ),
    Operation(
        "GET",
        "/reports/{name}",
        "A source's validation report (HTML)",
        "dashboard",
        "viewer",
        {200: (None, "the report")},
        description="A stable URL: the key in the `Authorization` header or, from a browser link, in the "
        "`nq_report_key` cookie the dashboard sets (path /reports, SameSite=Strict). Its section on what "
        "was served live is computed at the request (every live prediction stored and those in the "
        "server's memory, scored on the outcomes realized since), the rest is as training wrote it.",
        params=(Param("name", "path", {"type": "string"}, "`<source>.html`", True),),
        errors={404: "no validation report for 'market_A' yet: run `nq run --source market_A`"},
        media="text/html",
    ),
    Operation(
        "POST",
        "/api/v1/upload",
        "Ingest a file (the dashboard's upload)",
        "dashboard",
        "developer",
        {
            200: (
                s.UploadAnswer,
                "what the ingest rules did with the file (status `quarantined`: nothing stored)",
            )
        },
        description="The body is the file's bytes (CSV, JSON lines or Parquet, within the body limit), "
        "ingested by the rules of `nq ingest`; each bad row listed with its column, problem, value and fix.",
        params=(
            Param("source", "query", {"type": "string"}, "the source the rows are stored under", True),
            Param("filename", "query", {"type": "string"}, "its suffix says the format (default upload.csv)"),
            Param(
                "skip_bad_rows",
                "query",
                {"type": "boolean"},
                "store the good rows (default: refuse the file)",
            ),
        ),
        errors={
            413: "request body of 2000000 bytes is over the limit of 1048576",
            422: "source: a source name (letters, digits, _ and -) is required",
        },
    ),
    Operation(
        "GET",
        "/",
        "The live dashboard (HTML)",
        "dashboard",
        None,
        {200: (None, "the page")},
        media="text/html",
    ),
    Operation("GET", "/openapi.json", "This document", "docs", None, {200: (None, "OpenAPI 3.1")}),
    Operation(
        "GET",
        "/docs",
        "Interactive API docs (Swagger UI, served locally)",
        "docs",
        None,
        {200: (None, "the page")},
        media="text/html",
    ),
)

WEBSOCKET = """
## WebSocket: `/ws/predictions` (viewer)

The client's first message subscribes: `{"type": "subscription", "sources": ["market_A"], "filters":
{"min_confidence": 0.6, "directions": ["up"]}, "api_key": "..."}` (`api_key` because a browser cannot set
headers on a WebSocket; no `sources`: every source served). The server answers `{"type": "subscribed", ...}`
(schema `Subscribed`), then pushes, once per engine batch, `{"type": "batch", "predictions":
[<PredictionRecord>...], "outcomes": [<Outcome>...]}` (schema `BatchMessage`): the batch's new predictions of
those sources and the outcomes they realized. Close codes, each with a reason: 1003 a binary frame, 1007 a
message that is not JSON or past its bounds (depth 32, integers of 20 digits), 1008 a malformed subscription
(at most 1,000 sources), 1009 a message over 64 KiB, 4000 + the HTTP status of a refused key (4401, 4403; also
when the key is revoked while the socket is open), 1013 a subscriber that fell too far behind.
`nq_dagster.client` reconnects and resubscribes, and yields the predictions and outcomes one by one.
"""

DESCRIPTION = (
    "The prediction server of nq-dagster: ticks in, calibrated predictions out (the record of DESIGN.md "
    "section 6), realized outcomes, model and validation figures. Authenticate with `Authorization: Bearer "
    "<key>`: an API key (`nq keys create`) or, when configured, an OAuth 2.0 JWT from the identity provider. "
    "Roles: viewer < developer < admin. Every error answer has the shape `ErrorAnswer`; a 429 carries "
    "`Retry-After` and `RateLimit-Limit/Remaining/Reset`, and every successful answer of a keyed route the "
    "same three. Tenants: a key or token of a tenant reaches that tenant's sources only, by the names it "
    "gave them; a name with `~` is no valid source name. A tenant's quotas refuse with 429 "
    "(`ticks_per_minute`, `concurrent_requests`) or 403 (`sources`, `stored_rows`), naming the quota in "
    "`error.quota`.\n" + WEBSOCKET
)
