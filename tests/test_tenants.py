"""Tenants (issue 27): two tenants, `acme` and `beta`, each with a source named `x` (stored `acme~x` and
`beta~x`, clones of the trained source `m`), on a real server (tests/serving.py). Each posts its own ticks, by
API key and by JWT; neither ever sees the other's ticks, predictions, outcomes, models, reports or WebSocket
messages, nor reaches the other's source by any route or name (the stored name included); the default
namespace (keys without a tenant) is today's; a tenant's admin administers its tenant only, the platform's
administrator every one; each quota refuses with its name in the error."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.sync.client import connect

from nq_dagster.serve.keys import KeyStore
from nq_dagster.store import Warehouse

from .serving import ThreadServer, copy_home

ISS, AUD = "https://idp.example/realms/nq", "nq-serve"
TENANTS = ("acme", "beta")
N_POST = 6  # ticks each tenant posts to its `x`
SCALE = {"acme": 1.0, "beta": 1.004}  # beta's values differ from acme's: whose a record is shows in its value


@contextlib.contextmanager
def environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def clone_source(wh: Warehouse, stored: str, marker: str) -> None:
    """`m`'s serving state, raw ticks and report under the stored name `stored` (a tenant's source); the
    report carries `marker` so that whose report a route served shows."""
    st = wh.load_artifact("serving_state", "m")
    wh.save_artifact(
        "serving_state", stored, dataclasses.replace(st, model=dataclasses.replace(st.model, source=stored))
    )
    raw = wh.read_table("raw_ticks", "m")
    wh.write_table("raw_ticks", stored, raw.assign(source=stored), part="part-clone")
    wh.reports.mkdir(parents=True, exist_ok=True)
    (wh.reports / f"{stored}.html").write_text(f"<html><body>report of {marker}</body></html>")


@pytest.fixture(scope="module")
def world(trained_base, tmp_path_factory):
    """A server over a copy of the trained home with `acme~x` and `beta~x`, JWTs from a test identity
    provider accepted; keys per tenant and role, a default-namespace viewer and the platform's admin."""
    base, rest = trained_base
    root = tmp_path_factory.mktemp("tenants")
    home = copy_home(base, root / "nq")
    wh = Warehouse(home)
    for t in TENANTS:
        clone_source(wh, f"{t}~x", t)
    idp = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(idp.public_key()))
    (root / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]}))
    store = KeyStore(home)
    keys = {
        (t, role): store.create(role, "100000/min", 1000, 64, f"{t}-{role}", tenant=t)[0]
        for t in TENANTS
        for role in ("viewer", "developer", "admin")
    }
    keys["default", "viewer"] = store.create("viewer", "100000/min", 1000, 64, "default-viewer")[0]
    keys["default", "developer"] = store.create("developer", "100000/min", 1000, 64, "default-dev")[0]
    keys["platform", "admin"] = store.create("admin", "100000/min", 1000, 64, "platform")[0]
    with environ(NQ_JWT_JWKS=str(root / "jwks.json"), NQ_JWT_ISSUER=ISS, NQ_JWT_AUDIENCE=AUD):
        srv = ThreadServer(home)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            deadline = time.monotonic() + 120
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, c.get("/readyz").text
                time.sleep(0.2)
            yield {"srv": srv, "c": c, "keys": keys, "rest": rest, "idp": idp, "home": home}
    finally:
        srv.stop()


def token(world, tenant: str | None, roles=("developer",), sub="svc") -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 600, "roles": list(roles)}
    if tenant is not None:
        claims["tenant"] = tenant
    return jwt.encode(claims, world["idp"], algorithm="RS256", headers={"kid": "k1"})


def auth(bearer: str) -> dict:
    return {"Authorization": f"Bearer {bearer}"}


def tick(world, tenant: str, i: int) -> dict:
    rest = world["rest"]
    return {
        "source": "x",
        "data": [round(float(rest.value[i]) * SCALE[tenant], 6)],
        "timestamp": rest.timestamp[i].isoformat(),
    }


def ws_messages(url: str, bearer: str, sources, until: float) -> list[dict]:
    """Everything a subscription receives until the monotonic time `until` (its `subscribed` answer first)."""
    out = []
    msg = {"type": "subscription", "api_key": bearer}
    if sources is not None:
        msg["sources"] = sources
    with connect(url.replace("http", "ws") + "/ws/predictions", open_timeout=30) as ws:
        ws.send(json.dumps(msg))
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(json.loads(ws.recv(timeout=left)))
            except TimeoutError:
                return out


