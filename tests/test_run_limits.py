"""One run per source on every launch path: two runs submitted for one partition through the instance's run
coordinator (as the UI submits them, with no `nq/source` tag) never run at the same time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus

from nq_dagster.runner import prepare_home


def test_two_submissions_for_one_partition_never_overlap(wh):
    wh = prepare_home(
        str(wh.home)
    )  # the instance configuration `nq` writes (QueuedRunCoordinator and its limits)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("source", ["lim"])
    env = {**os.environ, "NQ_HOME": str(wh.home), "DAGSTER_HOME": str(wh.dagster_home)}
    bin_dir = Path(sys.executable).parent
    for _ in range(2):  # what the UI's "Materialize" does: submit to the run coordinator, partition tag only
        subprocess.run(
            [
                str(bin_dir / "dagster"),
                "job",
                "launch",
                "-m",
                "nq_dagster.definitions",
                "-j",
                "source_pipeline",
                "--tags",
                json.dumps({"dagster/partition": "lim"}),
            ],
            env=env,
            check=True,
            capture_output=True,
            cwd=str(wh.home),
        )
    runs = instance.get_runs()
    assert len(runs) == 2 and {r.status for r in runs} == {DagsterRunStatus.QUEUED}
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-m", "nq_dagster.definitions"],
        env=env,
        cwd=str(wh.home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            runs = instance.get_runs()
            assert sum(r.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED) for r in runs) <= 1
            if all(r.is_finished for r in runs):
                break
            time.sleep(0.2)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    assert all(r.is_finished for r in runs), [r.status for r in runs]
    stats = sorted((instance.get_run_stats(r.run_id) for r in runs), key=lambda s: s.start_time)
    assert stats[1].start_time >= stats[0].end_time  # the second started after the first ended
