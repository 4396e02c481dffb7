"""The prediction server on a loopback port, with real HTTP and WebSocket clients: every endpoint's normal
path, its refusals (401 / 403 / 409 / 413 / 421 / 422 / 429), ticks stored exactly once, served predictions
equal to the one prediction path and to the streaming job, subscriptions, a new model picked up without a
failed request, SIGTERM and kill -9 under load, two replicas sharing one data directory."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from nq_dagster.fusion.predictor import Predictor
from nq_dagster.serve.engine import stable_hash
from nq_dagster.serve.keys import KeyStore
from nq_dagster.store import Warehouse

from .serving import (
    CLONES,
    ProcessServer,
    ThreadServer,
    copy_home,
    free_port,
    served_rows,
    tick,
)

ws_client = pytest.importorskip("websockets.sync.client")


@pytest.fixture(scope="module")
def base(trained_base):
    return trained_base


@pytest.fixture
def home(base, tmp_path):
    return copy_home(base[0], tmp_path / "nq")


@pytest.fixture
def ticks(base):
    return base[1]


def keys(home, **kw):
    kw = {"rate": "60000/min", "burst": 1000, **kw}  # the rate limit has a test of its own
    store = KeyStore(home)
    return {role: store.create(role, **kw)[0] for role in ("viewer", "developer", "admin")}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def srv(home):
    s = ThreadServer(home)
    yield s
    s.stop()


def test_realtime_matches_the_prediction_path_and_stores_each_tick_once(home, srv, ticks):
    k = keys(home)
    c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]))
    n = 30
    got = []
    for i in range(n):
        r = c.post("/api/v1/process/realtime", json=tick("m", ticks.timestamp[i], ticks.value[i]))
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"]
        got.append(r.json())
    assert all(not g["duplicate"] and g["processing_time_ms"] > 0 for g in got)
    # posted again: the stored record, not a second row
    again = c.post("/api/v1/process/realtime", json=tick("m", ticks.timestamp[5], ticks.value[5])).json()
    assert again["duplicate"] and again["prediction_id"] == got[5]["prediction_id"]
    assert again["confidence"] == got[5]["confidence"]
    # posted again with another value: refused by name, never answered with the old record (issue 26)
    other = c.post("/api/v1/process/realtime", json=tick("m", ticks.timestamp[5], ticks.value[5] + 1.0))
    assert other.status_code == 422, other.text
    msg = other.json()["error"]["message"]
    assert "already has value" in msg and repr(float(ticks.value[5])) in msg, msg
    # the same ticks through the one prediction path, from the state training saved
    p = Predictor()
    p.load(Warehouse(home).load_artifact("serving_state", "m"))
    want = p.advance("m", ticks.value[:n].to_numpy(), ticks.timestamp[:n].to_numpy())
    assert [g["direction"] for g in got] == [w["direction"] for w in want]
    assert np.allclose([g["confidence"] for g in got], [w["confidence"] for w in want], rtol=0, atol=1e-9)
    assert np.allclose([g["predicted_change"] for g in got], [w["predicted_change"] for w in want], rtol=1e-9)
    # stored once each (after the flush), in raw_ticks and predictions
    wh = Warehouse(home)
    deadline = time.monotonic() + 10
    while len(served_rows(wh, "predictions", "m")) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    for table in ("raw_ticks", "predictions"):
        rows = served_rows(wh, table, "m")
        stamps = pd.to_datetime(rows["timestamp"], utc=True)
        assert len(rows) == n and set(stamps) == set(ticks.timestamp[:n]), table
    raw = served_rows(wh, "raw_ticks", "m").sort_values("timestamp")
    assert np.array_equal(raw["value"].to_numpy(), ticks.value[:n].to_numpy())


def test_refusals_name_the_problem(home, srv, ticks):
    k = keys(home)
    url = f"{srv.url}/api/v1/process/realtime"
    ok = tick("m", ticks.timestamp[0], ticks.value[0])
    assert httpx.post(url, json=ok).status_code == 401
    assert httpx.post(url, json=ok, headers=auth(k["developer"] + "x")).status_code == 401
    assert httpx.post(url, json=ok, headers=auth("nq_000000000000_guess")).status_code == 401
    r = httpx.post(url, json=ok, headers=auth(k["viewer"]))
    assert r.status_code == 403 and "developer" in r.json()["error"]["message"]
    dev = auth(k["developer"])
    r = httpx.post(url, json={**ok, "source": "zz"}, headers=dev)
    assert r.status_code == 409 and "training needs 150" in r.json()["error"]["message"]  # config.rows_needed
    r = httpx.post(url, content=b'{"source": "m", "data": [' + b"1," * 600_000 + b"1]}", headers=dev)
    assert r.status_code == 413
    r = httpx.post(url, content=b"{not json", headers=dev)
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    r = httpx.post(
        url, json={**ok, "data": [1.0, "x"], "timestamps": ["2027-01-01T00:00:00Z"] * 2}, headers=dev
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "data[1]"
    r = httpx.post(url, json={**ok, "source": "../evil"}, headers=dev)
    assert r.status_code == 422 and r.json()["error"]["field"] == "source"
    # the ingest rules, with ingest's message
    r = httpx.post(url, json={**ok, "timestamp": "yesterday"}, headers=dev)
    err = r.json()["error"]
    assert (
        r.status_code == 422
        and "unparseable timestamp" in err["message"]
        and "Fix: use ISO 8601" in err["message"]
    )
    assert "row 1, column 'timestamp'" in err["message"]
    r = httpx.post(url, json={**ok, "data": [1.0, 2.0], "timestamps": [ok["timestamp"]] * 2}, headers=dev)
    assert r.status_code == 422 and "duplicate (source, timestamp) of row 1" in r.json()["error"]["message"]
    assert httpx.post(url, json=ok, headers=dev).status_code == 200
    older = tick("m", ticks.timestamp[0] - pd.Timedelta("30s"), 1.0)
    r = httpx.post(url, json=older, headers=dev)
    assert r.status_code == 422 and "not after the last one seen" in r.json()["error"]["message"]
    # rate limit: 1/min with a burst of 2 -> the third request waits
    slow = KeyStore(home).create("developer", rate="1/min", burst=2)[0]
    codes = [httpx.get(f"{srv.url}/api/v1/ping", headers=auth(slow)) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1


def test_batch_jobs(home, srv, ticks):
    k = keys(home)
    c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]))
    points = [
        {"source": s, "timestamp": ticks.timestamp[i].isoformat(), "value": float(ticks.value[i])}
        for i in range(20)
        for s in ("s1", "s2")
    ][::-1]  # out of order: sorted as ingest sorts
    r = c.post("/api/v1/process/batch", json={"job_id": "job-1", "data_points": points})
    assert r.status_code == 202 and r.json()["job_id"] == "job-1"
    deadline = time.monotonic() + 20
    while (job := c.get("/api/v1/jobs/job-1").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "done" and job["predicted"] == 40 and not job["errors"]
    by_source = {s: [r["timestamp"] for r in job["results"] if r["source"] == s] for s in ("s1", "s2")}
    assert by_source["s1"] == sorted(by_source["s1"]) and len(by_source["s2"]) == 20
    # a bad point fails its chunk with ingest's message, the job says so
    bad = [{"source": "s3", "timestamp": "not a time", "value": 1.0}]
    c.post("/api/v1/process/batch", json={"job_id": "job-2", "data_points": bad})
    while (job := c.get("/api/v1/jobs/job-2").json())["status"] in ("queued", "running"):
        time.sleep(0.05)
    assert job["status"] == "failed" and "unparseable timestamp" in job["errors"][0]
    # another key reusing a job_id learns nothing of the job (issue 26): 409, no summary; its owner reads it
    other = httpx.post(
        f"{srv.url}/api/v1/process/batch",
        json={"job_id": "job-1", "data_points": points},
        headers=auth(KeyStore(home).create("developer", "60000/min", 1000)[0]),
    )
    assert (
        other.status_code == 409
        and "points" not in other.json()
        and other.json()["error"]["field"] == "job_id"
    )
    assert (
        c.post("/api/v1/process/batch", json={"job_id": "job-1", "data_points": points}).json()["points"]
        == 40
    )
    r = c.post(
        "/api/v1/process/batch", json={"data_points": points, "callback_url": "http://169.254.169.254/x"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "callback_url"
    r = c.post(
        "/api/v1/process/batch", json={"data_points": [{"source": "s1", "timestamp": 1, "value": "x"}]}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "data_points[0].value"
    assert c.get("/api/v1/jobs/nope").status_code == 404


def test_websocket_subscribers_get_exactly_their_sources(home, srv, ticks):
    k = keys(home)
    ws_url = srv.url.replace("http", "ws") + "/ws/predictions"
    with (
        ws_client.connect(ws_url, additional_headers=auth(k["viewer"])) as a,
        ws_client.connect(ws_url) as b,
        ws_client.connect(ws_url) as bad,
    ):
        a.send(json.dumps({"type": "subscription", "sources": ["s1"]}))
        b.send(
            json.dumps(
                {
                    "type": "subscription",
                    "sources": ["s2"],
                    "api_key": k["viewer"],
                    "filters": {"min_confidence": 0.0, "directions": ["up", "down", "hold"]},
                }
            )
        )
        bad.send(json.dumps({"type": "subscription", "sources": ["s1"], "api_key": "nq_x_y"}))
        assert json.loads(a.recv(5))["type"] == "subscribed" and json.loads(b.recv(5))["type"] == "subscribed"
        with pytest.raises(Exception) as closed:
            bad.recv(5)
        assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 4401
        c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]))
        sent = {"s1": [], "s2": []}
        for i in range(8):
            for s in ("s1", "s2", "s3"):
                r = c.post("/api/v1/process/realtime", json=tick(s, ticks.timestamp[i], ticks.value[i]))
                assert r.status_code == 200
                if s in sent:
                    sent[s].append(r.json()["prediction_id"])
        for ws, s in ((a, "s1"), (b, "s2")):
            got, outcomes = [], []
            while len(got) < 8 or len(outcomes) < 7:  # 8 predictions, 7 outcomes they realized
                m = json.loads(ws.recv(5))
                assert m["type"] == "batch"  # one message per engine batch
                got += m["predictions"]
                outcomes += m["outcomes"]
            assert [g["prediction_id"] for g in got] == sent[s] and {g["source"] for g in got} == {s}
            assert len(outcomes) == 7 and {o["source"] for o in outcomes} == {s}
            with pytest.raises(TimeoutError):
                ws.recv(0.3)  # nothing else: not the other sources, no duplicates


def test_status_metrics_config_keys(home, srv, ticks):
    k = keys(home)
    view, dev, admin = (auth(k[r]) for r in ("viewer", "developer", "admin"))
    c = httpx.Client(base_url=srv.url)
    for i in range(5):
        assert (
            c.post(
                "/api/v1/process/realtime", json=tick("m", ticks.timestamp[i], ticks.value[i]), headers=dev
            ).status_code
            == 200
        )
    assert c.get("/api/v1/status").json()["status"] in ("healthy", "degraded")
    st = c.get("/api/v1/status", headers=view).json()
    assert (
        st["components"]["models"]["m"]["status"] == "healthy"
        and st["components"]["storage"]["status"] == "healthy"
    )
    assert st["average_processing_time_ms"] > 0 and st["success_rate_5m"] == 1.0
    m = c.get("/api/v1/metrics", headers=view).json()
    assert m["total_predictions"] == 5 and m["p95_latency_ms"] >= m["p50_latency_ms"] > 0
    assert m["live"]["m"]["realized"] == 4  # each tick realizes the prediction before it (horizon 1)
    assert m["validation"]["m"]["accuracy"] == pytest.approx(
        Warehouse(home).read_table("validation_metrics", "m")["accuracy"].iloc[0]
    )
    prom = c.get("/metrics", headers=view).text
    assert 'nq_predictions_total{source="m"} 5.0' in prom and "nq_model_info{" in prom
    assert 'nq_http_request_duration_seconds_bucket{endpoint="/api/v1/process/realtime"' in prom
    assert c.get("/metrics").status_code == 401
    # the alert rules use metric names the server exports
    from pathlib import Path

    rules = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "k8s" / "prometheus-rules.yaml").read_text()
    )
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    assert len(exprs) == 2
    import re

    for e in exprs:
        for name in re.findall(r"\b(nq_[a-z_]+)", e):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert (
                re.search(rf"^{base}(_bucket|_count|_sum|_total)?\{{", prom, re.M)
                or f"# TYPE {base} " in prom
            ), name
    # config: viewers read, admins change (validated, versioned, the next training's)
    assert c.get("/api/v1/config/fusion", headers=view).json()["values"]["train_min"] == 250
    assert c.put("/api/v1/config/fusion", json={"hold_band": 0.2}, headers=dev).status_code == 403
    r = c.put("/api/v1/config/fusion", json={"hold_band": "wide"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "hold_band"
    r = c.put("/api/v1/config/fusion", json={"qubit_count": 4}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "qubit_count"
    r = c.put("/api/v1/config/fusion", json={"hold_band": 0.2}, headers=admin)
    assert r.status_code == 200 and r.json()["number"] == 1
    assert json.loads((home / "config.json").read_text())["hold_band"] == 0.2
    doc = c.get("/api/v1/config/fusion", params={"version": "1"}, headers=view).json()
    assert doc["values"]["hold_band"] == 0.2 and doc["history"][0]["changes"]["hold_band"] == {
        "from": 0.1,
        "to": 0.2,
    }
    assert doc["requested_version"]["config"]["hold_band"] == 0.2
    assert c.get("/api/v1/config/nope", headers=view).status_code == 404
    # keys: stored as hashes only; admins create and revoke
    stored = (home / "serve" / "keys.json").read_text()
    assert not any(key in stored for key in k.values())
    assert c.post("/api/v1/keys", json={"role": "viewer"}, headers=dev).status_code == 403
    new = c.post("/api/v1/keys", json={"role": "viewer", "rate": "60/min"}, headers=admin).json()
    assert c.get("/api/v1/ping", headers=auth(new["key"])).status_code == 200
    assert c.delete(f"/api/v1/keys/{new['id']}", headers=admin).status_code == 200
    assert c.get("/api/v1/ping", headers=auth(new["key"])).status_code == 401


def test_new_model_is_picked_up_without_a_failed_request(home, srv, ticks):
    k = keys(home)
    wh = Warehouse(home)
    c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]))
    versions, codes = [], []

    def post(i):
        r = c.post("/api/v1/process/realtime", json=tick("m", ticks.timestamp[i], ticks.value[i]))
        codes.append(r.status_code)
        versions.append(r.json().get("model_version"))

    for i in range(10):
        post(i)
    old = wh.load_artifact("serving_state", "m")
    newer = dataclasses.replace(old, model=dataclasses.replace(old.model, model_version="retrained-1"))
    done = threading.Event()

    def swap():
        time.sleep(0.2)
        wh.save_artifact("serving_state", "m", newer)  # what a training run writes
        done.set()

    threading.Thread(target=swap).start()
    i = 10
    deadline = time.monotonic() + 15
    while versions[-1] != "retrained-1":
        assert time.monotonic() < deadline, "new model version not picked up"
        post(i)
        i += 1
    assert set(codes) == {200}
    assert versions.index("retrained-1") > 10 and set(versions[versions.index("retrained-1") :]) == {
        "retrained-1"
    }
    # the stream continued: the state kept its rows (the live state went further than training's)
    st = srv.server.engine.predictor.serving_state("m").stream
    assert st.n_rows == old.stream.n_rows + i


def _load(url: str, key: str, sources: list[str], ticks: pd.DataFrame, acked: dict, stop: threading.Event):
    """Post each source's ticks in order as fast as the server answers; record what was acknowledged."""

    def run(source):
        with httpx.Client(base_url=url, headers=auth(key), timeout=10) as c:
            for i in range(len(ticks)):
                if stop.is_set():
                    return
                try:
                    r = c.post(
                        "/api/v1/process/realtime", json=tick(source, ticks.timestamp[i], ticks.value[i])
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked[source].append(ticks.timestamp[i])
                elif r.status_code != 503:
                    return

    threads = [threading.Thread(target=run, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    return threads


def test_sigterm_and_kill_lose_no_acknowledged_tick(home, ticks):
    k = keys(home)
    wh = Warehouse(home)
    acked = {"s1": [], "s2": []}
    server = ProcessServer(home)
    stop = threading.Event()
    threads = _load(server.url, k["developer"], ["s1", "s2"], ticks.iloc[:150], acked, stop)
    time.sleep(1.5)
    # uvicorn shuts down gracefully, then re-raises the signal (-SIGTERM); once in CI it exited 0 instead,
    # after the same graceful shutdown. Either way: the shutdown message, and (below) no acknowledged tick
    # lost
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert '"Shutdown complete' in server.output() or "Finished server process" in server.output()
    stop.set()
    for t in threads:
        t.join()
    assert all(len(v) > 5 for v in acked.values()), acked
    assert not list((home / "serve" / "wal" / "r0").glob("*.sqlite3")), "SIGTERM left the journal unflushed"
    assert k["developer"] not in server.output()  # no key in any log line
    # kill -9: the acknowledged ticks are in the log; the next start recovers them
    server = ProcessServer(home)
    stop = threading.Event()
    rest = ticks.iloc[150:].reset_index(drop=True)
    more = {"s1": [], "s2": []}
    threads = _load(server.url, k["developer"], ["s1", "s2"], rest, more, stop)
    time.sleep(1.0)
    server.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    assert list((home / "serve" / "wal" / "r0").glob("*.sqlite3")), "kill -9 left no journal to recover"
    server = ProcessServer(home)  # recovers the log
    server.stop(signal.SIGTERM)
    for s in ("s1", "s2"):
        everything = acked[s] + more[s]
        for table in ("raw_ticks", "predictions"):
            rows = served_rows(wh, table, s)
            stamps = pd.to_datetime(rows["timestamp"], utc=True)
            assert stamps.is_unique, f"{s} {table}: a tick stored twice"
            assert set(everything) <= set(stamps), f"{s} {table}: an acknowledged tick is missing"
        live = wh.load_artifact("live_state", s)
        assert (
            live.stream.last_ts
            == pd.to_datetime(served_rows(wh, "raw_ticks", s)["timestamp"], utc=True).max().value
        )


def test_two_replicas_share_one_data_directory(home, ticks):
    """Replica k owns the sources whose stable hash modulo 2 is k; a tick sent to the other replica is
    forwarded. Ticks of one source posted alternately to both are stored and predicted once each, in order, as
    one server would."""
    k = keys(home)
    owned_by_1 = next(s for s in CLONES if stable_hash(s) % 2 == 1)
    ports = [free_port(), free_port()]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    servers = [
        ProcessServer(home, port=ports[i], extra=["--replicas", "2", "--replica", str(i), "--peers", peers])
        for i in range(2)
    ]
    try:
        n = 24
        got = []
        for i in range(n):
            r = httpx.post(
                f"{servers[i % 2].url}/api/v1/process/realtime",
                headers=auth(k["developer"]),
                json=tick(owned_by_1, ticks.timestamp[i], ticks.value[i]),
                timeout=10,
            )
            assert r.status_code == 200, r.text
            if i % 2 == 0:
                assert r.headers.get("x-nq-replica") == "1"  # forwarded to the owner
            got.append(r.json())
        status0 = httpx.get(f"{servers[0].url}/api/v1/status", headers=auth(k["viewer"])).json()
        assert owned_by_1 not in status0["components"]["models"]
    finally:
        for s in servers:
            s.stop()
    p = Predictor()
    p.load(Warehouse(home).load_artifact("serving_state", owned_by_1))
    want = p.advance(owned_by_1, ticks.value[:n].to_numpy(), ticks.timestamp[:n].to_numpy())
    assert [g["prediction_id"] for g in got] == [w["prediction_id"] for w in want]
    assert np.allclose([g["confidence"] for g in got], [w["confidence"] for w in want], atol=1e-9)
    rows = served_rows(Warehouse(home), "predictions", owned_by_1)
    assert len(rows) == n and pd.to_datetime(rows["timestamp"], utc=True).is_unique
    assert all(
        p.stem.startswith("serve-r1-")
        for p in Warehouse(home).table_parts("raw_ticks", owned_by_1)
        if p.stem.startswith("serve-")
    )


def test_training_scores_what_was_served(home, ticks, monkeypatch):
    """Predictions served live stay in `predictions` through the next training (one record per time), and the
    validation report scores them on the outcomes realized since, as an independent recomputation does."""
    from nq_dagster.cli import main
    from nq_dagster.fusion.walkforward import make_targets

    k = keys(home)
    srv = ThreadServer(home)
    n = 60
    try:
        c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]))
        for i in range(n):
            assert (
                c.post(
                    "/api/v1/process/realtime", json=tick("m", ticks.timestamp[i], ticks.value[i])
                ).status_code
                == 200
            )
    finally:
        srv.stop()  # writes the log into the tables
    monkeypatch.setenv("NQ_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    assert main(["--home", str(home), "run", "--source", "m"]) == 0  # the predictions suite passes too
    wh = Warehouse(home)
    preds = wh.read_table("predictions", "m")
    assert not preds.duplicated(["source", "timestamp"]).any()
    served = preds[preds["processing_time_ms"].notna()].sort_values("timestamp")
    assert len(served) == n
    metrics = wh.read_table("validation_metrics", "m").iloc[0]
    assert metrics["live_predictions"] == n - 1  # the last one's outcome is not known yet
    report = wh.reports / "m.html"
    assert report.stat().st_mode & 0o777 == 0o644  # readable by a viewer, not only the writer
    text = report.read_text()
    assert "Served live" in text and "<style>" in text and "overflow-x: auto" in text
    # the report's plots and tables in the asset's metadata, as the Dagster UI shows them
    from dagster import AssetKey, DagsterInstance

    ev = DagsterInstance.get().get_latest_materialization_event(AssetKey("validation_report"))
    meta = ev.asset_materialization.metadata
    assert meta["plots"].value.count("data:image/png;base64,") >= 2
    crit = meta["criteria"].value
    assert [c.name for c in crit.schema.columns] == [
        "criterion",
        "p_value",
        "p_holm",
        "passed",
        "counted",
        "figure",
    ]
    assert all(c.description for c in crit.schema.columns) and len(crit.records) >= 3
    # independent: realized direction of each served time from the stored series and the config's hold band
    series = wh.read_table("series", "m").sort_values("timestamp").reset_index(drop=True)
    cfg = json.loads((home / "config.json").read_text())
    from nq_dagster.config import PipelineConfig

    pc = PipelineConfig(**cfg)
    t = make_targets(series["value"].to_numpy(), pc.horizon, pc.hold_band, pc.feature_window)
    pos = series.index[series["timestamp"].isin(served["timestamp"])].to_numpy()
    y = t["direction"].to_numpy()[pos][:-1]
    pred = served["direction"].map({"down": -1, "hold": 0, "up": 1}).to_numpy()[:-1]
    assert metrics["live_accuracy"] == pytest.approx(float(np.mean(pred == y)))


def test_served_predictions_equal_the_streaming_jobs(base, tmp_path, monkeypatch):
    """The same ticks, posted to the server in one data directory and landed as a file for the Dagster
    streaming job in a copy of it, give the same predictions."""
    from dagster import DagsterInstance

    from nq_dagster.definitions import defs

    served_home = copy_home(base[0], tmp_path / "a" / "nq")
    job_home = copy_home(base[0], tmp_path / "b" / "nq")
    ticks = base[1].iloc[:25]
    k = keys(served_home)
    srv = ThreadServer(served_home)
    try:
        c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]))
        served = [
            c.post("/api/v1/process/realtime", json=tick("m", t, v)).json()
            for t, v in zip(ticks.timestamp, ticks.value, strict=True)
        ]
    finally:
        srv.stop()
    landing = job_home / "landing" / "m"
    landing.mkdir(parents=True)
    ticks.to_csv(landing / "new.csv", index=False)
    monkeypatch.setenv("NQ_HOME", str(job_home))
    monkeypatch.setenv("DAGSTER_HOME", str(job_home / "dagster"))
    res = defs.resolve_job_def("streaming").execute_in_process(
        partition_key="m", instance=DagsterInstance.get(), raise_on_error=False
    )
    assert res.success and all(c.passed for c in res.get_asset_check_evaluations())
    wh = Warehouse(job_home)
    parts = [p for p in wh.table_parts("predictions", "m") if p.stem.startswith("stream-")]
    streamed = pd.concat([wh.read_part(p).to_pandas() for p in parts]).sort_values("timestamp")
    assert len(streamed) == len(served)
    assert list(streamed["prediction_id"]) == [s["prediction_id"] for s in served]
    assert list(streamed["direction"]) == [s["direction"] for s in served]
    assert np.allclose(streamed["confidence"], [s["confidence"] for s in served], rtol=0, atol=1e-12)
    assert np.allclose(streamed["predicted_change"], [s["predicted_change"] for s in served], rtol=1e-12)


