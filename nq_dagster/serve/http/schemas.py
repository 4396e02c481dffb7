"""The API's answers as pydantic models: the prediction record of DESIGN.md section 6 and every other JSON
answer the routes give. They are the contract the OpenAPI document (`openapi.py`) publishes and the Python
client (`nq_dagster.client`) parses answers into; the routes keep building their JSON directly (the common
realtime answer is the engine's own encoding, unparsed), and tests/test_api.py checks real answers against
these models, so the document cannot drift from what the server sends.

Pure pydantic: the client imports this module without the server's dependencies. Models accept fields they
do not name (a newer server may add some); the ones named are what a client can rely on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

Direction = Literal["up", "down", "hold"]


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- errors -------------------------------------------------------------------------------------------------
class ErrorDetail(Answer):
    code: int = Field(description="the HTTP status")
    message: str = Field(description="what went wrong and what to do about it")
    field: str | None = Field(None, description="the part of the request at fault (`data[1]`, `source`)")
    details: list[str] | None = Field(None, description="every problem, when there were several")
    quota: Literal["sources", "ticks_per_minute", "concurrent_requests", "stored_rows"] | None = Field(
        None,
        description="the tenant's quota that refused the request (429: ticks_per_minute, "
        "concurrent_requests; 403: sources, stored_rows)",
    )


class ErrorAnswer(Answer):
    """The one shape of every error answer (4xx and 5xx)."""

    error: ErrorDetail
    request_id: str = Field(description="the request's id, also in the `X-Request-Id` header and the logs")


# -- the prediction record (DESIGN.md section 6) ------------------------------------------------------------
class Probabilities(Answer):
    down: float
    hold: float
    up: float


class SpikeAnalysis(Answer):
    spike_rate: float = Field(description="mean spikes per neuron per bin of the tick's encoding window")


class ReservoirState(Answer):
    mean: float = Field(description="mean of the reservoir's state vector after the tick")
    norm: float = Field(description="Euclidean norm of that vector")


class NeuromorphicResults(Answer):
    patterns: dict[str, float] = Field(description="the eight pattern strengths in [0, 1]")
    spike_analysis: SpikeAnalysis
    reservoir_state: ReservoirState


class QuantumConvergence(Answer):
    converged: bool
    iterations: int
    annealing_success_probability: float | None = None
    method: str


class QuantumResults(Answer):
    energy: float = Field(description="energy of the feature-selection QUBO's chosen state")
    phase_coherence: float = Field(description="normalised l1 coherence of the annealed state")
    convergence: QuantumConvergence


class Calibration(Answer):
    confidence_bin: list[float] = Field(description="[low, high) of the confidence bin this prediction is in")
    predictions: int = Field(description="walk-forward predictions of the source in that bin")
    observed_accuracy: float | None = Field(description="their accuracy on realized outcomes")
    note: str | None = None


class PredictionRecord(Answer):
    """One prediction: DESIGN.md section 6's record as the server answers and stores it."""

    prediction_id: str = Field(description="uuid5 of (source, timestamp, model version): stable on re-posts")
    source: str
    timestamp: str = Field(description="the tick's time, ISO 8601 UTC")
    direction: Direction = Field(description="the most likely class of the change over the horizon")
    confidence: float = Field(ge=0, le=1, description="its calibrated probability")
    probabilities: Probabilities
    magnitude: float = Field(ge=0, description="|predicted_change|")
    predicted_change: float = Field(description="the expected change of the value over the horizon")
    time_horizon_ms: float
    processing_time_ms: float | None = Field(description="tick received to record ready (null in training)")
    model_version: str
    config_version: str
    train_end: str = Field(description="the last time the model's training saw")
    neuromorphic_results: NeuromorphicResults | None = None
    quantum_results: QuantumResults | None = None
    calibration: Calibration | None = Field(None, description="how honest this confidence was in training")
    hold_band: float | None = Field(None, description="|change| below this counts as hold")
    interval_80: list[float] | None = Field(
        None,
        description="[low, high] of the change at 80 % (conformal, kept calibrated live); null: older model",
    )
    interval_95: list[float] | None = Field(None, description="[low, high] of the change at 95 %")
    value: float | None = Field(None, description="the tick's value")
    duplicate: bool | None = Field(
        None, description="true when this tick was posted before: the stored prediction, nothing new stored"
    )
    omitted: list[str] | None = Field(None, description="results left out on the client's request")


