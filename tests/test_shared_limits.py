"""Limits and batch jobs shared by replicas through PostgreSQL (`NQ_SERVE_SHARED_STORE`, serve/shared.py):
a real PostgreSQL (tests/pg.py) and three real `nq serve` processes on one data directory (replicas 0-2 of 3).

The three replicas are started once for the module; the tests run in file order and the last two are
destructive: `test_job_and_slots_survive_a_killed_replica` kills replica 0 with -9, `test_store_down_...`
stops PostgreSQL (and starts it again).
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from nq_dagster.serve.engine import stable_hash
from nq_dagster.serve.keys import KeyRecord, KeyStore
from nq_dagster.serve.limits import SharedLimits
from nq_dagster.serve.shared import SharedStore, StoreUnavailable

from .serving import CLONES, ProcessServer, copy_home, free_port

LEASE_S = 3.0  # the replicas' lease in the store: a killed one is dead to the others after this


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def store_url(pg_cluster):
    return pg_cluster.new_database()


@pytest.fixture(scope="module")
def trio(trained_base, store_url, tmp_path_factory):
    """Three `nq serve` replicas (0, 1, 2 of 3) sharing a data directory and the store."""
    base, _ = trained_base
    home = copy_home(base, tmp_path_factory.mktemp("shared") / "nq")
    (home / "serve").mkdir(exist_ok=True)
    (home / "serve" / "settings.json").write_text('{"body_limit": 8388608}')  # the long job below
    ports = [free_port() for _ in range(3)]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    mp = pytest.MonkeyPatch()
    mp.setenv("NQ_SERVE_SHARED_STORE", store_url)
    mp.setenv("NQ_SERVE_SHARED_LEASE_S", str(LEASE_S))
    servers = []
    try:
        for i in range(3):
            extra = ["--replicas", "3", "--replica", str(i), "--peers", peers, "--flush-interval", "1"]
            servers.append(ProcessServer(home, port=ports[i], extra=extra))
        yield home, servers
    finally:
        mp.undo()
        for s in servers:
            if s.proc.poll() is None:
                s.stop()


def new_key(home, **kw) -> str:
    return KeyStore(home).create("developer", **kw)[0]


def test_shared_bucket_is_one_budget_under_contention(store_url):
    """Two store handles (two replicas' worth) and eight threads take single tokens as fast as they can for
    1.5 s: what they got in total is within burst + rate x elapsed (one bucket), and not far under it."""
    stores = [SharedStore(store_url, replica=i, lease_s=LEASE_S) for i in range(2)]
    limits = [SharedLimits(s) for s in stores]
    rec = KeyRecord(
        "contended", "developer", "", rate_per_s=40.0, burst=10, max_concurrent=4, name="", created_at=""
    )
    got = [0] * 8
    t0 = time.monotonic()

    def hammer(i: int) -> None:
        while time.monotonic() - t0 < 1.5:
            if limits[i % 2].take(rec.id, rec.rate_per_s, rec.burst) == 0.0:
                got[i] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    total = sum(got)
    assert total <= rec.burst + rec.rate_per_s * elapsed + 1, (total, elapsed)
    assert total >= 0.6 * rec.rate_per_s * 1.5, (total, got)  # the budget is spent, not lost to contention
    # the slots: four in all across both handles, a fifth refused until one is given back
    assert [limits[i % 2].acquire(rec.id, rec.max_concurrent) for i in range(5)] == [True] * 4 + [False]
    limits[0].release(rec.id)
    assert limits[1].acquire(rec.id, rec.max_concurrent)
    assert 0 <= limits[0].tokens(rec.id) <= rec.burst  # the last take's count (RateLimit-Remaining)
    # admit = a token, then a slot, in one round trip: refused for the slot (all 4 taken), then for the rate
    assert limits[0].admit(rec.id, rec.rate_per_s, rec.burst, rec.max_concurrent) == (0.0, False)
    slow = KeyRecord("slow", "developer", "", 0.01, burst=1, max_concurrent=1, name="", created_at="")
    assert limits[1].admit(slow.id, slow.rate_per_s, slow.burst, slow.max_concurrent) == (0.0, True)
    wait, acquired = limits[0].admit(slow.id, slow.rate_per_s, slow.burst, slow.max_concurrent)
    assert 90 < wait <= 100 and not acquired  # one token at 0.01/s: about 100 s away, and no slot taken
    limits[1].release(slow.id)
    for s in stores:
        s.close()


def test_store_url_is_checked_and_its_password_never_shown():
    with pytest.raises(ValueError, match="NQ_SERVE_SHARED_STORE='mysql://u@db/x'"):
        SharedStore("mysql://u:secret@db/x", start=False)
    port = free_port()  # nothing listens there
    store = SharedStore(f"postgresql://nq:hunter2@127.0.0.1:{port}/x", start=False)
    rec = KeyRecord("k", "developer", "", rate_per_s=1.0, burst=1, max_concurrent=1, name="", created_at="")
    with pytest.raises(StoreUnavailable) as err:
        SharedLimits(store).take(rec.id, rec.rate_per_s, rec.burst)
    assert f"postgresql://nq@127.0.0.1:{port}/x" in str(err.value) and "hunter2" not in str(err.value)


def test_store_url_from_the_secrets_directory(tmp_path):
    """Kubernetes mounts the store's URL (its password inside) as a file in NQ_SECRETS_DIR (k8s/serve.yaml);
    the environment, when it sets the variable, wins; the URL is not in the settings' repr."""
    from nq_dagster.settings import Settings

    (tmp_path / "NQ_SERVE_SHARED_STORE").write_text("postgresql://u:pw@db:5432/nq\n")
    s = Settings.from_env({"NQ_SECRETS_DIR": str(tmp_path)})
    assert s.serve_shared_store == "postgresql://u:pw@db:5432/nq" and "pw@" not in repr(s)
    env = {"NQ_SECRETS_DIR": str(tmp_path), "NQ_SERVE_SHARED_STORE": "postgresql://other/x"}
    assert Settings.from_env(env).serve_shared_store == "postgresql://other/x"


def test_a_key_at_its_rate_over_three_replicas_gets_one_rate(trio):
    """One key (20 ticks/s, burst 10) hammered through all three replicas at once for 4 s: the requests and
    ticks accepted in total are within burst + rate x window, as from one server; each replica accepted some
    (the budget is shared, not given to one). Per-replica buckets would accept about three times as many."""
    home, servers = trio
    # 20/s: well under what three replicas answer on a loaded 2-core machine (60-90 requests/s in all at load
    # average 16), so the clients always ask for more than the rate
    key = new_key(home, rate="1200/min", burst=10, max_concurrent=64)
    window = 4.0
    accepted = [0, 0, 0]
    refused = [0, 0, 0]
    other: list[str] = []
    start = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=servers[i].url, headers=auth(key), timeout=10) as c:
            c.get("/livez")  # the connection is open before the window starts
            start.wait()
            t0 = time.monotonic()
            while time.monotonic() - t0 < window:
                r = c.get("/api/v1/ping")
                if r.status_code == 200:
                    accepted[i] += 1
                elif r.status_code == 429:
                    refused[i] += 1
                else:
                    other.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    start.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert not other, other[:3]
    total = sum(accepted)
    print(f"accepted {accepted} refused {refused} in {elapsed:.2f} s: {total / elapsed:.1f}/s, rate 20/s")
    assert sum(refused) > total, (accepted, refused)  # the clients asked for more than the rate
    assert total <= 10 + 20 * elapsed + 1, (accepted, elapsed)
    assert total >= 0.6 * 20 * window, (accepted, refused)
    assert all(a > 0 for a in accepted), accepted


