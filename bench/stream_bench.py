"""Drop-to-prediction latency and sustained throughput of the streaming path through the real Dagster daemon
(issue 6). Target: p95 at most 10 s, with the landing sensor at its default interval (5 s), which bounds the
latency from below (a file waits up to one interval for the next tick).

Trains one Mackey-Glass source (default config, 3000 points), starts `dagster-daemon`, then
1. drops 20 small files (5 rows each), one every 7 s, and times each from its rename into landing/ until its
   rows are in the `predictions` table;
2. drops one file of 5,000 rows and times it the same way: rows per second through the streaming job.

Run: .venv/bin/python -m bench.stream_bench [--sensor-interval S]   (default: the sensor's own default)
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

N_TRAIN, SMALL, N_SMALL, GAP_S, BIG = 3000, 5, 20, 7.0, 5000


def drop(wh, name: str, df: pd.DataFrame) -> float:
    d = wh.landing / "mackey_glass"
    d.mkdir(parents=True, exist_ok=True)
    tmp = wh.home / f".{name}.tmp"
    df.assign(timestamp=df["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(tmp, index=False)
    os.replace(tmp, d / name)
    return time.time()


def predicted_through(wh) -> pd.Timestamp | None:
    try:
        r = wh.query("SELECT max(timestamp) AS t FROM predictions WHERE source = 'mackey_glass'")
        t = pd.Timestamp(r["t"].iloc[0])
        # DuckDB 2.0 hands TIMESTAMPTZ_NS to pandas without its zone (the values are UTC)
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    except Exception:
        return None


def wait_until(wh, ts: pd.Timestamp, timeout: float = 600) -> float:
    end = time.time() + timeout
    while time.time() < end:
        got = predicted_through(wh)
        if got is not None and got >= ts:
            return time.time()
        time.sleep(0.2)
    raise TimeoutError(f"no prediction for {ts} after {timeout} s")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--sensor-interval", type=int, help="NQ_SENSOR_INTERVAL for the daemon (default: unset)")
    args = ap.parse_args()
    from nq_dagster.demo import mackey_glass
    from nq_dagster.runner import prepare_home, run_pipeline
    from nq_dagster.sensors.landing import sensor_interval

    wh = prepare_home(str(Path(tempfile.mkdtemp()) / "nq"))
    df = mackey_glass(N_TRAIN + SMALL * N_SMALL + BIG)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    drop(wh, "history.csv", df.iloc[:N_TRAIN])
    t = time.time()
    assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
    print(f"training run (3000 points): {time.time() - t:.1f} s")
    env = {**os.environ, "NQ_HOME": str(wh.home), "DAGSTER_HOME": str(wh.dagster_home)}
    env.pop("NQ_SENSOR_INTERVAL", None)
    if args.sensor_interval:
        env["NQ_SENSOR_INTERVAL"] = str(args.sensor_interval)
    log = open(wh.home / "daemon.log", "ab")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "nq_dagster.definitions"],
        env=env,
        cwd=str(wh.home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(15)  # let the daemon load the code location before timing anything
        lat = []
        for k in range(N_SMALL):
            part = df.iloc[N_TRAIN + k * SMALL : N_TRAIN + (k + 1) * SMALL]
            t0 = drop(wh, f"small-{k:03d}.csv", part)
            lat.append(wait_until(wh, part["timestamp"].iloc[-1]) - t0)
            time.sleep(max(0.0, GAP_S - (time.time() - t0)))
        big = df.iloc[N_TRAIN + SMALL * N_SMALL :]
        t0 = drop(wh, "big.csv", big)
        big_s = wait_until(wh, big["timestamp"].iloc[-1]) - t0
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
    lat = np.array(lat)
    interval = args.sensor_interval or sensor_interval()
    print(f"\nsensor interval {interval} s, run queue dequeue interval 1 s, in-process executor")
    print("| measure | figure |")
    print("|---|---|")
    print(
        f"| drop-to-prediction latency, {N_SMALL} files of {SMALL} rows: p50 / p95 / max | "
        f"{np.percentile(lat, 50):.1f} / {np.percentile(lat, 95):.1f} / {lat.max():.1f} s |"
    )
    print(
        f"| one file of {BIG:,} rows, drop to last prediction | {big_s:.1f} s ({BIG / big_s:,.0f} rows/s) |"
    )


if __name__ == "__main__":
    main()
