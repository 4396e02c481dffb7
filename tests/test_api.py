"""The server's API as its ecosystem expects it (issue 27): the OpenAPI document generated from the models and
true to the real answers, the docs served offline, JSON 404/405, CORS off unless configured, liveness and
readiness while the models load, a busy port reported at once."""

from __future__ import annotations

import json
import socket
import threading
import time

import jsonschema
import pandas as pd
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from nq_dagster.client import Backoff, Client, NqApiError
from nq_dagster.serve.http import schemas
from nq_dagster.serve.http.app import create_server
from nq_dagster.serve.http.openapi import document
from nq_dagster.serve.keys import KeyStore
from nq_dagster.settings import Settings

from .serving import ThreadServer, build_trained_home, copy_home


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_trained_home(tmp_path_factory.mktemp("api"))


@pytest.fixture
def home(base, tmp_path):
    return copy_home(base[0], tmp_path / "nq")


def admin_key(home) -> str:
    return KeyStore(home).create("admin", "100000/min", 1000, 64, "test")[0]


def empty_server(tmp_path, **settings):
    """A server on an empty data directory (no model: starts in a second), `settings` the process's."""
    process = Settings(home=tmp_path / "nq", **settings)
    return create_server(process)


def validator(doc: dict, schema: dict) -> jsonschema.Draft202012Validator:
    """A validator of `schema` (a $ref into the components) with the document's $refs resolvable."""
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    registry = Registry().with_resource("urn:doc", DRAFT202012.create_resource(doc))
    ref = {"$ref": "urn:doc" + schema["$ref"]} if "$ref" in schema else schema
    if "anyOf" in schema:
        ref = {"anyOf": [{"$ref": "urn:doc" + s["$ref"]} for s in schema["anyOf"]]}
    return jsonschema.Draft202012Validator(ref, registry=registry)


def answer_schema(doc: dict, method: str, path: str, code: int) -> dict:
    return doc["paths"][path][method.lower()]["responses"][str(code)]["content"]["application/json"]["schema"]


def test_openapi_document_describes_every_route_and_the_real_answers(home, base):
    key = admin_key(home)
    ticks = base[1]
    srv = create_server(str(home))
    hdr = {"Authorization": f"Bearer {key}"}
    with TestClient(srv.app) as c:
        doc = c.get("/openapi.json").json()
        assert doc["openapi"] == "3.1.0"
        jsonschema.Draft202012Validator.check_schema(doc["components"]["schemas"]["PredictionRecord"])
        served = {
            (m, r.path)
            for r in srv.direct.router.routes
            if isinstance(r, Route)
            for m in r.methods
            if m != "HEAD"
        }
        described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert served == described
        for ops in doc["paths"].values():
            for op in ops.values():
                assert op["summary"] and "500" in op["responses"]
                for code, answer in op["responses"].items():  # every error: the one shape, with an example
                    if int(code) >= 400 and answer["content"]["application/json"].get("example"):
                        ex = answer["content"]["application/json"]["example"]
                        validator(doc, {"$ref": "#/components/schemas/ErrorAnswer"}).validate(ex)
                        assert ex["error"]["code"] == int(code)

        # the real answers match the document (and the client's models)
        t = ticks.iloc[0]
        one = {"source": "m", "data": [float(t.value)], "timestamp": t.timestamp.isoformat()}
        two = {
            "source": "m",
            "data": [float(v) for v in ticks.value[1:3]],
            "timestamps": [x.isoformat() for x in ticks.timestamp[1:3]],
        }
        real = [
            ("POST", "/api/v1/process/realtime", one, 200),
            ("POST", "/api/v1/process/realtime", two, 200),
            ("POST", "/api/v1/process/realtime", {"source": "m", "data": ["x"]}, 422),
            ("POST", "/api/v1/process/realtime", {**one, "source": "nobody"}, 409),
            ("GET", "/api/v1/predictions", None, 200),
            ("GET", "/api/v1/outcomes", None, 200),
            ("GET", "/api/v1/models", None, 200),
            ("GET", "/api/v1/validation/history", None, 200),
            ("GET", "/api/v1/validation/history?source=a%20b", None, 422),
            ("GET", "/api/v1/status", None, 200),
            ("GET", "/api/v1/metrics", None, 200),
            ("GET", "/api/v1/keys", None, 200),
            ("GET", "/api/v1/config/{service}", None, 200),
            ("GET", "/livez", None, 200),
            ("GET", "/readyz", None, 200),
            ("GET", "/api/v1/jobs/{job_id}", None, 404),
        ]
        for method, path, body, code in real:
            url = path.replace("{service}", "fusion").replace("{job_id}", "nope")
            r = c.request(method, url, json=body, headers=hdr)
            assert r.status_code == code, (path, r.text)
            path = path.split("?")[0]
            validator(doc, answer_schema(doc, method, path, code)).validate(r.json())
        rec = schemas.PredictionRecord.model_validate(
            c.post("/api/v1/process/realtime", json=one, headers=hdr).json()
        )
        assert rec.duplicate is True and rec.neuromorphic_results is not None
        r = c.post(
            "/api/v1/process/batch",
            json={"data_points": [{"source": "m", "timestamp": 1, "value": 1.0}]},
            headers=hdr,
        )
        assert r.status_code == 202
        validator(doc, answer_schema(doc, "POST", "/api/v1/process/batch", 202)).validate(r.json())