def test_a_slow_subscriber_is_closed_and_the_others_keep_up():
    """The hub's policy without sockets: a subscriber whose queue is full is dropped (its sender then closes
    the socket with 1013); the others get every prediction."""
    import asyncio

    from nq_dagster.serve.http.hub import Hub
    from nq_dagster.serve.http.telemetry import Metrics

    async def run():
        m = Metrics()
        hub = Hub(m, limit=3)
        _, fast = hub.add({"a"}, 0.0, set())
        _, slow = hub.add({"a"}, 0.0, set())
        got = []
        for i in range(5):
            hub.publish([{"source": "a", "confidence": 0.5, "direction": "up", "i": i}])
            got.append((await fast.get())["predictions"][0]["i"])
        drained = [slow.get_nowait() for _ in range(slow.qsize())]
        return got, drained, len(hub.subs), m.ws_dropped._value.get()

    got, drained, left, dropped = asyncio.run(run())
    assert got == [0, 1, 2, 3, 4] and drained == [None] and left == 1 and dropped == 1


def test_key_store_sees_new_keys_at_once_and_revocations_within_a_second(tmp_path, monkeypatch):
    """The server's key store re-reads the key file at most once a second (a stat per request was 14 % of the
    event loop): a key created by another process works at once, a revoked one is refused within RELOAD_S;
    writes never start from the cached copy (three keys created in a row all stay)."""
    import nq_dagster.serve.keys as keymod

    server, cli = KeyStore(tmp_path), KeyStore(tmp_path)
    made = [cli.create(role)[0] for role in ("viewer", "developer", "admin")]
    assert all(server.verify(k) is not None for k in made)
    assert len(KeyStore(tmp_path).list()) == 3
    newer = cli.create("viewer")[0]
    assert server.verify(newer) is not None  # created after the server's last read: found at once
    cli.revoke(server.verify(made[0]).id)
    clock = [keymod.time.monotonic()]
    monkeypatch.setattr(keymod.time, "monotonic", lambda: clock[0])
    clock[0] += keymod.RELOAD_S + 0.01
    assert server.verify(made[0]) is None and server.verify(made[1]) is not None