def test_a_forwarded_request_is_counted_once(trio):
    """A realtime tick sent to a replica that does not own its source is admitted and charged there, and
    forwarded with a mark the owner checks (HMAC with the server secret), so the owner does not charge the
    key's one budget a second time: a key with a burst of 6 (and a refill of one an hour) gets 6 forwarded
    ticks, not 3. A mark forged by a client is counted as any request."""
    home, servers = trio
    src = next(s for s in CLONES if stable_hash(s) % 3 == 1)
    key = new_key(home, rate="1/h", burst=6, max_concurrent=8)
    codes = []
    for i, p in enumerate(_points(src, 8, start_at=50_000)):
        body = {"source": src, "data": [p["value"]], "timestamp": p["timestamp"]}
        r = httpx.post(f"{servers[0].url}/api/v1/process/realtime", headers=auth(key), json=body, timeout=30)
        codes.append(r.status_code)
        if r.status_code == 200:
            assert r.headers.get("x-nq-replica") == "1", i  # answered by the owner
    assert codes == [200] * 6 + [429] * 2, codes
    forger = new_key(home, rate="1/h", burst=2, max_concurrent=8)
    hdr = {**auth(forger), "X-NQ-Forwarded": "1"}
    got = [httpx.get(f"{servers[1].url}/api/v1/ping", headers=hdr, timeout=10).status_code for _ in range(3)]
    assert got == [200, 200, 429], got