def test_a_route_the_document_does_not_describe_is_refused():
    async def hidden(request):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(RuntimeError, match="undocumented.*'/api/v1/hidden'"):
        document([Route("/api/v1/hidden", hidden, methods=["GET"])])


def test_docs_offline_json_404_405_and_cors(tmp_path):
    srv = empty_server(tmp_path)
    with TestClient(srv.app) as c:
        page = c.get("/docs")
        assert page.status_code == 200
        assets = [a for a in page.text.split('"') if a.startswith("/static/")]
        assert len(assets) == 3 and all(c.get(a).status_code == 200 for a in assets)
        assert '"/openapi.json"' in c.get("/static/docs.js").text
        assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
        for method, path, code in (("GET", "/nope", 404), ("DELETE", "/api/v1/ping", 405)):
            r = c.request(method, path)
            assert r.status_code == code and r.json()["error"]["code"] == code and r.json()["request_id"]
        # CORS off by default: a preflight is not answered with an allowed origin
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        r = c.options("/api/v1/process/realtime", headers=pre)
        assert "access-control-allow-origin" not in r.headers
    srv = empty_server(tmp_path / "b", serve_cors_origins="https://app.example")
    with TestClient(srv.app) as c:
        r = c.options(
            "/api/v1/process/realtime", headers={**pre, "Access-Control-Request-Headers": "authorization"}
        )
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.get("/api/v1/ping", headers={"Origin": "https://app.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options("/api/v1/ping", headers={**pre, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_the_port_answers_while_models_load_and_readyz_says_what_is_missing(home, monkeypatch):
    from nq_dagster.serve.engine.watcher import Models

    gate = threading.Event()
    real_load = Models.load

    def slow_load(self, source):
        if source != "m":
            gate.wait(60)
        return real_load(self, source)

    monkeypatch.setattr(Models, "load", slow_load)
    key = admin_key(home)
    hdr = {"Authorization": f"Bearer {key}"}
    t0 = time.monotonic()
    srv = create_server(str(home), background=True)
    assert time.monotonic() - t0 < 5
    with TestClient(srv.app) as c:
        assert c.get("/livez").json()["status"] == "alive"
        deadline = time.monotonic() + 60
        while c.get("/readyz").json()["models"].get("m") != "loaded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503
        doc = r.json()
        assert doc["ready"] is False and doc["models"]["m"] == "loaded" and doc["models"]["s1"] == "loading"
        assert "models loading: 5 of 6" in doc["missing"][0]
        r = c.post(
            "/api/v1/process/realtime", json={"source": "m", "data": [1.0], "timestamp": 1}, headers=hdr
        )
        assert (
            r.status_code == 503
            and r.headers["retry-after"] == "2"
            and "loading" in r.json()["error"]["message"]
        )
        models = c.get("/api/v1/models", headers=hdr).json()["models"]
        assert models["m"]["status"] == "loaded" and models["m"]["model_version"]
        assert models["s1"] == {"status": "loading"}
        assert c.get("/api/v1/status").json()["status"] == "degraded"
        gate.set()
        assert srv.state.startup.wait(60)
        r = c.get("/readyz")
        assert (
            r.status_code == 200
            and r.json()["missing"] == []
            and set(r.json()["models"].values()) == {"loaded"}
        )


def test_a_stop_while_the_models_load_is_not_held_for_them(home, monkeypatch):
    from nq_dagster.serve.engine.watcher import Models

    gate, real_load = threading.Event(), Models.load

    def slow_load(self, source):
        gate.wait(60)
        return real_load(self, source)

    monkeypatch.setattr(Models, "load", slow_load)
    srv = create_server(str(home), background=True)
    t0 = time.monotonic()
    with TestClient(srv.app) as c:  # leaving it runs the lifespan's shutdown, as SIGTERM does
        assert c.get("/readyz").status_code == 503
    assert time.monotonic() - t0 < 10
    gate.set()
    assert srv.state.startup.wait(60)
    srv.engine.close()  # the engine the start finished meanwhile (this process's threads)


def test_a_busy_port_is_reported_at_once_in_one_line(tmp_path, capfd):
    from nq_dagster.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        rc = main(["--home", str(tmp_path / "nq"), "serve", "--port", str(port)])
        took = time.monotonic() - t0
    err = capfd.readouterr().err.strip()
    assert rc == 2 and took < 20
    assert (
        err == f"nq serve: port {port} on 127.0.0.1 is in use (another server?): choose another with --port"
    )


def test_answers_models_parse_the_documented_examples():
    from nq_dagster.serve.http.operations import RECORD_EXAMPLE

    rec = schemas.PredictionRecord.model_validate(RECORD_EXAMPLE)
    assert rec.direction in ("up", "down", "hold") and 0 <= rec.confidence <= 1
    assert json.loads(rec.model_dump_json())["probabilities"] == RECORD_EXAMPLE["probabilities"]
    assert pd.Timestamp(rec.timestamp).tzinfo is not None


class FixedBackoff(Backoff):
    def delay(self, attempt, response):
        return super().delay(attempt, response) if response is not None else 0.05


def test_client_predicts_honours_retry_after_and_resumes_its_subscription(home, base):
    """The client package against a real server: typed answers, a 429 retried after its Retry-After, and a
    subscription that outlives a server restart: the predictions served while it was away come first (marked
    resumed), each prediction exactly once, in order."""
    ticks = base[1]
    admin = admin_key(home)
    slow = KeyStore(home).create("developer", "60/min", 1, 4, "slow")[0]
    srv = ThreadServer(home)
    port = srv.port

    def post(nq, i):
        return nq.predict("m", float(ticks.value[i]), ticks.timestamp[i].isoformat())

    try:
        with Client(srv.url, admin) as nq:
            assert nq.wait_ready(30).ready
            rec = post(nq, 0)
            assert isinstance(rec, schemas.PredictionRecord) and rec.source == "m" and rec.duplicate is False
            two = nq.predict(
                "m", [float(v) for v in ticks.value[1:3]], [t.isoformat() for t in ticks.timestamp[1:3]]
            )
            assert [r.timestamp for r in two] == [t.isoformat() for t in ticks.timestamp[1:3]]
            assert nq.models().models["m"].status == "loaded"
            with pytest.raises(NqApiError) as err:
                nq.predict("m", ["x"], [1])
            assert err.value.status == 422 and err.value.field == "data[0]" and err.value.request_id
        with Client(srv.url, slow) as nq:
            post(nq, 3)
            t0 = time.monotonic()
            post(nq, 4)  # the bucket is empty: 429, Retry-After 1, then accepted
            assert time.monotonic() - t0 >= 0.9
        with Client(srv.url, slow, backoff=Backoff(retries=0)) as nq, pytest.raises(NqApiError) as err:
            post(nq, 5)
        assert err.value.status == 429

        with Client(srv.url, admin) as nq:
            stream = nq.subscribe(["m"], backoff=FixedBackoff())  # connects at the first next()
            threading.Timer(1.0, post, (nq, 5)).start()
            first = next(stream)
            assert first.type == "prediction" and first.prediction.timestamp == ticks.timestamp[5].isoformat()
            srv.stop()
            srv = ThreadServer(home, port=port)  # the same data directory: its tick log recovered
            post(nq, 6)
            post(nq, 7)  # both served while the subscriber was away
            got = predictions(stream, 2)
            assert [m.prediction.timestamp for m in got] == [t.isoformat() for t in ticks.timestamp[6:8]]
            assert all(m.resumed for m in got)
            post(nq, 8)
            (live,) = predictions(stream, 1)  # live again, and nothing twice
            assert live.prediction.timestamp == ticks.timestamp[8].isoformat() and not live.resumed
            stream.close()
    finally:
        srv.stop()


def predictions(stream, n: int) -> list:
    """The next `n` prediction messages of a subscription (outcome messages passed over)."""
    out = []
    while len(out) < n:
        m = next(stream)
        if m.type == "prediction":
            out.append(m)
    return out
