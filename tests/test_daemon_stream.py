"""End to end with the real Dagster daemon: files dropped into landing/ become predictions, exactly once per
row, across a daemon killed and restarted mid-stream; a bad file is quarantined and the stream goes on."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

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


def start_daemon(wh) -> subprocess.Popen:
    env = {
        **os.environ,
        "NQ_HOME": str(wh.home),
        "DAGSTER_HOME": str(wh.dagster_home),
        "NQ_SENSOR_INTERVAL": "2",
        "NQ_SETTLE_SECONDS": "0.5",
        "PYTHONUNBUFFERED": "1",
    }
    log = open(wh.home / "daemon.log", "ab")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", "nq_dagster.definitions"],
        env=env,
        cwd=str(wh.home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


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
    log = (wh.home / "daemon.log").read_text(errors="replace")[-3000:]
    raise AssertionError(
        f"only {len(streamed(wh, boundary))} of {n} streamed predictions after {timeout} s\n{log}"
    )


def test_stream_through_daemon_exactly_once(wh):
    wh = prepare_home(str(wh.home))
    df = mackey_glass(N_TRAIN + CHUNK * N_FILES)
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    drop(wh, "history.csv", df.iloc[:N_TRAIN])
    assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
    boundary = df["timestamp"].iloc[N_TRAIN - 1]
    chunks = [df.iloc[N_TRAIN + k * CHUNK : N_TRAIN + (k + 1) * CHUNK] for k in range(N_FILES)]

    daemon = start_daemon(wh)
    try:
        drop(wh, "part-1.csv", chunks[0])
        drop(wh, "part-2.csv", chunks[1])
        wait_for(wh, boundary, 2 * CHUNK, 240)
        drop(wh, "part-3.csv", chunks[2])
        time.sleep(1.0)
        stop(daemon)  # killed mid-stream: part-3 may be unseen, requested, or running
        daemon = start_daemon(wh)
        drop(wh, "part-4.csv", chunks[3])
        drop(wh, "bad.csv", text="timestamp,value\n2027-01-01T00:00:00Z,not-a-number\n")
        drop(wh, "part-5.csv", chunks[4])
        drop(wh, "part-6.csv", chunks[5])
        wait_for(wh, boundary, N_FILES * CHUNK, 300)
    finally:
        stop(daemon, signal.SIGTERM)
    time.sleep(3)  # a run still finishing would show up as a duplicate below
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
    runs = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                (
                    "import json, os; from dagster import DagsterInstance, RunsFilter; i = "
                    "DagsterInstance.get(); "
                    "print(json.dumps([r.job_name for r in i.get_runs(RunsFilter(tags={'nq/trigger': "
                    "'landing'}))]))"
                ),
            ],
            env={**os.environ, "DAGSTER_HOME": str(wh.dagster_home)},
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert runs and set(runs) == {"streaming"}
    assert len(runs) <= N_FILES + 2  # files batched per source per tick: never more runs than drops


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
