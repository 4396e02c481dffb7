"""The cost of a key's limits per request: in memory (`LocalLimits`, one budget per replica) against the
shared PostgreSQL store (`SharedLimits`, one budget across replicas), in one run, back to back.

What a request pays, through the server's own code (`serve/http/auth.Access`): `admit` (one token, one of
the key's slots), `charge` for a realtime request of n values (the other n - 1 tokens), then `leave` (the
slot back). Measured per request for n = 1 and n = 64, one caller; then 8 threads over two store handles
(two replicas' worth) on one key, the requests per second the limiter lets through when nothing else runs
(the rate set high enough never to refuse). The store: a private PostgreSQL (tests/pg.py: Debian's binaries,
on loopback, fsync off as in the tests, so a commit does not wait for a disk: a production store with fsync
on adds its commit latency, and the network its round trip, to each statement that writes: take, acquire,
release).

Run: .venv/bin/python -m bench.limits_bench [--requests N]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

from nq_dagster.serve.http.auth import Access
from nq_dagster.serve.keys import KeyRecord
from nq_dagster.serve.limits import LocalLimits, SharedLimits
from nq_dagster.serve.shared import SharedStore


class TwoTrips(SharedLimits):
    """The shared limiter with `admit` as two round trips (take, then acquire): the cost before the combined
    statement, measured in the same run."""

    admit = LocalLimits.admit


def key(kid: str) -> KeyRecord:
    return KeyRecord(
        kid, "developer", "", rate_per_s=1e6, burst=10**7, max_concurrent=1000, name="", created_at=""
    )


def per_request(access: Access, rec: KeyRecord, n: int, requests: int) -> np.ndarray:
    """Seconds of each request's limiter work: admit, charge(n), release."""
    out = np.empty(requests)
    for i in range(requests):
        t0 = time.perf_counter()
        access.admit(rec)
        access.charge(rec, n)
        access.leave(rec)
        out[i] = time.perf_counter() - t0
    return out


def threaded(accesses: list[Access], rec: KeyRecord, threads: int, seconds: float) -> float:
    """Requests per second through the limiter with `threads` callers spread over `accesses`."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        a = accesses[i % len(accesses)]
        while time.perf_counter() < stop:
            a.admit(rec)
            a.leave(rec)
            counts[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    from tests.pg import start_or_reason

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args(argv)
    cluster, why = start_or_reason()
    if cluster is None:
        raise SystemExit(f"no PostgreSQL: {why}")
    try:
        url = cluster.new_database()
        stores = [SharedStore(url, replica=i) for i in range(2)]
        local = Access(keys=None, limits=LocalLimits())  # the key store is not used by admit / charge
        shared = [Access(keys=None, limits=SharedLimits(s)) for s in stores]
        two_trips = Access(keys=None, limits=TwoTrips(stores[0]))
        print(f"load average before: {os.getloadavg()}")
        rows = []
        for n in (1, 64):
            variants = [("in memory", local), ("shared store", shared[0])]
            if n == 1:
                variants.append(("shared store, admit in two round trips", two_trips))
            for name, access in variants:
                rec = key(f"bench-{name}-{n}")
                per_request(access, rec, n, 50)  # warm: the bucket's row, the connection
                s = per_request(access, rec, n, args.requests) * 1e6
                rows.append((name, n, np.percentile(s, 50), np.percentile(s, 95), 1e6 / s.mean()))
        for name, accesses in (("in memory", [local]), ("shared store", shared)):
            rec = key(f"bench-threads-{name}")
            rps = threaded(accesses, rec, 8, 3.0)
            rows.append((name + ", 8 threads", 1, float("nan"), float("nan"), rps))
        print(f"load average after: {os.getloadavg()}")
        print("| limiter | values per request | p50 us | p95 us | requests/s (one caller, or as stated) |")
        print("|---|---|---|---|---|")
        for name, n, p50, p95, rps in rows:
            lat = "" if np.isnan(p50) else f"{p50:,.1f} | {p95:,.1f}"
            print(f"| {name} | {n} | {lat or ' | '} | {rps:,.0f} |")
        for s in stores:
            s.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