def test_two_tenants_with_a_source_of_the_same_name_never_see_each_other(world):
    import threading

    c, keys, url = world["c"], world["keys"], world["srv"].url
    # acme by API keys, beta by JWTs with its tenant claim: the same isolation either way
    post_as = {"acme": keys["acme", "developer"], "beta": token(world, "beta")}
    read_as = {"acme": keys["acme", "viewer"], "beta": token(world, "beta", roles=["viewer"], sub="bob")}

    # subscribers first: each tenant (every source it has, and `x` by name), the default namespace (all)
    listen_until = time.monotonic() + 25
    heard: dict[str, list] = {}
    subs = {
        "acme": (read_as["acme"], None),
        "beta": (read_as["beta"], ["x"]),
        "default": (keys["default", "viewer"], None),
        "acme-naming-beta": (read_as["acme"], ["beta~x", "x"]),
    }
    threads = [
        threading.Thread(
            target=lambda n=n, b=b, s=s: heard.__setitem__(n, ws_messages(url, b, s, listen_until))
        )
        for n, (b, s) in subs.items()
    ]
    for th in threads:
        th.start()
    time.sleep(2.0)  # subscribed before the ticks come

    posted: dict[str, list[dict]] = {t: [] for t in TENANTS}
    for i in range(N_POST):
        for t in TENANTS:
            body = tick(world, t, i)
            r = c.post("/api/v1/process/realtime", json=body, headers=auth(post_as[t]))
            assert r.status_code == 200, r.text
            rec = r.json()
            assert rec["source"] == "x" and rec["value"] == body["data"][0], rec
            posted[t].append(rec)
    for th in threads:
        th.join(40)

    values = {t: {r["value"] for r in posted[t]} for t in TENANTS}
    assert not values["acme"] & values["beta"]  # the two streams are told apart by their values
    for t in TENANTS:
        # predictions: its own `x` only, every record one it posted
        r = c.get("/api/v1/predictions", headers=auth(read_as[t]))
        assert r.status_code == 200 and set(r.json()) == {"x"}, r.text
        got = r.json()["x"]
        assert {p["value"] for p in got} == values[t] and all(p["source"] == "x" for p in got)
        by_name = c.get("/api/v1/predictions", params={"source": "x"}, headers=auth(read_as[t])).json()
        assert {p["value"] for p in by_name["x"]} == values[t]
        # outcomes: of its own predictions only (each one's time and confidence those of a record it got)
        outs = c.get("/api/v1/outcomes", headers=auth(read_as[t])).json()
        assert set(outs) == {"x"} and len(outs["x"]) >= N_POST - 1, outs
        own = {(p["timestamp"], p["confidence"]) for p in posted[t]}
        assert all(o["source"] == "x" and (o["timestamp"], o["confidence"]) in own for o in outs["x"])
        # models and status: its `x` only
        models = c.get("/api/v1/models", headers=auth(read_as[t])).json()["models"]
        assert set(models) == {"x"} and models["x"]["status"] == "loaded"
        st = c.get("/api/v1/status", headers=auth(read_as[t])).json()
        assert set(st["components"]["models"]) == {"x"}
        # its report, not the other's
        rep = c.get("/reports/x.html", headers=auth(read_as[t]))
        assert rep.status_code == 200 and f"report of {t}" in rep.text
        # WebSocket: its own records only, by its names
        msgs = [m for m in heard[t] if m["type"] == "batch"]
        assert heard[t][0]["type"] == "subscribed" and heard[t][0]["sources"] == ["x"]
        pushed = [p for m in msgs for p in m["predictions"]]
        assert {p["value"] for p in pushed} == values[t], heard[t]
        assert all(p["source"] == "x" for p in pushed)
        assert all(o["source"] == "x" for m in msgs for o in m["outcomes"])

    # the default namespace: today's sources, none of a tenant's
    default = c.get("/api/v1/predictions", headers=auth(keys["default", "viewer"])).json()
    assert "x" not in default and not any("~" in s for s in default) and "m" in default
    dmodels = c.get("/api/v1/models", headers=auth(keys["default", "viewer"])).json()["models"]
    assert "m" in dmodels and not any("~" in s or s == "x" for s in dmodels)
    assert not [m for m in heard["default"] if m["type"] == "batch"]
    # naming the other tenant's stored name in a subscription reaches nothing of it
    sub = heard["acme-naming-beta"]
    assert sub[0]["sources"] == ["beta~x", "x"]  # as named: in acme's namespace, `beta~x` is no source
    assert {p["value"] for m in sub[1:] for p in m["predictions"]} == values["acme"]
    # the platform's administrator sees every namespace by its stored names
    plat = c.get("/api/v1/predictions", headers=auth(keys["platform", "admin"])).json()
    assert {p["value"] for p in plat["acme~x"]} == values["acme"]
    assert {p["value"] for p in plat["beta~x"]} == values["beta"]
    assert plat["acme~x"][0]["source"] == "acme~x"


