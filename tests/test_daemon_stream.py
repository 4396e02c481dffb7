"""End to end with the real Dagster daemon: files dropped into landing/ become predictions, exactly once per
row, across a daemon killed and restarted mid-stream; a bad file is quarantined and the stream goes on."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nq_dagster.demo import mackey_glass
from nq_dagster.runner import prepare_home, run_pipeline

N_TRAIN, CHUNK, N_FILES = 400, 10, 6


def drop(wh, name: str, df: pd.DataFrame | None = None, text: str | None = None) -> None:
    """Write next to landing/, then rename into it (what writers should do: the sensor never sees half a
    file)."""
    d = wh.landing / "mackey_glass"
    d.mkdir(parents=True, exist_ok=True)
    tmp = wh.home / f".{name}.tmp"
    if df is not None:
        df.assign(timestamp=df["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(tmp, index=False)
    else:
        tmp.write_text(text)
    os.replace(tmp, d / name)


def process(wh, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    """One Dagster process of the deployment, in its own process group, its output in <home>/<name>.log."""
    env = {
        **os.environ,
        "NQ_HOME": str(wh.home),
        "DAGSTER_HOME": str(wh.dagster_home),
        "NQ_SENSOR_INTERVAL": "2",
        "NQ_SETTLE_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log = open(wh.home / f"{name}.log", "ab")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / args[0]), *args[1:]],
        env=env,
        cwd=str(wh.home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_daemon(wh, workspace: Path | None = None) -> subprocess.Popen:
    """The daemon: loading the code location itself (the local default), or reaching it as a gRPC server
    through `workspace` (the deployed shape: daemon, code location and webserver as separate processes)."""
    target = ["-w", str(workspace)] if workspace else ["-m", "nq_dagster.definitions"]
    return process(wh, "daemon", ["dagster-daemon", "run", *target])


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"{what} not listening on {port} after {timeout} s")


def stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def streamed(wh, boundary: pd.Timestamp) -> pd.DataFrame:
    try:
        return wh.query(
            "SELECT timestamp FROM predictions WHERE source = 'mackey_glass' AND timestamp > "
            f"TIMESTAMPTZ '{boundary.isoformat()}'"
        )
    except Exception:  # view not there yet, or a writer holds the file
        return pd.DataFrame({"timestamp": []})


def wait_for(wh, boundary: pd.Timestamp, n: int, timeout: float) -> pd.DataFrame:
    end = time.time() + timeout
    while time.time() < end:
        got = streamed(wh, boundary)
        if len(got) >= n:
            return got
        time.sleep(1)
    log = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(wh.home.glob("*.log")))
    raise AssertionError(
        f"only {len(streamed(wh, boundary))} of {n} streamed predictions after {timeout} s\n{log}"
    )


RUNS_SCRIPT = """
import json
from dagster import DagsterInstance, RunsFilter
i = DagsterInstance.get()
recs = i.get_run_records(RunsFilter(tags={"nq/trigger": "landing"}))
print(json.dumps([[r.dagster_run.job_name, r.start_time, r.end_time] for r in recs]))
"""


def finished_runs(wh, timeout: float = 120) -> list:
    """The landing runs as [job, start, end], once none is still going (the last rows are predicted: a run
    may still be finishing its last steps on a busy machine)."""
    end = time.time() + timeout
    while True:
        out = subprocess.run(
            [sys.executable, "-c", RUNS_SCRIPT],
            env={**os.environ, "DAGSTER_HOME": str(wh.dagster_home)},
            capture_output=True,
            text=True,
            check=True,
        )
        runs = json.loads(out.stdout.strip().splitlines()[-1])
        if all(stop is not None for _, _, stop in runs) or time.time() > end:
            return runs
        time.sleep(1)


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_stream_through_daemon_exactly_once(wh, storage, request):
    """On SQLite the local default (the daemon loads the code location). On PostgreSQL the deployed shape: the
    code location as a gRPC server, the daemon and the webserver as separate processes on one database (the
    instance configured as k8s/dagster.yaml is); the daemon is killed -9 mid-stream in both."""
    servers: list[subprocess.Popen] = []
    workspace = None
    if storage == "postgres":
        import yaml

        from nq_dagster.runner import INSTANCE_YAML
        from tests.pg import storage_overrides

        db = request.getfixturevalue("pg_cluster").new_database()
        wh.dagster_home.mkdir(parents=True, exist_ok=True)
        (wh.dagster_home / "dagster.yaml").write_text(INSTANCE_YAML + yaml.safe_dump(storage_overrides(db)))
    wh = prepare_home(str(wh.home))  # keeps a dagster.yaml already there
    df = mackey_glass(N_TRAIN + CHUNK * N_FILES)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    drop(wh, "history.csv", df.iloc[:N_TRAIN])
    assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
    boundary = df["timestamp"].iloc[N_TRAIN - 1]
    chunks = [df.iloc[N_TRAIN + k * CHUNK : N_TRAIN + (k + 1) * CHUNK] for k in range(N_FILES)]

    try:
        if storage == "postgres":
            from tests.pg import free_port

            grpc_port, web_port = free_port(), free_port()
            grpc = ["dagster", "api", "grpc", "-m", "nq_dagster.definitions", "-h", "127.0.0.1"]
            servers.append(process(wh, "code", [*grpc, "-p", str(grpc_port)]))
            wait_port(grpc_port, servers[-1], "the code location's gRPC server")
            workspace = wh.home / "workspace.yaml"
            location = {"host": "127.0.0.1", "port": grpc_port, "location_name": "nq_dagster"}
            workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}))
            web = ["dagster-webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(web_port)]
            servers.append(process(wh, "webserver", web))
        daemon = start_daemon(wh, workspace)
        try:
            drop(wh, "part-1.csv", chunks[0])
            drop(wh, "part-2.csv", chunks[1])
            wait_for(wh, boundary, 2 * CHUNK, 240)
            drop(wh, "part-3.csv", chunks[2])
            time.sleep(1.0)
            stop(daemon)  # killed mid-stream: part-3 may be unseen, requested, or running
            daemon = start_daemon(wh, workspace)
            drop(wh, "part-4.csv", chunks[3])
            drop(wh, "bad.csv", text="timestamp,value\n2027-01-01T00:00:00Z,not-a-number\n")
            drop(wh, "part-5.csv", chunks[4])
            drop(wh, "part-6.csv", chunks[5])
            wait_for(wh, boundary, N_FILES * CHUNK, 300)
            # before the daemon stops (its local runs are in its process group): a run still finishing
            # would show up as a duplicate below
            runs = finished_runs(wh)
        finally:
            stop(daemon, signal.SIGTERM)
        if storage == "postgres":  # the webserver, a process of its own, sees the runs in the same database
            import httpx

            wait_port(web_port, servers[-1], "the webserver")
            query = '{ runsOrError(filter: {tags: [{key: "nq/trigger", value: "landing"}]}) { ... on Runs '
            query += "{ results { jobName status } } } }"
            res = httpx.post(f"http://127.0.0.1:{web_port}/graphql", json={"query": query}, timeout=60)
            shown = res.json()["data"]["runsOrError"]["results"]
            assert shown and {r["jobName"] for r in shown} == {"streaming"}
            assert {r["status"] for r in shown} <= {"SUCCESS", "FAILURE"}
    finally:
        for proc in reversed(servers):
            stop(proc, signal.SIGTERM)
    got = streamed(wh, boundary)
    expected = set(df["timestamp"].iloc[N_TRAIN:])
    stamps = pd.to_datetime(got["timestamp"], utc=True)
    assert len(stamps) == len(expected) and set(stamps) == expected  # every row once, none twice
    dup = wh.query(
        "SELECT count(*) AS n FROM (SELECT source, timestamp FROM predictions GROUP BY 1, 2 "
        "HAVING count(*) > 1)"
    )
    assert dup["n"].iloc[0] == 0
    assert (wh.quarantine / "bad.csv.reason.txt").exists()
    assert (
        "not-a-number" in (wh.quarantine / "bad.csv.reason.txt").read_text()
        or "row 2" in (wh.quarantine / "bad.csv.reason.txt").read_text()
    )
    assert not list((wh.landing / "mackey_glass").glob("*.csv"))
    st = wh.load_artifact("live_state", "mackey_glass")  # the stream's own state; training's stays as it was
    assert st.stream.n_rows == N_TRAIN + N_FILES * CHUNK
    assert wh.load_artifact("serving_state", "mackey_glass").stream.n_rows == N_TRAIN
    assert runs and {job for job, _, _ in runs} == {"streaming"}
    assert len(runs) <= N_FILES + 2  # files batched per source per tick: never more runs than drops
    # one run per source at a time (the run queue's tag limit): no two of the source's runs overlapped
    spans = sorted((start, end) for _, start, end in runs if start is not None)
    assert all(end is not None for _, end in spans)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:], strict=False)), spans


def test_a_huge_stored_value_is_left_out_and_the_stream_goes_on(wh):
    """A landed file with 1e160 among good rows (ingest stores it: finite) must not fail every later streaming
    run of the source: the row is left out of the stream with a warning and a count, its neighbours are
    predicted, and the next file streams as usual."""
    from nq_dagster.definitions import defs
    from nq_dagster.runner import open_instance, run_config_for

    wh = prepare_home(str(wh.home))
    df = mackey_glass(N_TRAIN + 2 * CHUNK)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    drop(wh, "history.csv", df.iloc[:N_TRAIN])
    assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
    job, instance = defs.resolve_job_def("streaming"), open_instance(wh)
    boundary = df["timestamp"].iloc[N_TRAIN - 1]
    poisoned = df.iloc[N_TRAIN : N_TRAIN + CHUNK].copy()
    poisoned.iloc[3, poisoned.columns.get_loc("value")] = 1e160
    for k, chunk in enumerate([poisoned, df.iloc[N_TRAIN + CHUNK :]]):
        drop(wh, f"chunk-{k}.csv", chunk)
        res = job.execute_in_process(
            partition_key="mackey_glass",
            instance=instance,
            run_config=run_config_for(wh),
            tags={"nq/source": "mackey_glass"},
        )
        assert res.success
        meta = res.asset_materializations_for_node("live_predictions")[0].metadata
        assert meta["rows_out_of_range"].value == (1 if k == 0 else 0)
    got = streamed(wh, boundary)
    assert len(got) == 2 * CHUNK - 1
    assert pd.Timestamp(poisoned["timestamp"].iloc[3]) not in set(pd.to_datetime(got["timestamp"], utc=True))
