"""The server's request path in process: CPU time per request of the authenticated no-op `GET /api/v1/ping`
(request middleware, direct routing, key check, rate limiter and in-flight count, JSON answer) called as ASGI,
without the network, the client or the engine. CPU time (`time.process_time`) rather than wall time, so that a
machine shared with other work moves the figure less than it moves `bench.serve_bench`'s throughput.

To compare trees, run this file against each one's package: `PYTHONPATH=<tree> .venv/bin/python
bench/request_path_bench.py [--tenant]` (`--tenant`: the key belongs to a tenant, where the tree has tenants).
Prints the median and the least over 7 blocks of 5,000 requests, in microseconds of CPU per request (the least
is the block other work disturbed least).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

BLOCKS, PER_BLOCK = 7, 5000


def main() -> None:
    from nq_dagster.serve.http.app import create_server
    from nq_dagster.serve.keys import KeyStore

    logging.disable(
        logging.INFO
    )  # as `nq serve --log-level warning` (bench.serve_bench): no access log lines
    home = Path(tempfile.mkdtemp()) / "nq"
    srv = create_server(str(home))
    store = KeyStore(home)
    extra = {"tenant": "acme"} if "--tenant" in sys.argv else {}
    key = store.create("viewer", "1000000/s", 1_000_000, 64, "bench", **extra)[0]
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {key}".encode())]

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def run() -> list[float]:
        status = []

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])

        def scope() -> dict:
            return {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/api/v1/ping",
                "raw_path": b"/api/v1/ping",
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 8080),
            }

        for _ in range(500):  # warm up
            await srv.app(scope(), receive, send)
        out = []
        for _ in range(BLOCKS):
            status.clear()
            t = time.process_time()
            for _ in range(PER_BLOCK):
                await srv.app(scope(), receive, send)
            out.append((time.process_time() - t) / PER_BLOCK * 1e6)
            assert status == [200] * PER_BLOCK, set(status)
        return out

    per_request = asyncio.run(run())
    srv.engine.close()
    print(
        f"GET /api/v1/ping in process: {statistics.median(per_request):.1f} us CPU per request (median of "
        f"{BLOCKS} blocks of {PER_BLOCK}), least {min(per_request):.1f}; blocks "
        f"{', '.join(f'{x:.1f}' for x in per_request)}"
    )


if __name__ == "__main__":
    main()