def test_the_servers_parts_are_compacted_as_they_accumulate(home, ticks):
    """A part per source every flush interval, for as long as the server runs: past the limit the flusher
    merges them (raw_ticks into a compacted part, predictions' live parts into one live part), and every tick
    is still stored and predicted once."""
    s = ThreadServer(home)
    s.server.engine.wh.compact_parts = 3  # the engine's warehouse (the flusher's), before the first tick
    try:
        c = httpx.Client(base_url=s.url, headers=auth(keys(home)["developer"]))
        n = 40
        for i in range(n):  # several flushes (every 0.2 s here)
            r = c.post("/api/v1/process/realtime", json=tick("m", ticks.timestamp[i], ticks.value[i]))
            assert r.status_code == 200, r.text
            time.sleep(0.03)
        wh = Warehouse(home)
        deadline = time.monotonic() + 15
        while len(served_rows(wh, "predictions", "m")) < n and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        s.stop()
    for table in ("raw_ticks", "predictions"):
        rows = served_rows(wh, table, "m")
        assert len(rows) == n and set(pd.to_datetime(rows["timestamp"], utc=True)) == set(ticks.timestamp[:n])
    stems = [p.stem for p in wh.table_parts("predictions", "m")]
    assert any(x.startswith("stream-compact-") for x in stems)
    assert sum(x.startswith("serve-") for x in stems) <= 3
    assert any(p.stem.startswith("compact-") for p in wh.table_parts("raw_ticks", "m"))


