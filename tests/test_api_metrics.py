"""Prometheus conventions of `nq serve` (issue 27): `/metrics` open only when the operator says so, the
process and platform collectors, one status label name (`code`), no `_created` series, success over server
errors only, RateLimit headers on a 429, and a Grafana dashboard whose queries name exported metrics."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from starlette.testclient import TestClient

from nq_dagster.serve.http.app import create_server
from nq_dagster.serve.http.telemetry import Metrics
from nq_dagster.serve.keys import KeyStore
from nq_dagster.settings import Settings

K8S = Path(__file__).resolve().parents[1] / "k8s"


def server(tmp_path, **settings):
    return create_server(Settings(home=tmp_path / "nq", **settings))


def test_metrics_open_only_when_set_with_conventional_series(tmp_path):
    with TestClient(server(tmp_path / "closed").app) as c:
        assert c.get("/metrics").status_code == 401
    with TestClient(server(tmp_path / "open", serve_metrics_open=True).app) as c:
        c.get("/api/v1/ping")  # 401: counted under code="401"
        r = c.get("/metrics")
        assert r.status_code == 200
        text = r.text
    assert "process_resident_memory_bytes " in text and "python_info{" in text and "python_gc_" in text
    assert "_created" not in text
    assert 'nq_http_requests_total{code="401",endpoint="/api/v1/ping",method="GET"} 1.0' in text
    labels = set(re.findall(r"^nq_http_\w+\{([^}]*)\}", text, re.M))
    assert labels and not any("status=" in lab for lab in labels)


def test_success_rate_counts_server_errors_only():
    m = Metrics()
    now = time.monotonic()
    for code in (200, 200, 422, 409, 500, 503):
        m.outcomes.append((now, code))
    f = m.figures()
    assert f["success_rate_5m"] == 4 / 6 and f["server_error_rate_5m"] == 2 / 6


def test_a_rate_limited_answer_carries_ratelimit_headers(tmp_path):
    srv = server(tmp_path)
    key = KeyStore(tmp_path / "nq").create("viewer", "6/min", 1, 4, "slow")[0]
    hdr = {"Authorization": f"Bearer {key}"}
    with TestClient(srv.app) as c:
        assert c.get("/api/v1/ping", headers=hdr).status_code == 200
        r = c.get("/api/v1/ping", headers=hdr)
    assert r.status_code == 429
    assert r.headers["ratelimit-limit"] == "1" and r.headers["ratelimit-remaining"] == "0"
    assert (
        1 <= int(r.headers["ratelimit-reset"]) <= 10
        and r.headers["ratelimit-reset"] == r.headers["retry-after"]
    )
    assert r.headers["ratelimit-policy"] == "1;w=10"

    # a request of several values costs one token each: its 429 carries them too
    key = KeyStore(tmp_path / "b" / "nq").create("developer", "6/min", 3, 4, "ticks")[0]
    hdr = {"Authorization": f"Bearer {key}"}
    body = {"source": "s", "data": [1.0, 2.0, 3.0], "timestamps": [1, 2, 3]}
    with TestClient(server(tmp_path / "b").app) as c:  # a new app: leaving the first closed its engine
        one = {**body, "data": [1.0], "timestamps": [1]}
        assert (
            c.post("/api/v1/process/realtime", json=one, headers=hdr).status_code == 409
        )  # no model; charged
        r = c.post("/api/v1/process/realtime", json=body, headers=hdr)
    assert r.status_code == 429 and "3 values need 3 tokens" in r.json()["error"]["message"]
    assert r.headers["ratelimit-limit"] == "3" and r.headers["ratelimit-reset"] == r.headers["retry-after"]


def exported(metrics: Metrics) -> dict[str, set[str]]:
    """Every series name the registry exposes, with its label names."""
    out: dict[str, set[str]] = {}
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}
    for fam in metrics.registry.collect():
        labels = set()
        if fam.type in ("counter", "gauge", "histogram") and fam.name.startswith("nq_"):
            # a labelled family without children yet exposes no sample: its labels from the metric object
            labels = set(_labels_of(metrics, fam.name))
        labels |= {k for s in fam.samples for k in s.labels}
        for sfx in suffixes.get(fam.type, ("",)):
            out[fam.name + sfx] = labels | ({"le"} if sfx == "_bucket" else set())
    return out


def _labels_of(metrics: Metrics, name: str) -> tuple[str, ...]:
    for v in vars(metrics).values():
        if getattr(v, "_name", None) == name:
            return v._labelnames
    return ()


def test_grafana_dashboard_queries_name_exported_metrics_and_labels():
    dash = json.loads((K8S / "grafana-dashboard.json").read_text())
    names = exported(Metrics())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for panel in (
        "latency",
        "throughput",
        "success rate",
        "accuracy against stated confidence",
        "validation score",
    ):
        assert panel in titles
    assert len(exprs) >= 10
    for e in exprs:
        used = re.findall(r"\b((?:nq|process|python)_[a-z0-9_]+)\b(\{[^}]*\})?", e)
        assert used, e
        for name, selector in used:
            assert name in names, f"{name} (in {e!r}) is not exported"
            for label in re.findall(r"(\w+)\s*=~?", selector or ""):
                assert label in names[name] | {"job", "instance"}, f"{name} has no label {label!r}"
        for label in re.findall(r"by \(([^)]*)\)", e):
            for lab in label.split(","):
                assert any(lab.strip() in names[n] for n, _ in used), f"no metric of {e!r} has {lab!r}"
