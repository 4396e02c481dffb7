"""The prediction server (`nq serve`, issue 12) against the same app's authenticated no-op route (`GET
/api/v1/ping`: routing, request id, key check, rate limit, JSON answer, no engine) as the floor, in one run.

Builds a temporary warehouse with the demo market source market_A trained through the whole graph (default
config), registers its model under 32 more names (each name its own encoder seed and reservoir weights),
starts `nq serve` as its own process on a loopback port, then measures with a minimal asyncio HTTP/1.1
keep-alive client (so that the client, on the same 2 cores, costs as little as possible):
1. realtime single tick at concurrency 1: latency p50 / p95 / p99 over 400 requests; the floor's the same way;
2. throughput at concurrency 32 (32 connections, each posting its own source's ticks in order) for 10 s:
   predictions/s, and the floor's requests/s at concurrency 32;
3. WebSocket delay: a subscriber to one source; 300 ticks posted one at a time; time from sending the POST to
the
   subscriber receiving the prediction, p50 / p95.

Run: .venv/bin/python -m bench.serve_bench [--prepared DIR] (DIR: a home prepared once and copied for each
run; alternating runs of two versions of the code then share the data and skip the setup)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)
from nq_dagster.client import Client

START_TIMEOUT_S = 900.0


class Conn:
    """One keep-alive HTTP/1.1 connection; `request` returns (status, body)."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port, self.key = host, port, key

    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.w.write(head + body)
        status_line = await self.r.readline()
        length = 0
        while (line := await self.r.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.r.readexactly(length)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tick_body(source: str, ts: pd.Timestamp, v: float) -> bytes:
    return json.dumps({"source": source, "data": [v], "timestamp": ts.isoformat()}).encode()


async def latency_c1(port, key, source, start, step, values) -> tuple[np.ndarray, np.ndarray]:
    c = await Conn("127.0.0.1", port, key).open()
    lat, floor = [], []
    for i, v in enumerate(values):
        t = time.perf_counter()
        code, _ = await c.request(
            "POST", "/api/v1/process/realtime", tick_body(source, start + (i + 1) * step, v)
        )
        lat.append(time.perf_counter() - t)
        assert code == 200, code
        t = time.perf_counter()
        code, _ = await c.request("GET", "/api/v1/ping")
        floor.append(time.perf_counter() - t)
        assert code == 200
    return 1000 * np.array(lat[20:]), 1000 * np.array(floor[20:])


async def throughput(port, key, sources, start, step, last, seconds=10.0, route="realtime") -> float:
    """Requests per second of len(sources) clients, each posting its own source's ticks in order; `port` is
    the server's, or {source: port} (each source to the replica that owns it)."""
    rng = np.random.default_rng(1)
    stop = time.perf_counter() + seconds
    counts = []

    async def client(src):
        c = await Conn("127.0.0.1", port[src] if isinstance(port, dict) else port, key).open()
        n, v = 0, last
        while time.perf_counter() < stop:
            if route == "ping":
                code, _ = await c.request("GET", "/api/v1/ping")
            else:
                v *= float(np.exp(0.001 * rng.normal()))
                code, body = await c.request(
                    "POST", "/api/v1/process/realtime", tick_body(src, start + (n + 1) * step, v)
                )
            assert code == 200, (code, body[:200] if route != "ping" else b"")
            n += 1
        counts.append(n)

    t = time.perf_counter()
    await asyncio.gather(*(client(s) for s in sources))
    return sum(counts) / (time.perf_counter() - t)


async def ws_delay(port, key, source, start, step, last, n=300) -> np.ndarray:
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/predictions") as ws:
        await ws.send(json.dumps({"type": "subscription", "sources": [source], "api_key": key}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        c = await Conn("127.0.0.1", port, key).open()
        delays = []
        rng = np.random.default_rng(2)
        v = last
        for i in range(n):
            v *= float(np.exp(0.001 * rng.normal()))
            t = time.perf_counter()

            async def next_prediction():  # batches of outcomes only (a tick realizes an earlier one) pass
                while not (msg := json.loads(await ws.recv())).get("predictions"):
                    pass
                return msg

            recv = asyncio.ensure_future(next_prediction())
            code, _ = await c.request(
                "POST", "/api/v1/process/realtime", tick_body(source, start + (i + 1) * step, v)
            )
            assert code == 200
            msg = await recv
            delays.append(time.perf_counter() - t)
            assert msg["predictions"][0]["source"] == source
        return 1000 * np.array(delays[10:])


def prepare() -> tuple[Path, object, list[str], str]:
    """A warehouse with market_A trained and its model under 32 client names and "ws"; a developer key."""
    from bench.predict_bench import setup
    from nq_dagster.serve.keys import KeyStore
    from nq_dagster.store import Warehouse

    home = Path(tempfile.mkdtemp()) / "nq"
    t = time.perf_counter()
    setup(home)
    print(f"setup (demo data + pipeline for market_A, 3000 points): {time.perf_counter() - t:.1f} s")
    wh = Warehouse(home)
    sv = wh.load_artifact("serving_state", "market_A")
    raw = wh.read_table("raw_ticks", "market_A")
    names = [f"c{i:02d}" for i in range(32)]
    for n in [*names, "ws"]:
        wh.save_artifact("serving_state", n, replace(sv, model=replace(sv.model, source=n)))
        wh.write_table("raw_ticks", n, raw.assign(source=n), part="part-clone")
    key = KeyStore(home).create("developer", rate="1000000/s", burst=1_000_000, max_concurrent=64)[0]
    return home, sv, names, key


def start_server(
    home: Path,
    port: int,
    extra: list[str] = (),
    log_name: str = "serve.log",
    python_prelude: str | None = None,
) -> subprocess.Popen:
    """`nq serve` in its own process; returns once it is ready (its models loaded). `python_prelude`: Python
    run in that process before the command (a comparison run's patch)."""
    env = {**os.environ, "NQ_HOME": str(home)}
    log = open(home.parent / log_name, "wb")  # noqa: SIM115
    launch = ["-m", "nq_dagster.cli"]
    if python_prelude:
        launch = [
            "-c",
            f"{python_prelude}\nimport sys\nfrom nq_dagster.cli import main\nsys.exit(main(sys.argv[1:]))",
        ]
    proc = subprocess.Popen(
        [
            sys.executable,
            *launch,
            "--home",
            str(home),
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # (a shared, loaded machine took over 300 s to load and warm up the 34 sources)
    # the port opens before the models load (issue 27): ready once /readyz says so (the package's client)
    try:
        with Client(f"http://127.0.0.1:{port}") as nq:
            nq.wait_ready(timeout_s=START_TIMEOUT_S)
        assert proc.poll() is None, f"server exited (log: {log.name})"
    except BaseException:
        proc.kill()  # never left running behind a failed bench
        raise
    return proc


def prepared(keep: Path | None) -> tuple[Path, object, list[str], str]:
    """`prepare()`, or with `keep` (`--prepared DIR`) a copy of the home prepared there once: alternating runs
    of two versions of the code then measure the same data and skip the minutes of setup."""
    if keep is None:
        return prepare()
    from nq_dagster.store import Warehouse

    if not (keep / "bench.json").exists():
        home, _, names, key = prepare()
        shutil.copytree(home, keep / "nq")
        (keep / "bench.json").write_text(json.dumps({"names": names, "key": key}))
    meta = json.loads((keep / "bench.json").read_text())
    home = Path(tempfile.mkdtemp()) / "nq"
    shutil.copytree(keep / "nq", home)
    sv = Warehouse(home).load_artifact("serving_state", "market_A")
    return home, sv, meta["names"], meta["key"]


def main() -> None:
    keep = Path(sys.argv[sys.argv.index("--prepared") + 1]) if "--prepared" in sys.argv else None
    home, sv, names, key = prepared(keep)
    port = free_port()
    t = time.perf_counter()
    proc = start_server(home, port)
    try:
        print(f"server ready (34 sources loaded and warmed up) in {time.perf_counter() - t:.1f} s")
        step = pd.Timedelta(milliseconds=sv.model.step_ms)
        start = pd.Timestamp(sv.stream.last_ts, tz="UTC")
        last = float(sv.stream.values[-1])
        values = last * np.exp(np.cumsum(0.001 * np.random.default_rng(0).normal(size=420)))
        lat, floor = asyncio.run(latency_c1(port, key, "market_A", start, step, values))
        rate = asyncio.run(throughput(port, key, names, start, step, last))
        floor_rate = asyncio.run(throughput(port, key, names, start, step, last, seconds=5.0, route="ping"))
        ws = asyncio.run(ws_delay(port, key, "ws", start, step, last))
        with Client(f"http://127.0.0.1:{port}", key) as nq:
            status = nq.metrics().model_dump()
    finally:
        proc.terminate()
        proc.wait(60)
    pct = lambda a, q: np.percentile(a, q)  # noqa: E731
    print("\n| measure | nq serve | floor: authenticated no-op route | target |")
    print("|---|---|---|---|")
    print(
        f"| realtime single tick, concurrency 1, p50 / p95 / p99 | {pct(lat, 50):.2f} / {pct(lat, 95):.2f} / "
        f"{pct(lat, 99):.2f} ms | {pct(floor, 50):.2f} / {pct(floor, 95):.2f} / {pct(floor, 99):.2f} ms | "
        "p95 <= 10 ms |"
    )
    print(
        f"| throughput, concurrency 32 (32 sources) | {rate:,.0f} predictions/s | {floor_rate:,.0f} "
        "requests/s "
        f"(ours = {rate / floor_rate:.2f}x the floor) | >= 1,000 /s |"
    )
    print(
        f"| WebSocket delay, POST sent -> subscriber received, p50 / p95 | {pct(ws, 50):.2f} / "
        f"{pct(ws, 95):.2f} ms "
        "| | p95 <= 20 ms |"
    )
    print(
        "\nserver's own figures after the run (/api/v1/metrics): processing_time_ms p50 "
        f"{status['p50_latency_ms']:.2f}, "
        f"p95 {status['p95_latency_ms']:.2f}, p99 {status['p99_latency_ms']:.2f} over the last "
        f"{status['latency_window']} predictions; {status['total_predictions']} predictions in all"
    )
    print(f"CPU threads {os.cpu_count()}; client and server share them")


if __name__ == "__main__":
    main()