def test_routes_called_directly_answer_as_through_the_router(home, srv, ticks, caplog):
    """Exact-path routes skip Starlette's router and error middlewares (`serve.http.app.DirectRoutes`): the
    answers, the request id and the metrics label must be the router's, and an unexpected error in an endpoint
    a 500 JSON answer with the request id, its traceback logged, the server still serving."""
    k = keys(home)
    c = httpx.Client(base_url=srv.url, headers=auth(k["viewer"]))
    assert ("POST", "/api/v1/process/realtime") in srv.server._direct
    assert not any("{" in path for _, path in srv.server._direct)  # templated paths go through the router
    r = c.get("/api/v1/ping", headers={"X-Request-Id": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    assert c.get("/api/v1/ping", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/v1/config/fusion").status_code == 200  # a route with a parameter: the router
    assert c.post("/api/v1/ping").status_code == 405  # no POST route there: the router's answer

    async def broken(request):
        raise RuntimeError("boom")

    srv.server._direct[("GET", "/api/v1/ping")] = broken
    with caplog.at_level("ERROR", logger="nq.serve"):
        r = c.get("/api/v1/ping", headers={"X-Request-Id": "req-500"})
    assert (
        r.status_code == 500
        and r.json()["request_id"] == "req-500"
        and r.headers["x-request-id"] == "req-500"
    )
    assert "boom" not in r.text and any("req-500" in m.getMessage() for m in caplog.records)
    assert c.get("/api/v1/status").status_code == 200
    text = c.get("/metrics").text
    assert 'nq_http_requests_total{code="500",endpoint="/api/v1/ping",method="GET"} 1.0' in text


def test_a_server_with_two_prediction_processes_answers_as_one(home, ticks):
    """`nq serve --processes 2`: the sources shared out between the server's process and a worker process;
    every answer equals the one prediction path's, the status shows where each source is, and SIGTERM saves
    the states of both shards."""
    k = keys(home)
    srv = ProcessServer(home, extra=["--processes", "2"])
    sources = ["m", *CLONES[:3]]
    n = 10
    try:
        got = {s: [] for s in sources}
        c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]), timeout=30)
        for i in range(n):
            for s in sources:
                r = c.post("/api/v1/process/realtime", json=tick(s, ticks.timestamp[i], ticks.value[i]))
                assert r.status_code == 200, r.text
                got[s].append(r.json())
        models = c.get("/api/v1/status", headers=auth(k["viewer"])).json()["components"]["models"]
        assert all(models[s]["rows_seen"] == 600 + n for s in sources)
        assert {models[s]["process"] for s in sources} == {0, 1}  # both processes served some
        assert models["m"]["last_timestamp"] == ticks.timestamp[n - 1].isoformat()
    finally:
        assert srv.stop() in (
            0,
            -signal.SIGTERM,
        )  # (uvicorn re-raises the signal after its graceful shutdown)
    assert '"Shutdown complete' in srv.output() or "Finished server process" in srv.output()
    assert "Traceback" not in srv.output(), srv.output()
    wh = Warehouse(home)
    for s, p in _as_one_path(wh, got, ticks, n).items():
        live = wh.load_artifact("live_state", s)  # saved at SIGTERM, from whichever shard held the source
        assert live.stream.n_rows == 600 + n and live.stream.last_ts == p.serving_state(s).stream.last_ts