def test_a_tenant_cannot_reach_another_tenants_source_by_any_route(world):
    c, keys = world["c"], world["keys"]
    dev, admin, viewer = keys["acme", "developer"], keys["acme", "admin"], keys["acme", "viewer"]
    body = tick(world, "acme", N_POST + 1)
    for name in ("beta~x", "acme~x", "~x", "beta~"):
        r = c.post("/api/v1/process/realtime", json={**body, "source": name}, headers=auth(admin))
        assert r.status_code == 422 and r.json()["error"]["field"] == "source", r.text
        for path in ("/api/v1/predictions", "/api/v1/outcomes"):
            r = c.get(path, params={"source": name}, headers=auth(viewer))
            assert r.status_code == 422 and "not valid" in r.json()["error"]["message"], (path, r.text)
        assert c.get(f"/reports/{name}.html", headers=auth(viewer)).status_code == 404
    # the default namespace cannot name a tenant's source either
    r = c.post(
        "/api/v1/process/realtime",
        json={**body, "source": "beta~x"},
        headers=auth(keys["default", "developer"]),
    )
    assert r.status_code == 422
    r = c.get("/api/v1/predictions", params={"source": "beta~x"}, headers=auth(keys["default", "viewer"]))
    assert r.status_code == 422
    r = c.post(
        "/api/v1/process/batch",
        json={"data_points": [{"source": "beta~x", "timestamp": body["timestamp"], "value": 1.0}]},
        headers=auth(keys["default", "developer"]),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "data_points[0].source"

    # a batch naming beta's source: that point fails as an invalid name, acme's own is predicted as `x`
    before = c.get("/api/v1/predictions", params={"source": "x"}, headers=auth(keys["beta", "viewer"])).json()
    points = [
        {"source": "beta~x", "timestamp": body["timestamp"], "value": body["data"][0]},
        {"source": "x", "timestamp": body["timestamp"], "value": body["data"][0]},
    ]
    r = c.post("/api/v1/process/batch", json={"data_points": points, "job_id": "acme-job"}, headers=auth(dev))
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (job := c.get("/api/v1/jobs/acme-job", headers=auth(dev)).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["predicted"] == 1 and [r["source"] for r in job["results"]] == ["x"], job
    assert len(job["errors"]) == 1 and "beta~x" in job["errors"][0] and "acme~" not in job["errors"][0]
    after = c.get("/api/v1/predictions", params={"source": "x"}, headers=auth(keys["beta", "viewer"])).json()
    assert after == before  # beta's stream untouched
    # beta's keys (its admin included) cannot read acme's job, nor take its id
    for k in (keys["beta", "developer"], keys["beta", "admin"]):
        assert c.get("/api/v1/jobs/acme-job", headers=auth(k)).status_code == 404
        r = c.post(
            "/api/v1/process/batch", json={"data_points": points, "job_id": "acme-job"}, headers=auth(k)
        )
        assert r.status_code == 409
    # acme's admin reads its tenant's job; the platform's administrator every job
    assert c.get("/api/v1/jobs/acme-job", headers=auth(admin)).status_code == 200
    assert c.get("/api/v1/jobs/acme-job", headers=auth(keys["platform", "admin"])).status_code == 200
    # server-wide figures are the platform's
    assert c.get("/api/v1/metrics", headers=auth(viewer)).status_code == 403
    doc = c.get("/api/v1/metrics", headers=auth(keys["default", "viewer"])).json()
    assert "m" in doc["models"] and not any("~" in s for part in ("models", "live") for s in doc[part])
    plat = c.get("/api/v1/metrics", headers=auth(keys["platform", "admin"])).json()
    assert {"acme~x", "beta~x"} <= set(plat["models"])


def test_a_tenant_admin_administers_its_tenant_only(world):
    c, keys = world["c"], world["keys"]
    admin = keys["acme", "admin"]
    listed = c.get("/api/v1/keys", headers=auth(admin)).json()["keys"]
    assert listed and {k["tenant"] for k in listed} == {"acme"}
    new = c.post("/api/v1/keys", json={"role": "viewer", "name": "made-by-acme"}, headers=auth(admin))
    assert new.status_code == 201 and new.json()["tenant"] == "acme"  # its own tenant's, without saying so
    models = c.get("/api/v1/models", headers=auth(new.json()["key"])).json()["models"]
    assert set(models) == {"x"}
    r = c.post("/api/v1/keys", json={"role": "admin", "tenant": "beta"}, headers=auth(admin))
    assert r.status_code == 403 and r.json()["error"]["field"] == "tenant"
    beta_ids = [
        k["id"]
        for k in c.get("/api/v1/keys", headers=auth(keys["platform", "admin"])).json()["keys"]
        if k["tenant"] == "beta"
    ]
    assert beta_ids
    assert c.delete(f"/api/v1/keys/{beta_ids[0]}", headers=auth(admin)).status_code == 404
    assert c.put("/api/v1/config/fusion", json={"ridge_alpha": 2.0}, headers=auth(admin)).status_code == 403
    # the platform's administrator creates a key of any tenant; it reaches that tenant's sources
    made = c.post(
        "/api/v1/keys", json={"role": "viewer", "tenant": "beta"}, headers=auth(keys["platform", "admin"])
    )
    assert made.status_code == 201 and made.json()["tenant"] == "beta"
    r = c.get("/reports/x.html", headers=auth(made.json()["key"]))
    assert "report of beta" in r.text
    # a token whose tenant claim is no tenant name is refused, naming the claim
    r = c.get("/api/v1/ping", headers=auth(token(world, "no~pe")))
    assert r.status_code == 403 and "'tenant'" in r.json()["error"]["message"]


def test_quotas_refuse_naming_the_quota(world):
    c, keys, srv, home = world["c"], world["keys"], world["srv"], world["home"]
    store = KeyStore(home)
    gamma = store.create("developer", "100000/min", 1000, 64, "g", tenant="gamma")[0]
    delta = store.create("developer", "100000/min", 1000, 64, "d", tenant="delta")[0]
    slow = store.create("developer", "100000/min", 1000, 64, "s", tenant="slow")[0]
    quotas = home / "serve" / "tenants.json"
    quotas.write_text(
        json.dumps(
            {
                "default": {"ticks_per_minute": 100000},
                "tenants": {
                    "gamma": {"sources": 1},
                    "delta": {"stored_rows": 30},
                    "slow": {"ticks_per_minute": 3, "concurrent_requests": 1},
                    "acme": {"stored_rows": 100},
                },
            }
        )
    )
    time.sleep(1.2)  # the file is looked at once a second
    try:
        # ticks per minute: 3 requests, then 429 with the quota named and the RateLimit fields
        codes = [c.get("/api/v1/ping", headers=auth(slow)).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = c.get("/api/v1/ping", headers=auth(slow))
        assert r.status_code == 429 and r.json()["error"]["quota"] == "ticks_per_minute", r.text
        assert int(r.headers["Retry-After"]) >= 1 and r.headers["RateLimit-Remaining"] == "0"
        # concurrent requests: one of slow's requests in flight (held here), the next is refused
        rec = srv.server.state.keys.verify(slow)
        srv.server.state.access.enter(rec)
        try:
            r = c.get("/api/v1/ping", headers=auth(slow))
            assert r.status_code == 429 and r.json()["error"]["quota"] == "concurrent_requests", r.text
        finally:
            srv.server.state.access.leave(rec)
        # sources: gamma's first source is stored, a second is refused (403)
        csv = "timestamp,value\n" + "".join(f"2026-01-01T00:{i:02d}:00Z,{100 + i}\n" for i in range(40))
        r = c.post("/api/v1/upload", params={"source": "a"}, content=csv, headers=auth(gamma))
        assert r.status_code == 200 and r.json()["status"] == "ingested", r.text
        assert r.json()["sources"] == {"a": 40} and r.json()["stored_rows"] == 40
        assert Warehouse(home).stored_rows("raw_ticks", "gamma~a") == 40
        r = c.post("/api/v1/upload", params={"source": "b"}, content=csv, headers=auth(gamma))
        assert r.status_code == 403 and r.json()["error"]["quota"] == "sources", r.text
        assert "'b'" in r.json()["error"]["message"] and "gamma~" not in r.json()["error"]["message"]
        r = c.post("/api/v1/upload", params={"source": "a"}, content=csv, headers=auth(gamma))
        assert r.status_code == 200  # its one source takes more rows (a re-sent file: nothing new)
        # stored rows: delta's 40 rows are past its 30; acme's 600 cloned rows past its 100
        r = c.post("/api/v1/upload", params={"source": "a"}, content=csv, headers=auth(delta))
        assert r.status_code == 200, r.text
        r = c.post("/api/v1/upload", params={"source": "b"}, content=csv, headers=auth(delta))
        assert r.status_code == 403 and r.json()["error"]["quota"] == "stored_rows", r.text
        r = c.post(
            "/api/v1/process/realtime",
            json=tick(world, "acme", N_POST + 3),
            headers=auth(keys["acme", "developer"]),
        )
        assert r.status_code == 403 and r.json()["error"]["quota"] == "stored_rows", r.text
        # a tenant without quotas of its own gets the default's; the default namespace none
        assert c.get("/api/v1/ping", headers=auth(keys["beta", "viewer"])).status_code == 200
    finally:
        quotas.unlink()
        time.sleep(1.2)
    # the OpenAPI document names the quotas of an error
    doc = c.get("/openapi.json").json()
    quota = doc["components"]["schemas"]["ErrorDetail"]["properties"]["quota"]
    assert "stored_rows" in json.dumps(quota) and "ticks_per_minute" in json.dumps(quota)


def test_successful_answers_carry_the_rate_limit_fields(world):
    c, keys = world["c"], world["keys"]
    key = KeyStore(world["home"]).create("viewer", "1/h", 5, 8, "rl")[0]  # no refill during the test
    seen = []
    for _ in range(3):
        r = c.get("/api/v1/ping", headers=auth(key))
        assert r.status_code == 200
        seen.append((r.headers["RateLimit-Limit"], int(r.headers["RateLimit-Remaining"])))
    assert [s[0] for s in seen] == ["5", "5", "5"]
    assert [s[1] for s in seen] == [4, 3, 2]  # one token a request
    assert 3600 * 3 - 60 <= int(r.headers["RateLimit-Reset"]) <= 3600 * 3  # 3 tokens at 1/h: full in 3 h
    r = c.get("/api/v1/predictions", headers=auth(keys["acme", "viewer"]))
    assert r.headers["RateLimit-Limit"] == "1000"


def test_nq_status_talks_to_the_server_through_the_client(world, tmp_path, capsys):
    from nq_dagster.cli import main

    url, keys = world["srv"].url, world["keys"]
    key_file = tmp_path / "key"
    key_file.write_text(keys["acme", "viewer"] + "\n")
    assert main(["status", "--server", url, "--key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:]]  # after the health, engine and header lines
    assert f"{url}: " in out and ", ready" in out and "engine healthy" in out
    assert rows == ["x"] and "acme~x" not in out, out  # acme's models only, by its names
    assert main(["status", "--server", url, "--key-file", str(key_file), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ready"]["ready"] and set(doc["status"]["components"]["models"]) == {"x"}
    key_file.write_text(keys["default", "viewer"])
    assert main(["status", "--server", url, "--key-file", str(key_file), "--format", "json"]) == 0
    models = json.loads(capsys.readouterr().out)["status"]["components"]["models"]
    assert "m" in models and "x" not in models and not any("~" in s for s in models)
    # without a key: the overall health; no server there: exit 1 saying so
    assert main(["status", "--server", url]) == 0
    assert "send a viewer key" in capsys.readouterr().out
    from .serving import free_port

    assert main(["status", "--server", f"http://127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    key_file.write_text("")
    assert main(["status", "--server", url, "--key-file", str(key_file)]) == 2
    assert "the file is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "doc, why",
    [
        ({"tenants": {"acme": {"sources": 0}}}, "f: tenants.acme.sources: 0 is not a positive integer"),
        ({"tenants": {"acme": {"sources": 2.5}}}, "f: tenants.acme.sources: 2.5 is not a positive integer"),
        ({"default": {"rows": 5}}, "f: default: unknown quota 'rows'; the quotas are sources"),
        ({"tenants": {"a~b": {}}}, "f: tenants: tenant name 'a~b' is not valid"),
        ({"default": {"ticks_per_minute": True}}, "ticks_per_minute: True is not a positive number"),
        ([], 'f: expected {"default"'),
    ],
)
def test_a_bad_tenants_file_is_refused_naming_the_field(doc, why):
    from nq_dagster.serve.http.tenants import parse_tenants

    with pytest.raises(ValueError) as err:
        parse_tenants(doc, "f")
    assert why in str(err.value)


def test_tenant_quotas_merge_over_the_default():
    from nq_dagster.serve.http.tenants import Quota, parse_tenants

    default, named = parse_tenants(
        {"default": {"sources": 3, "stored_rows": 100}, "tenants": {"acme": {"stored_rows": None}}}, "f"
    )
    assert default == Quota(sources=3, stored_rows=100)
    assert named["acme"] == Quota(sources=3, stored_rows=None)