def _hold(server: ProcessServer, key: str) -> socket.socket:
    """A realtime request whose body never finishes: admitted, it holds one of the key's slots while open."""
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(
        (
            "POST /api/v1/process/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        ).encode()
    )
    return s


def _ping(server: ProcessServer, key: str) -> httpx.Response:
    return httpx.get(f"{server.url}/api/v1/ping", headers=auth(key), timeout=10)


def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_concurrency_cap_holds_across_replicas(trio, store_url):
    """A key capped at 2 requests in flight: one held open on replica 0 and one on replica 1 take both slots,
    so replica 2 refuses the key (429 naming the cap); when one ends, replica 2 admits it again."""
    home, servers = trio
    key = new_key(home, rate="60000/min", burst=100, max_concurrent=2)
    a, b = _hold(servers[0], key), _hold(servers[1], key)
    try:
        _until(lambda: in_flight(store_url, key) == 2, 30, "the two held requests were not admitted")
        r = _ping(servers[2], key)
        assert r.status_code == 429, r.text
        assert "2 requests of this key are in flight" in r.json()["error"]["message"]
    finally:
        b.close()  # the client goes away: the request ends, its slot is released
    _until(lambda: _ping(servers[2], key).status_code == 200, 30, "the slot was not given back")
    a.close()
    _until(lambda: in_flight(store_url, key) == 0, 30, "a slot is still counted")


def test_a_job_posted_to_one_replica_is_answered_by_another(trio):
    """A batch job posted to replica 0 (sources it owns) is read, with its records, from replicas 1 and 2."""
    home, servers = trio
    key = new_key(home, rate="60000/min", burst=1000)
    src = next(s for s in CLONES if stable_hash(s) % 3 == 0)
    points = _points(src, 50, start_at=0)
    r = httpx.post(f"{servers[0].url}/api/v1/process/batch", headers=auth(key), json={"data_points": points})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]

    def done():
        got = httpx.get(f"{servers[1].url}/api/v1/jobs/{job_id}", headers=auth(key), timeout=10)
        return got.json() if got.status_code == 200 and got.json()["status"] == "done" else None

    job = _until(done, 60, "the job did not finish (seen from replica 1)")
    assert job["predicted"] == 50 and len(job["results"]) == 50
    assert [x["source"] for x in job["results"]] == [src] * 50
    other = httpx.get(f"{servers[2].url}/api/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
    assert other["results"] == job["results"]
    # another key does not see it on any replica
    stranger = new_key(home)
    assert httpx.get(f"{servers[2].url}/api/v1/jobs/{job_id}", headers=auth(stranger)).status_code == 404


_BASE_TS = pd.Timestamp("2031-01-01", tz="UTC")


def _points(source: str, n: int, start_at: int) -> list[dict]:
    rng = np.random.default_rng(7)
    values = 100 + np.cumsum(rng.normal(0, 0.5, n))
    return [
        {
            "source": source,
            "timestamp": (_BASE_TS + pd.Timedelta(minutes=start_at + i)).isoformat(),
            "value": v,
        }
        for i, v in enumerate(values.tolist())
    ]


def in_flight(store_url: str, key: str) -> int:
    """The key's requests in flight as the store counts them (live instances only), read directly."""
    import psycopg2

    conn = psycopg2.connect(store_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(sum(i.n), 0) FROM nq_inflight i JOIN nq_replicas r "
                "ON r.instance = i.instance WHERE i.key_id = %s AND r.expires_at > now()",
                (key.split("_")[1],),
            )
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_job_and_slots_survive_a_killed_replica(trio, store_url):
    """Replica 0 holds one of a key's two slots (replica 2 the other: replica 1 refuses the key) and runs a
    long job of another key (seen unfinished from replica 1); killed with -9, it stops answering. Within its
    lease, replica 1 says the job failed (why: replica 0 stopped; the records it had stored kept), and admits
    the capped key again: the dead replica's slot is free."""
    home, servers = trio
    capped = new_key(home, rate="60000/min", burst=1000, max_concurrent=2)
    held, other = _hold(servers[0], capped), _hold(servers[2], capped)
    _until(lambda: in_flight(store_url, capped) == 2, 30, "the two held requests were not admitted")
    r = _ping(servers[1], capped)
    assert r.status_code == 429 and "in flight" in r.json()["error"]["message"], r.text

    key = new_key(home, rate="60000/min", burst=1000)
    owned = [s for s in CLONES if stable_hash(s) % 3 == 0]
    unmodelled = next(f"nomodel{i}" for i in range(1000) if stable_hash(f"nomodel{i}") % 3 == 0)
    # 200 points to predict, then 20,000 of a source without a model, each refused alone: seconds of work
    points = _points(owned[0], 200, start_at=10_000) + _points(unmodelled, 20_000, start_at=0)
    r = httpx.post(
        f"{servers[0].url}/api/v1/process/batch", headers=auth(key), json={"data_points": points}, timeout=60
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    seen = httpx.get(f"{servers[1].url}/api/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
    assert seen["status"] in ("queued", "running"), "the job ended before the kill: make it longer"
    servers[0].stop(signal.SIGKILL)
    killed = time.monotonic()
    held.close()  # the kernel's connection, not the dead server's count: nothing is released by this

    def failed():
        got = httpx.get(f"{servers[1].url}/api/v1/jobs/{job_id}", headers=auth(key), timeout=10).json()
        return got if got["status"] == "failed" else None

    job = _until(failed, LEASE_S * 5, "the dead replica's job is still running")
    assert any("replica 0 stopped answering" in e for e in job["errors"]), job["errors"][-3:]
    assert job["predicted"] == len(job["results"]) <= 200  # what it had stored, records and count agreeing
    _until(
        lambda: _ping(servers[1], capped).status_code == 200, LEASE_S * 5, "the dead replica's slot is held"
    )
    print(f"job failed and slot freed {time.monotonic() - killed:.1f} s after the kill (lease {LEASE_S} s)")
    assert in_flight(store_url, capped) == 1  # replica 2's, still open
    other.close()


def test_store_down_refuses_with_503_naming_it_then_recovers(trio, pg_cluster, store_url):
    """PostgreSQL stopped: the replicas refuse limited requests with 503 naming the store (fail closed, never
    a per-replica budget), jobs too; the health routes still answer. Started again: served again."""
    home, servers = trio
    key = new_key(home, rate="60000/min", burst=1000)
    live = servers[1:]  # replica 0 was killed above
    assert _ping(live[0], key).status_code == 200
    pg_cluster.pause()
    try:
        store = store_url.split("/")[2].split("@")[-1]  # host:port
        for s in live:
            r = _until(lambda s=s: (r := _ping(s, key)).status_code == 503 and r, 10, "not refused")
            assert store in r.json()["error"]["message"] and "shared store" in r.json()["error"]["message"]
            assert r.headers["retry-after"] == "1"
            assert httpx.get(f"{s.url}/livez", timeout=10).status_code == 200
        r = httpx.get(f"{live[0].url}/api/v1/jobs/x", headers=auth(key), timeout=10)
        assert r.status_code == 503
    finally:
        pg_cluster.resume()
    for s in live:
        _until(lambda s=s: _ping(s, key).status_code == 200, 20, "not served again after the store came back")