class PredictionList(Answer):
    """The answer to several values of one source."""

    source: str
    predictions: list[PredictionRecord]


class Outcome(Answer):
    source: str
    timestamp: str = Field(description="the predicted tick's time")
    realized_at: str = Field(description="the tick that realized it")
    predicted: Direction
    confidence: float
    realized: bool = Field(
        True, description="false when the tick came too long after the horizon to tell the outcome (a gap)"
    )
    actual: Direction | None = Field(description="the class of the realized change; null for a gap")
    correct: bool | None = Field(description="predicted == actual; null for a gap (never scored)")
    change: float | None = Field(description="the realized change; null for a gap")
    gap_ms: float | None = Field(None, description="time from the prediction to the realizing tick")
    time_horizon_ms: float | None = Field(None, description="the prediction's horizon")


class PredictionsBySource(RootModel[dict[str, list[PredictionRecord]]]):
    """Per source, its latest served predictions, oldest first."""


class OutcomesBySource(RootModel[dict[str, list[Outcome]]]):
    """Per source, the realized outcomes of its served predictions, oldest first."""


# -- batch jobs ---------------------------------------------------------------------------------------------
JobStatus = Literal["queued", "running", "done", "done_with_errors", "failed"]


class BatchAccepted(Answer):
    job_id: str
    status: JobStatus
    points: int
    status_url: str | None = Field(None, description="where to read the job (absent when it existed already)")


class Job(Answer):
    job_id: str
    status: JobStatus
    points: int
    predicted: int
    duplicates: int
    errors: list[str]
    submitted_at: str | None
    finished_at: str | None
    callback: dict[str, Any] | None = Field(description="the callback's {status_code} or {error}")
    results: list[PredictionRecord]


# -- models, status, health, metrics ------------------------------------------------------------------------
ModelStatus = Literal["loaded", "loading", "failed"]


class Validation(Answer):
    score: float
    accuracy: float
    predictions: int
    model_version: str
    report: str


class ModelInfo(Answer):
    """A loaded model has every field; a source still loading or that failed to load has `status` (and
    `error`) only."""

    status: ModelStatus = "loaded"
    error: str | None = None
    model_version: str | None = None
    config_version: str | None = None
    selected_features: list[str] | None = None
    quantum: dict[str, Any] | None = None
    reliability: Any = None
    trained_at: str | None = None
    trained_rows: int | None = None
    rows_seen: int | None = None
    process: int | None = None
    last_timestamp: str | None = None
    validation: Validation | None = None


class ValidationPoint(Answer):
    """A model version's validation report (`validation.history`)."""

    model_version: str
    validated_at: str = Field(description="when its report was written (ISO 8601, UTC)")
    score: float = Field(description="validation score 0-100 (0: no significant skill)")
    accuracy: float = Field(description="directional accuracy on its held-out realized rows")
    predictions: int = Field(description="held-out realized predictions scored")
    verdict: str
    status: Literal["current", "promoted", "rejected", "unrecorded"] = Field(
        description="current: served now; promoted: served before; rejected: kept out by the promotion gate; "
        "unrecorded: trained before the gate kept decisions"
    )
    recorded: bool = Field(
        description="false for the one point of a data directory trained before points were kept (its "
        "latest report only)"
    )


class ValidationHistory(RootModel[dict[str, list[ValidationPoint]]]):
    """Per source, its validation score per model version, oldest first."""


class PortfolioRow(Answer):
    source: str
    predicted_edge: float | None = None
    volatility: float | None = None
    chosen: bool | None = None


class Models(Answer):
    models: dict[str, ModelInfo]
    portfolio: list[PortfolioRow] | None