def _as_one_path(wh: Warehouse, got: dict[str, list[dict]], ticks, n: int) -> dict[str, Predictor]:
    """Each source's served answers against its first n ticks through the one prediction path from training's
    state (the same predictions; batched float32 rounding apart); returns those predictors."""
    out = {}
    for s, answers in got.items():
        p = out[s] = Predictor()
        p.load(wh.load_artifact("serving_state", s))
        want = p.advance(s, ticks.value[:n].to_numpy(), ticks.timestamp[:n].to_numpy())
        assert [g["prediction_id"] for g in answers] == [w["prediction_id"] for w in want]
        assert [g["direction"] for g in answers] == [w["direction"] for w in want]
        assert np.allclose([g["confidence"] for g in answers], [w["confidence"] for w in want], rtol=1e-6)
    return out


def _prediction_workers(pid: int) -> list[int]:
    """The server's prediction processes (multiprocessing's spawned workers, not its resource tracker)."""
    import subprocess

    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    out = []
    for k in kids:
        with open(f"/proc/{k}/cmdline", "rb") as fh:
            if b"spawn_main" in fh.read():
                out.append(int(k))
    return out


def test_a_prediction_process_that_dies_is_restarted_without_a_failed_request(home, ticks):
    """kill -9 of `nq serve --processes 2`'s prediction process: the next batch that needs it starts it again,
    loads its sources from their saved states and the log, and answers; every answer, before and after, equals
    the one prediction path's."""
    import os

    k = keys(home)
    srv = ProcessServer(home, extra=["--processes", "2", "--flush-interval", "0.5"])
    sources = ["m", *CLONES[:3]]
    got = {s: [] for s in sources}
    n1, n = 8, 16
    try:
        c = httpx.Client(base_url=srv.url, headers=auth(k["developer"]), timeout=60)

        def post(i):
            for s in sources:
                r = c.post("/api/v1/process/realtime", json=tick(s, ticks.timestamp[i], ticks.value[i]))
                assert r.status_code == 200, r.text
                got[s].append(r.json())

        for i in range(n1):
            post(i)
        time.sleep(
            1.5
        )  # a flush: some of the ticks are in the tables and the live states, the rest in the log
        workers = _prediction_workers(srv.proc.pid)
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        for i in range(n1, n):
            post(i)
        models = c.get("/api/v1/status", headers=auth(k["viewer"])).json()["components"]["models"]
        assert all(models[s]["rows_seen"] == 600 + n for s in sources)
        assert {models[s]["process"] for s in sources} == {0, 1}
        assert len(_prediction_workers(srv.proc.pid)) == 1  # a new one
    finally:
        srv.stop()
    assert '"prediction_process_restarted"' in srv.output()
    _as_one_path(Warehouse(home), got, ticks, n)


