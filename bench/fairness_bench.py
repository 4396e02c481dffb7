"""Fairness between API keys in `nq serve` (issue 26 item 5): an abusive key at full speed beside a light key.

Same setup as bench/serve_bench.py (the demo market source trained with the default config, its model under
more names, `nq serve` in its own process on a loopback port, a minimal asyncio HTTP/1.1 client on the same
2 cores). Then, in one run:
1. unloaded: the light key posts 200 single ticks of its own source one after another; latency p50 / p95;
2. loaded: the abusive key (rate 1,000,000/s, so the rate limit does not stop it) posts 1,000-value requests
   on 4 connections, each connection its own source, back to back (from a second client process, bodies built
   beforehand), while the light key posts 200 single ticks as in 1; the light key's p50 / p95 and the
   abusive key's ticks/s;
3. the same as 2 against a server whose batches have no limit (`FairTicks`' three limits set to 10**9: a
   batch takes every waiting tick, whole 1,000-tick requests, as before issue 26), for comparison.
Target: the light key's loaded p95 within 5x its unloaded p95.

Run: .venv/bin/python -m bench.fairness_bench [--home DIR] [--no-ab]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.serve_bench import Conn, free_port, start_server, tick_body

LIGHT_TICKS = 200
HEAVY_VALUES = 1000
HEAVY_CONNECTIONS = 4
HEAVY_BODIES = 40  # requests built per abusive connection (more than a loaded phase sends)
# the loaded phase ends after this, however few light ticks were answered (before: seconds each)
LOADED_S = 60.0
UNLIMITED = "import nq_dagster.serve.engine.fair as f; f.FairTicks.__init__.__defaults__ = (10**9,) * 3"


async def light_latency(port, key, source, start, step, last, first: int, seconds: float = 1e9) -> np.ndarray:
    """The light key's latencies: LIGHT_TICKS single ticks one after another, or as many as `seconds`
    allow."""
    c = await Conn("127.0.0.1", port, key).open()
    rng = np.random.default_rng(first)
    v, lat = last, []
    stop = time.perf_counter() + seconds
    for i in range(LIGHT_TICKS):
        if time.perf_counter() > stop:
            break
        v *= float(np.exp(0.001 * rng.normal()))
        t = time.perf_counter()
        code, body = await c.request(
            "POST", "/api/v1/process/realtime", tick_body(source, start + (first + i + 1) * step, v)
        )
        lat.append(time.perf_counter() - t)
        assert code == 200, (code, body[:300])
    return 1000 * np.array(lat)


def heavy_bodies(src: str, start, step, last: float, count: int) -> list[bytes]:
    """`count` back-to-back HEAVY_VALUES-value request bodies of one source, built before the clock starts."""
    rng = np.random.default_rng(sum(map(ord, src)))
    out, v = [], last
    for k in range(count):
        vals = list(v * np.exp(np.cumsum(0.001 * rng.normal(size=HEAVY_VALUES))))
        v = vals[-1]
        stamps = [(start + (k * HEAVY_VALUES + i + 1) * step).isoformat() for i in range(HEAVY_VALUES)]
        out.append(json.dumps({"source": src, "data": vals, "timestamps": stamps}).encode())
    return out


def heavy_process(port: int, key: str, bodies: dict[str, list[bytes]], ready, done) -> None:
    """The abusive key's connections, in a process of their own (so the light key's client, timing its
    requests, does not share an event loop with them): each posts its bodies back to back until `done`."""

    async def heavy(src: str) -> None:
        c = await Conn("127.0.0.1", port, key).open()
        for body in bodies[src]:
            if done.is_set():
                return
            code, answer = await c.request("POST", "/api/v1/process/realtime", body)
            assert code == 200, (code, answer[:300])

    async def all_of_them() -> None:
        ready.set()
        await asyncio.gather(*(heavy(s) for s in bodies))

    asyncio.run(all_of_them())


def predictions(port: int, key: str) -> int:
    import httpx

    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/metrics", headers={"Authorization": f"Bearer {key}"})
    return int(r.json()["total_predictions"])


def loaded(port, heavy_key, light_key, sources, light, start, step, last, first) -> tuple:
    """The light key's latencies while HEAVY_CONNECTIONS clients (another process) post HEAVY_VALUES-value
    requests; the heavy key's ticks per second over the same time."""
    ctx = multiprocessing.get_context("fork")  # a spawned child spent minutes importing on a busy machine
    ready, done = ctx.Event(), ctx.Event()
    bodies = {s: heavy_bodies(s, start, step, last, HEAVY_BODIES) for s in sources}
    proc = ctx.Process(target=heavy_process, args=(port, heavy_key, bodies, ready, done))
    proc.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("the abusive client process did not start")
        time.sleep(2.0)  # the abusive key saturates the engine first
        t, before = time.perf_counter(), predictions(port, heavy_key)
        lat = asyncio.run(light_latency(port, light_key, light, start, step, last, first, seconds=LOADED_S))
        # the abusive key's share: every prediction the server made meanwhile but the light key's (a request
        # answers when its last tick is done: counting answers would miss the 1,000-value ones in flight)
        rate = (predictions(port, heavy_key) - before - len(lat)) / (time.perf_counter() - t)
    finally:
        done.set()
        proc.join(300)
        if proc.is_alive():
            proc.kill()
    return lat, rate