Health = Literal["healthy", "degraded", "down"]


class StatusPublic(Answer):
    status: Health
    detail: str


class Status(Answer):
    """What a viewer key sees: the components and the measured figures."""

    status: Health
    components: dict[str, Any] = Field(description="engine, storage and each model with its own status")
    average_processing_time_ms: float | None
    success_rate_5m: float | None = Field(description="admitted processing requests not answered 5xx")
    server_error_rate_5m: float | None
    predictions_per_second_1m: float
    uptime_seconds: float


class Live(Answer):
    status: Literal["alive", "dead"] = Field(description="dead (503): the engine failed to start or stopped")
    uptime_seconds: float
    error: str | None = None


class Ready(Answer):
    """`ready` false (and the status 503) lists what is missing."""

    ready: bool
    missing: list[str] = Field(description="what keeps the server from being ready, each a sentence")
    models: dict[str, ModelStatus] = Field(description="each owned source's model")
    storage: str = Field(description="`writable`, or why not")


class MetricsDocument(Answer):
    timestamp: str
    uptime_seconds: float
    total_predictions: int
    predictions_per_second: float
    average_processing_time_ms: float | None
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p99_latency_ms: float | None
    latency_window: int
    success_rate: float | None
    active_connections: int
    validation: dict[str, Validation]
    live: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]
    notes: dict[str, str]


class Ping(Answer):
    ok: bool


# -- config and keys ----------------------------------------------------------------------------------------
class ConfigVersion(Answer):
    number: int
    hash: str
    service: str | None = None
    author: str
    created_at: str
    changes: dict[str, Any]


class ConfigDocument(Answer):
    service: str
    active_version: str
    values: dict[str, Any]
    history: list[ConfigVersion]
    requested_version: dict[str, Any] | None = None


class ConfigUpdated(ConfigVersion):
    note: str


class BadRowInfo(Answer):
    row: int = Field(description="the row as the user counts it (the header is row 1)")
    column: str = Field(description="the column at fault (`*`: the whole line)")
    problem: str
    value: str = Field(description="the value as written (cut when long)")
    fix: str


class UploadAnswer(Answer):
    """What `POST /api/v1/upload` did with a file: the ingest rules of `nq ingest`."""

    file: str
    status: str = Field(
        description="ingested | ingested-with-bad-rows | skipped-duplicate-file | quarantined"
    )
    sources: dict[str, int] = Field(description="rows stored per source")
    rows_accepted: int
    reason: str = Field(description="why the file was quarantined (empty otherwise)")
    notes: list[str]
    bad_rows_total: int
    bad_rows: list[BadRowInfo] = Field(description="the first 100 bad rows")
    stored_rows: int = Field(description="the source's rows now")
    rows_needed_to_train: int


class KeyInfo(Answer):
    id: str
    role: Literal["viewer", "developer", "admin"]
    rate_per_s: float
    rate: str
    burst: int
    max_concurrent: int
    name: str
    created_at: str
    revoked_at: str | None
    tenant: str | None = Field(
        None, description="the tenant whose sources the key reaches; null: the default namespace"
    )


class KeyList(Answer):
    keys: list[KeyInfo]


class NewKeyAnswer(KeyInfo):
    key: str = Field(description="the key itself: shown once, only its hash is stored")
    note: str


# -- the WebSocket's messages -------------------------------------------------------------------------------
class Subscribed(Answer):
    type: Literal["subscribed"]
    sources: list[str]
    filters: dict[str, Any]


class PredictionMessage(Answer):
    type: Literal["prediction"]
    prediction: PredictionRecord
    resumed: bool = Field(False, description="client side: fetched after a reconnection, not pushed")


class OutcomeMessage(Answer):
    type: Literal["outcome"]
    outcome: Outcome


class BatchMessage(Answer):
    """What the server pushes, once per engine batch with any: its new predictions of the subscribed sources
    (filtered) and the outcomes they realized."""

    type: Literal["batch"]
    predictions: list[PredictionRecord]
    outcomes: list[Outcome]
