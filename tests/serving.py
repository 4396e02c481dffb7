"""Helpers of the server tests: a trained data directory, a server in a thread or in its own process."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd

from nq_dagster.store import Warehouse

from .conftest import small_home

N_TRAIN, N_ALL = 600, 1000
CLONES = (
    "s1",
    "s2",
    "s3",
    "s4",
    "s5",
)  # sources sharing m's trained model (names differ, so do their owners)


def build_trained_home(root: Path) -> tuple[Path, pd.DataFrame]:
    """A data directory with source `m` trained on its first N_TRAIN rows (SMALL_CONFIG), and `CLONES`: m's
    serving state under other names (the server treats them as sources of their own). Returns (home, the rows
    after training: the ticks tests post)."""
    from nq_dagster.cli import main
    from nq_dagster.demo import market

    home = root / "nq"
    frames, _ = market(N_ALL, tickers=1, seed=11)
    df = frames["market_A"].rename(columns={"price": "value"})[["timestamp", "value"]]
    df.iloc[:N_TRAIN].to_csv(root / "train.csv", index=False)
    with small_home(home) as wh:
        assert main(["--home", str(home), "ingest", str(root / "train.csv"), "--source", "m"]) == 0
        assert main(["--home", str(home), "run", "--source", "m"]) == 0
    st = wh.load_artifact("serving_state", "m")
    raw = wh.read_table("raw_ticks", "m")
    for name in CLONES:
        wh.save_artifact(
            "serving_state", name, dataclasses.replace(st, model=dataclasses.replace(st.model, source=name))
        )
        wh.write_table("raw_ticks", name, raw.assign(source=name), part="part-clone")
    rest = df.iloc[N_TRAIN:].reset_index(drop=True)
    rest["timestamp"] = pd.to_datetime(rest["timestamp"], utc=True)
    return home, rest


def copy_home(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("*.lock", "serve"))
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """`nq serve`'s app under uvicorn in a thread of the test process (fast intervals)."""

    def __init__(self, home: Path, port: int | None = None, uvicorn_options: dict | None = None, **kw):
        """`uvicorn_options`: uvicorn's settings beyond the test defaults (`nq serve`'s limits:
        `serve.http.guard.uvicorn_options()`)."""
        import uvicorn

        from nq_dagster.serve.http.app import create_server

        self.server = create_server(str(home), **{"flush_interval_s": 0.2, "watch_interval_s": 0.2, **kw})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(
            self.server.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            interface="asgi3",
            access_log=False,
            log_config=None,
            ws_ping_interval=None,
            **(uvicorn_options or {}),
        )
        self.uv = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.uv.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uv.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.uv.should_exit = True
        self.thread.join(30)


class ProcessServer:
    """`nq serve` in its own process (SIGTERM, kill -9, replicas)."""

    def __init__(self, home: Path, port: int | None = None, extra: list[str] | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home.parent / f"serve-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "NQ_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nq_dagster.cli",
                "--home",
                str(home),
                "serve",
                "--port",
                str(self.port),
                *(extra or []),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        # import, the models, with --processes the prediction processes: over a minute on a loaded 2-core box
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                # the port opens before the models load: ready once they have
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start: " + self.output()
            time.sleep(0.25)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc


def tick(source: str, ts: pd.Timestamp, value: float) -> dict:
    return {"source": source, "data": [float(value)], "timestamp": ts.isoformat()}


def served_rows(wh: Warehouse, table: str, source: str) -> pd.DataFrame:
    """The rows the server wrote to a table for a source: its `serve-*` parts, and its rows in parts that
    compaction merged them into (raw_ticks: rows whose `file` is the server's; predictions: the compacted live
    part)."""
    from nq_dagster.store import COMPACT_PREFIX, LIVE_COMPACT_PREFIX

    frames = []
    for p in wh.table_parts(table, source):
        if p.stem.startswith(("serve-", LIVE_COMPACT_PREFIX)):
            frames.append(wh.read_part(p).to_pandas())
        elif table == "raw_ticks" and p.stem.startswith(COMPACT_PREFIX):
            rows = wh.read_part(p).to_pandas()
            frames.append(rows[rows["file"].astype(str).str.startswith("nq-serve/")])
    if not frames:
        return pd.DataFrame(columns=["timestamp"])
    return pd.concat(frames, ignore_index=True)
