"""The server's measurements: Prometheus metrics (one registry per app, exposed at `/metrics`) and the exact
rolling figures behind `/api/v1/status` and `/api/v1/metrics` (percentiles over the last predictions, rates
over the last minute, success over the last five minutes).

Prometheus conventions: the status label is `code` on every series (as promhttp and the Go client name it),
the process and platform collectors are registered (`process_*`, `python_*`), and no `_created` series are
exported (they double the series count and dashboards never read them). Success is "not a server error": a
4xx is the client's mistake and the server answered it correctly.
"""

from __future__ import annotations

import collections
import itertools
import time

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# process-wide in prometheus_client (there is no per-registry switch); every registry of this process is ours
disable_created_metrics()

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        for collector in (
            PROCESS_COLLECTOR,
            PLATFORM_COLLECTOR,
            GC_COLLECTOR,
        ):  # stateless: shared, read at scrape
            r.register(collector)
        self.request_seconds = Histogram(
            "nq_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "nq_http_requests", "HTTP requests by status code", ["endpoint", "method", "code"], registry=r
        )
        self.errors = Counter(
            "nq_http_errors", "HTTP responses with status >= 400", ["endpoint", "code"], registry=r
        )
        self.predictions = Counter("nq_predictions", "Predictions served (new ticks)", ["source"], registry=r)
        self.processing = Histogram(
            "nq_prediction_processing_seconds",
            "Tick received to record ready, per prediction",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ws_clients = Gauge("nq_websocket_clients", "Connected WebSocket subscribers", registry=r)
        self.ws_dropped = Counter(
            "nq_websocket_slow_closed", "Subscribers closed for falling behind", registry=r
        )
        self.model_info = Gauge(
            "nq_model_info",
            "Model version loaded per source (value 1)",
            ["source", "model_version", "config_version"],
            registry=r,
        )
        self.validation_accuracy = Gauge(
            "nq_validation_accuracy", "Accuracy on realized outcomes, latest report", ["source"], registry=r
        )
        self.validation_score = Gauge(
            "nq_validation_score", "Validation score (0-100), latest report", ["source"], registry=r
        )
        self.live_accuracy = Gauge(
            "nq_live_accuracy",
            "Accuracy of the last 500 served predictions whose outcome is known (realized by later ticks)",
            ["source"],
            registry=r,
        )
        self.live_confidence = Gauge(
            "nq_live_mean_confidence",
            "Mean stated confidence of those same predictions (beside nq_live_accuracy: honest when equal)",
            ["source"],
            registry=r,
        )
        self.queue_depth = Gauge("nq_engine_queue_depth", "Requests waiting for the engine", registry=r)
        # the tick journal's faults (serve/engine/ticklog.py, flusher.py), as status shows them: set at scrape
        self.journal_refused = Gauge(
            "nq_journal_refused_batches", "Batches the journal could not commit (answered 503)", registry=r
        )
        self.journal_quarantined = Gauge(
            "nq_journal_quarantined_segments", "Damaged journal segments moved to quarantine", registry=r
        )
        self.tick_conflicts = Gauge(
            "nq_tick_conflicts", "Served ticks whose time was already stored with another value", registry=r
        )
        self.storage_up = Gauge(
            "nq_storage_up", "1 while the journal commits, 0 after a storage error", registry=r
        )
        self.batch_seconds = Histogram(
            "nq_engine_batch_seconds", "Engine time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.recent_ms: collections.deque = collections.deque(maxlen=10_000)  # processing_time_ms, exact
        self.pred_times: collections.deque = collections.deque(maxlen=200_000)  # monotonic time of each
        self.outcomes: collections.deque = collections.deque(maxlen=20_000)  # (monotonic time, status) of a
        # processing request
        self.total_predictions = 0

    def prediction(self, rec: dict, now: float) -> None:
        self.predictions.labels(rec["source"]).inc()
        ms = rec.get("processing_time_ms")
        if ms is not None:
            self.processing.observe(ms / 1000.0)
            self.recent_ms.append(ms)
        self.pred_times.append(now)
        self.total_predictions += 1

    def figures(self) -> dict:
        now = time.monotonic()
        ms = np.array(self.recent_ms) if self.recent_ms else np.zeros(0)
        window = [code for t, code in self.outcomes if now - t <= 300]
        per_s = sum(1 for t in itertools.takewhile(lambda t: now - t <= 60, reversed(self.pred_times))) / 60.0

        def pct(q):
            return float(np.percentile(ms, q)) if len(ms) else None

        return {
            "predictions_total": self.total_predictions,
            "predictions_per_second_1m": per_s,
            "processing_time_ms": {
                "average": float(ms.mean()) if len(ms) else None,
                "p50": pct(50),
                "p95": pct(95),
                "p99": pct(99),
                "over_last": len(ms),
            },
            "success_rate_5m": (sum(c < 500 for c in window) / len(window)) if window else None,
            "server_error_rate_5m": (sum(c >= 500 for c in window) / len(window)) if window else None,
            "requests_5m": len(window),
        }