def test_a_huge_value_or_an_impossible_time_is_refused_alone_and_poisons_nothing(home, srv, ticks):
    """Issue 26 items 2 and 3: 1e160 (finite, but far beyond the source's training scale) and a year-9999
    timestamp are refused with 422 naming the value or time, while another key's good ticks posted at the same
    moment (in the same batches) are answered; afterwards the source still answers with finite numbers, in
    strict JSON."""
    from concurrent.futures import ThreadPoolExecutor

    k = keys(home)
    bad_key, good_key = KeyStore(home).create("developer", "60000/min", 1000)[0], k["developer"]
    url = f"{srv.url}/api/v1/process/realtime"
    late = ticks.timestamp[40] + pd.Timedelta(days=1)
    bad = [
        {"source": "m", "data": [1e160], "timestamp": late.isoformat()},
        {"source": "s1", "data": [1.0], "timestamp": "9999-12-31T00:00:00Z"},
        {"source": "s2", "data": [1e308], "timestamp": late.isoformat()},
    ]

    def post_bad() -> list:
        return [httpx.post(url, json=body, headers=auth(bad_key)) for body in bad * 4]

    def post_good() -> list:  # in order, one at a time, while the bad requests arrive beside them
        return [
            httpx.post(url, json=tick("s3", ticks.timestamp[i], ticks.value[i]), headers=auth(good_key))
            for i in range(30)
        ]

    with ThreadPoolExecutor(2) as pool:
        good_f, bad_f = pool.submit(post_good), pool.submit(post_bad)
        good, refused = good_f.result(), bad_f.result()
    assert all(r.status_code == 200 for r in good), [r.text for r in good if r.status_code != 200]
    assert all(r.status_code == 422 for r in refused), [r.text for r in refused]
    assert "outside what its model takes" in refused[0].json()["error"]["message"]
    assert "2262-04-11" in refused[1].json()["error"]["message"]
    # the refused values moved nothing: m goes on, finite, and every answer is strict JSON
    r = httpx.post(url, json=tick("m", ticks.timestamp[0], ticks.value[0]), headers=auth(good_key))
    assert r.status_code == 200
    body = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert np.isfinite(body["confidence"]) and np.isfinite(body["predicted_change"])


def test_key_rates_are_bounded():
    """Issue 26 item 6: `inf/s` was stored (and broke the key list); `1e-300/s` gave a 301-digit
    Retry-After."""
    from nq_dagster.serve.keys import parse_rate

    assert parse_rate("600/min") == 10.0 and parse_rate("1/h") == pytest.approx(1 / 3600)
    for bad in ("inf/s", "1e-300/s", "nan/s", "0/s", "-5/min", "2e6/s", "ten/s"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)