def run(home, heavy_key, light_key, names, sv, extra_python: str | None) -> dict:
    port = free_port()
    proc = start_server(home, port, log_name=f"fair-{port}.log", python_prelude=extra_python)
    try:
        step = pd.Timedelta(milliseconds=sv.model.step_ms)
        last = float(sv.stream.values[-1])
        start = pd.Timestamp(sv.stream.last_ts, tz="UTC")
        unloaded = asyncio.run(light_latency(port, light_key, "ws", start, step, last, 0))
        lat, heavy_rate = loaded(
            port, heavy_key, light_key, names[:HEAVY_CONNECTIONS], "ws", start, step, last, LIGHT_TICKS
        )
    finally:
        proc.terminate()
        proc.wait(120)
    out = {"unloaded": unloaded[10:], "loaded": lat[min(10, len(lat) // 2) :], "heavy_rate": heavy_rate}
    u, lo = out["unloaded"], out["loaded"]
    print(
        f"{home.name}: unloaded p50/p95 {np.percentile(u, 50):.1f}/{np.percentile(u, 95):.1f} ms, loaded "
        f"p50/p95/max {np.percentile(lo, 50):.1f}/{np.percentile(lo, 95):.1f}/{lo.max():.1f} ms over "
        f"{len(lo)} ticks, abusive {heavy_rate:,.0f} ticks/s",
        flush=True,
    )
    return out


def prepare_small(home: Path) -> tuple[object, list[str], str, str]:
    """The demo market source trained (default config) and its model under the heavy sources' names and "ws"
    (only these: loading 34 models made the server's start the longest part on a busy machine); the keys."""
    from bench.predict_bench import setup
    from nq_dagster.serve.keys import KeyStore
    from nq_dagster.store import Warehouse

    if not (home / "artifacts" / "serving_state" / "market_A.npz").exists():
        t = time.perf_counter()
        setup(home)
        print(f"setup (demo data + pipeline for market_A, 3000 points): {time.perf_counter() - t:.1f} s")
    wh = Warehouse(home)
    sv = wh.load_artifact("serving_state", "market_A")
    raw = wh.read_table("raw_ticks", "market_A")
    names = [f"c{i:02d}" for i in range(HEAVY_CONNECTIONS)]
    for n in [*names, "ws"]:
        wh.save_artifact("serving_state", n, replace(sv, model=replace(sv.model, source=n)))
        wh.write_table("raw_ticks", n, raw.assign(source=n), part="part-clone")
    store = KeyStore(home)
    heavy = store.create("developer", rate="1000000/s", burst=1_000_000, max_concurrent=64)[0]
    light = store.create("developer", rate="60000/min", burst=100)[0]
    return sv, names, heavy, light


def fresh_copy(home: Path, name: str) -> Path:
    """A copy of the prepared data directory for one run (each run starts from the same state)."""
    dest = Path(tempfile.mkdtemp()) / name
    shutil.copytree(home, dest, ignore=shutil.ignore_patterns("*.lock", "wal", "replicas", "jobs"))
    return dest


def main() -> None:
    """`--home DIR`: prepare the data directory there once and reuse it on later runs (else a temporary
    one)."""
    import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)
    from nq_dagster.runner import prepare_home

    i = sys.argv.index("--home") if "--home" in sys.argv else -1
    home = Path(sys.argv[i + 1]) if i >= 0 else Path(tempfile.mkdtemp()) / "nq"
    prepare_home(str(home))
    sv, names, heavy_key, light_key = prepare_small(home)
    results = {
        "fair batches (this code)": run(fresh_copy(home, "fair"), heavy_key, light_key, names, sv, None)
    }
    if "--no-ab" not in sys.argv:
        results["batches without limits (as before)"] = run(
            fresh_copy(home, "before"), heavy_key, light_key, names, sv, UNLIMITED
        )
    pct = np.percentile
    print(
        "\n| server | light key unloaded p50 / p95 | light key loaded p50 / p95 | loaded p95 / unloaded p95 "
        "| abusive key ticks/s |"
    )
    print("|---|---|---|---|---|")
    for name, r in results.items():
        u, lo = r["unloaded"], r["loaded"]
        print(
            f"| {name} | {pct(u, 50):.1f} / {pct(u, 95):.1f} ms | {pct(lo, 50):.1f} / {pct(lo, 95):.1f} ms | "
            f"{pct(lo, 95) / pct(u, 95):.1f}x | {r['heavy_rate']:,.0f} |"
        )
    print(
        f"\ntarget: loaded p95 within 5x unloaded p95; {HEAVY_CONNECTIONS} abusive connections of "
        f"{HEAVY_VALUES}-value requests; {LIGHT_TICKS} light ticks, or as many as {LOADED_S:g} s allow (the "
        "first 10 left out)"
    )


if __name__ == "__main__":
    main()
