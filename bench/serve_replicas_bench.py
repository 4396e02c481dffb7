"""Throughput of `nq serve` at 32 concurrent clients: one server process, against the same server with two
prediction processes (`--processes 2`: the sources shared out between the server's process and a worker
process, fusion/shards.py), and against two replicas of it on the same machine, each owning half the sources
(`--replica K --replicas 2 --peers ...`, sources by stable hash), the clients posting each source's ticks to
the replica that owns it. One server process holds one interpreter lock, so it uses about one core
(bench/RESULTS.md); worker processes and replicas are the ways to use more.

Run: .venv/bin/python -m bench.serve_replicas_bench
"""

from __future__ import annotations

import asyncio
import os

import pandas as pd

from bench.serve_bench import free_port, prepare, start_server, throughput
from nq_dagster.serve.engine import stable_hash


def main() -> None:
    home, sv, names, key = prepare()
    step = pd.Timedelta(milliseconds=sv.model.step_ms)
    start = pd.Timestamp(sv.stream.last_ts, tz="UTC")
    last = float(sv.stream.values[-1])
    port = free_port()
    proc = start_server(home, port)
    try:
        one = asyncio.run(throughput(port, key, names, start, step, last))
    finally:
        proc.terminate()
        proc.wait(60)
    port = free_port()
    proc = start_server(home, port, ["--processes", "2"], "serve-p2.log")
    try:  # the ticks after the first run's: the server continues each source from its live state
        sharded = asyncio.run(throughput(port, key, names, start + 200_000 * step, step, last))
    finally:
        proc.terminate()
        proc.wait(60)
    ports = [free_port(), free_port()]
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    procs = [
        start_server(home, p, ["--replica", str(k), "--replicas", "2", "--peers", peers], f"serve{k}.log")
        for k, p in enumerate(ports)
    ]
    try:
        owner = {n: ports[stable_hash(n) % 2] for n in names}
        # the ticks after the first run's: each replica continues its sources from the live state
        two = asyncio.run(throughput(owner, key, names, start + 400_000 * step, step, last))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    per = [sum(1 for n in names if owner[n] == p) for p in ports]
    print("\n| servers | throughput, concurrency 32 (32 sources) |")
    print("|---|---|")
    print(f"| one `nq serve` | {one:,.0f} predictions/s |")
    print(
        f"| one `nq serve --processes 2` (the server's process and one worker) | {sharded:,.0f} "
        "predictions/s "
        f"({sharded / one:.2f}x) |"
    )
    print(
        f"| two replicas on this machine ({per[0]} + {per[1]} sources) | {two:,.0f} predictions/s "
        f"({two / one:.2f}x) |"
    )
    print(f"CPU threads {os.cpu_count()}; client and servers share them")


if __name__ == "__main__":
    main()
