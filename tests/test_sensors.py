"""Landing sensor (grouping, run keys, cursor across restarts, backpressure, retries), failure recorder,
freshness check; evaluated against a real (temporary) Dagster instance, each on SQLite and on PostgreSQL (the
`dagster_storage` fixture: a real server started for the session; skipped, saying why, without one)."""

import time

import pandas as pd
import pytest
from dagster import DagsterRunStatus, RunsFilter, build_sensor_context
from dagster._core.test_utils import create_run_for_test

from nq_dagster.resources import WarehouseResource
from nq_dagster.sensors.landing import landing_sensor


def write_csv(path, start, n, base=100.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = pd.date_range(start, periods=n, freq="min", tz="UTC")
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": base + pd.RangeIndex(n)}).to_csv(
        path, index=False
    )


@pytest.fixture
def landing(wh, monkeypatch):
    monkeypatch.setenv("NQ_SETTLE_SECONDS", "0")
    write_csv(wh.landing / "alpha" / "a1.csv", "2026-03-01", 5)
    write_csv(wh.landing / "alpha" / "a2.csv", "2026-03-02", 5)
    write_csv(wh.landing / "beta.csv", "2026-03-01", 7)
    return wh


def tick(wh, instance, cursor=None):
    ctx = build_sensor_context(
        instance=instance, cursor=cursor, resources={"warehouse": WarehouseResource(home=str(wh.home))}
    )
    return landing_sensor(ctx)


def test_groups_by_source_with_stable_run_keys(landing, dagster_storage):
    with dagster_storage() as inst:
        res = tick(landing, inst)
        reqs = {r.partition_key: r for r in res.run_requests}
        assert set(reqs) == {"alpha", "beta"}  # two files of alpha in one run
        assert reqs["alpha"].tags["nq/files"] == "2"
        assert all(r.job_name == "ingest_only" for r in reqs.values())  # too few rows to train yet
        assert {p for d in res.dynamic_partitions_requests for p in d.partition_keys} == {"alpha", "beta"}
        # a restarted daemon (same persisted cursor, or none at all) asks for the same run keys: Dagster
        # launches a run key once, so no file set is processed twice
        again = tick(landing, inst, res.cursor)
        fresh = tick(landing, inst, None)
        keys = lambda r: sorted(q.run_key for q in r.run_requests)  # noqa: E731
        assert keys(again) == keys(res) == keys(fresh)
        # a new file for alpha changes alpha's key only
        write_csv(landing.landing / "alpha" / "a3.csv", "2026-03-03", 5)
        third = {r.partition_key: r.run_key for r in tick(landing, inst, res.cursor).run_requests}
        assert third["alpha"] != reqs["alpha"].run_key and third["beta"] == reqs["beta"].run_key


def test_backpressure_retries_then_quarantine(landing, monkeypatch, dagster_storage):
    monkeypatch.setenv("NQ_MAX_ATTEMPTS", "2")
    with dagster_storage() as inst:
        first = {r.partition_key: r.run_key for r in tick(landing, inst).run_requests}
        # a run for alpha executing: alpha's next run is requested now and waits in the queue behind it
        create_run_for_test(
            inst, job_name="ingest_only", status=DagsterRunStatus.STARTED, tags={"nq/source": "alpha"}
        )
        assert {r.partition_key for r in tick(landing, inst).run_requests} == {"alpha", "beta"}
        # one waiting to start as well: nothing new for alpha (the queued run takes every file present when it
        # starts; these wait in landing/), beta goes on
        create_run_for_test(
            inst, job_name="ingest_only", status=DagsterRunStatus.NOT_STARTED, tags={"nq/source": "alpha"}
        )
        res = tick(landing, inst)
        assert {r.partition_key for r in res.run_requests} == {"beta"}
    with dagster_storage() as inst:
        # beta's run failed and left its one file: the next tick retries with the next attempt's key
        create_run_for_test(
            inst,
            job_name="ingest_only",
            status=DagsterRunStatus.FAILURE,
            tags={"nq/source": "beta", "dagster/run_key": first["beta"]},
        )
        res = tick(landing, inst)
        retry = {r.partition_key: r.run_key for r in res.run_requests}["beta"]
        assert retry == first["beta"][:-1] + "1"
        # that one fails too: attempts are used up, the file goes to quarantine with the reason
        create_run_for_test(
            inst,
            job_name="ingest_only",
            status=DagsterRunStatus.FAILURE,
            tags={"nq/source": "beta", "dagster/run_key": retry},
        )
        res = tick(landing, inst, res.cursor)
        assert "beta" not in {r.partition_key for r in res.run_requests}
        assert not (landing.landing / "beta.csv").exists()
        reasons = list(landing.quarantine.glob("beta*.reason.txt"))
        assert reasons and "runs failed" in reasons[0].read_text()


def test_a_failing_file_is_isolated_and_never_takes_good_files_with_it(landing, monkeypatch, dagster_storage):
    """A run on alpha's two files fails: the sensor then runs alpha's files one at a time (the first alone,
    tagged nq/only), quarantines the one that keeps failing alone, and requests the other file, which is never
    quarantined with it. A run still going is never counted as a failure."""
    monkeypatch.setenv("NQ_MAX_ATTEMPTS", "2")
    with dagster_storage() as inst:
        res = tick(landing, inst)
        first = {r.partition_key: r for r in res.run_requests}["alpha"]
        assert first.tags["nq/files"] == "2" and "nq/only" not in first.tags
        create_run_for_test(
            inst,
            job_name="ingest_only",
            status=DagsterRunStatus.FAILURE,
            tags={"nq/source": "alpha", "dagster/run_key": first.run_key},
        )
        res = tick(landing, inst, res.cursor)
        alone = {r.partition_key: r for r in res.run_requests}["alpha"]
        assert alone.tags["nq/only"] == "alpha/a1.csv" and alone.tags["nq/files"] == "1"
        # the isolated run is still going: the next tick waits for it, counting nothing
        running = create_run_for_test(
            inst,
            job_name="ingest_only",
            status=DagsterRunStatus.STARTED,
            tags={"nq/source": "alpha", "dagster/run_key": alone.run_key},
        )
        res = tick(landing, inst, res.cursor)
        assert "alpha" not in {r.partition_key for r in res.run_requests}
        inst.report_run_failed(running)
        for _ in range(2):  # fails alone, twice: a1 alone is quarantined
            res = tick(landing, inst, res.cursor)
            req = {r.partition_key: r for r in res.run_requests}.get("alpha")
            if req is None:
                break
            assert req.tags["nq/only"] == "alpha/a1.csv"
            create_run_for_test(
                inst,
                job_name="ingest_only",
                status=DagsterRunStatus.FAILURE,
                tags={"nq/source": "alpha", "dagster/run_key": req.run_key},
            )
        res = tick(landing, inst, res.cursor)
        assert [p.name for p in landing.quarantine.glob("*.csv")] == ["a1.csv"]
        assert "failed on this file alone" in (landing.quarantine / "a1.csv.reason.txt").read_text()
        nxt = {r.partition_key: r for r in res.run_requests}["alpha"]
        assert (landing.landing / "alpha" / "a2.csv").exists() and nxt.tags["nq/files"] == "1"


def test_a_run_stuck_starting_is_given_up(landing, monkeypatch, dagster_storage):
    """A run left STARTING (its launch died with the daemon) holds the source's slot until the start timeout;
    then the sensor marks it failed and the source's files are requested again."""
    monkeypatch.setenv("NQ_RUN_START_TIMEOUT_S", "0.5")
    with dagster_storage() as inst:
        create_run_for_test(
            inst, job_name="ingest_only", status=DagsterRunStatus.STARTING, tags={"nq/source": "beta"}
        )
        res = tick(landing, inst)
        assert "beta" not in {r.partition_key for r in res.run_requests}  # just started: it may still launch
        time.sleep(0.6)
        res = tick(landing, inst, res.cursor)
        failed = inst.get_runs(RunsFilter(tags={"nq/source": "beta"}, statuses=[DagsterRunStatus.FAILURE]))
        assert len(failed) == 1
        res = tick(landing, inst, res.cursor)
        assert "beta" in {r.partition_key for r in res.run_requests}


def test_job_choice_training_then_streaming(landing, monkeypatch, dagster_storage):
    monkeypatch.setenv("NQ_MIN_ROWS_TO_TRAIN", "6")
    with dagster_storage() as inst:
        jobs = {r.partition_key: r.job_name for r in tick(landing, inst).run_requests}
        assert jobs == {"alpha": "source_pipeline", "beta": "source_pipeline"}  # 10 and 7 rows >= 6
        landing.save_artifact(
            "serving_state", "beta", {"stand-in": True}
        )  # not a serving state: trained anew
        jobs = {r.partition_key: r.job_name for r in tick(landing, inst).run_requests}
        assert jobs["beta"] == "source_pipeline"
        # a current model (what has_current_model accepts: tests/test_predictor.py) is streamed into
        import nq_dagster.sensors.landing as landing_sensor

        monkeypatch.setattr(landing_sensor, "has_current_model", lambda wh, source: source == "beta")
        jobs = {r.partition_key: r.job_name for r in tick(landing, inst).run_requests}
        assert jobs["beta"] == "streaming"


def test_failure_recorder_writes_table(wh, dagster_storage):
    from dagster import DagsterEventType, build_run_status_sensor_context, job, op

    from nq_dagster.sensors.failures import run_failure_recorder

    @op
    def boom():
        raise ValueError("landing/x.csv: row 3: bad value")

    @job(tags={"nq/source": "x"})
    def failing():
        boom()

    with dagster_storage() as inst:
        res = failing.execute_in_process(instance=inst, raise_on_error=False)
        run = inst.get_run_by_id(res.run_id)
        ev = next(
            e
            for e in inst.all_logs(res.run_id)
            if e.dagster_event and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE
        ).dagster_event
        ctx = build_run_status_sensor_context(
            "run_failure_recorder",
            ev,
            inst,
            run,
            resources={"warehouse": WarehouseResource(home=str(wh.home))},
        )
        run_failure_recorder(ctx.for_run_failure())
    rows = wh.query("SELECT * FROM run_failures")
    assert len(rows) == 1 and rows.loc[0, "source"] == "x" and rows.loc[0, "job"] == "failing"
    assert "row 3: bad value" in rows.loc[0, "error"] and rows.loc[0, "step"] == "boom"


def test_freshness_flags_only_data_waiting_too_long(wh):
    from nq_dagster.assets.checks import freshness_table
    from nq_dagster.ingest import Ingestor

    write_csv(wh.landing / "gamma.csv", "2026-03-01", 10)
    Ingestor(wh).ingest_file(wh.landing / "gamma.csv", move=True)
    ts = pd.date_range("2026-03-01", periods=10, freq="min", tz="UTC")
    wh.write_table("predictions", "gamma", pd.DataFrame({"source": "gamma", "timestamp": ts[:8]}))
    now = pd.Timestamp.now(tz="UTC")
    assert not freshness_table(wh, 300, now)["stale"].any()  # two rows behind, ingested just now
    later = freshness_table(wh, 300, now + pd.Timedelta("10min"))
    assert later["stale"].tolist() == [True] and later["waiting_s"].iloc[0] > 300
    wh.write_table("predictions", "gamma", pd.DataFrame({"source": "gamma", "timestamp": ts}))
    assert not freshness_table(wh, 300, now + pd.Timedelta("10min"))["stale"].any()  # caught up
    # a part written without statistics (another writer) is read instead of its footer: same answer, any unit
    import pyarrow as pa
    import pyarrow.parquet as pq

    part = wh.partition_dir("predictions", "gamma") / "data.parquet"
    pq.write_table(
        pa.table({"source": ["gamma"] * 10, "timestamp": pa.array(ts.as_unit("ns"))}),
        part,
        write_statistics=False,
    )
    assert wh.part_time_range(part)[1] is None
    fresh = freshness_table(wh, 300, now + pd.Timedelta("10min"))
    assert not fresh["stale"].any() and fresh["last_prediction"].iloc[0] == ts[-1]


def test_freshness_on_an_empty_warehouse(wh):
    from nq_dagster.assets.checks import freshness_table

    assert freshness_table(wh, 300).empty  # nothing ingested: no error, nothing stale


def test_unusable_files_are_quarantined_with_the_fix(landing, dagster_storage):
    (landing.landing / "notes.xlsx").write_bytes(b"PK\x03\x04")
    write_csv(landing.landing / "bad name" / "x.csv", "2026-03-01", 3)
    (landing.landing / "alpha" / "a3.csv.part").write_text(
        "timestamp,value\n"
    )  # still being written: left alone
    with dagster_storage() as inst:
        res = tick(landing, inst)
        assert {r.partition_key for r in res.run_requests} == {"alpha", "beta"}  # the good files still go
    assert (landing.landing / "alpha" / "a3.csv.part").exists()
    xlsx = (landing.quarantine / "notes.xlsx.reason.txt").read_text()
    assert "unsupported file type '.xlsx'" in xlsx and "Fix:" in xlsx and "notes.xlsx" in xlsx
    bad = (landing.quarantine / "x.csv.reason.txt").read_text()
    assert "source name 'bad name'" in bad and "Fix:" in bad


def test_builtin_freshness_fails_for_a_stale_training_output_and_passes_after_a_run(wh):
    """Dagster's own freshness, as the daemon evaluates it (its FreshnessDaemon over the code location): the
    training outputs carry a time-window policy (late after 25 h, failed after 26 h). A `serving_state` last
    materialized 27 h ago fails; after a real training run it passes. Nothing launches a run to find out."""
    from datetime import UTC, datetime, timedelta

    from dagster import AssetKey, AssetMaterialization, DagsterInstance
    from dagster._core.definitions.freshness import FreshnessState
    from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.freshness import FreshnessDaemon

    from nq_dagster.demo import mackey_glass
    from nq_dagster.runner import prepare_home, run_pipeline

    wh = prepare_home(str(wh.home))
    instance = DagsterInstance.get()
    assert instance.freshness_enabled  # on by default in this Dagster; the instance nq writes leaves it on
    key = AssetKey("serving_state")
    with freeze_time(datetime.now(UTC) - timedelta(hours=27)):  # the last training, 27 h ago
        instance.report_runless_asset_event(AssetMaterialization(key, partition="mackey_glass"))
    target = ModuleTarget(
        module_name="nq_dagster.definitions",
        attribute=None,
        working_directory=str(wh.home),
        location_name="nq_dagster",
    )

    def state():
        with create_test_daemon_workspace_context(target, instance) as ctx:
            list(FreshnessDaemon().run_iteration(ctx))
        return instance.get_freshness_state_records([key])[key].freshness_state

    assert state() == FreshnessState.FAIL
    d = wh.landing / "mackey_glass"
    d.mkdir(parents=True)
    mackey_glass(400).to_csv(d / "history.csv", index=False)
    assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
    assert state() == FreshnessState.PASS
    runs = instance.get_runs()
    # the runs `nq run` launched (its training, and its one evaluation of the `predictions_fresh` check):
    # the freshness daemon launched none of its own
    assert {r.job_name for r in runs} <= {"source_pipeline", "cross_source", "freshness_check"}
    assert all(r.tags.get("nq/trigger") == "cli" for r in runs)


def test_a_dead_run_is_failed_even_with_a_run_queued_behind_it(landing, monkeypatch, dagster_storage):
    """A started run whose worker is gone holds the source's slot; a run queued behind it could never start.
    The tick marks the dead one failed, whatever else is queued."""
    import nq_dagster.sensors.landing as mod

    with dagster_storage() as inst:
        dead = create_run_for_test(
            inst, job_name="ingest_only", status=DagsterRunStatus.STARTED, tags={"nq/source": "alpha"}
        )
        create_run_for_test(
            inst, job_name="ingest_only", status=DagsterRunStatus.NOT_STARTED, tags={"nq/source": "alpha"}
        )
        monkeypatch.setattr(
            mod, "dead_local_run", lambda instance, run: "worker gone" if run.run_id == dead.run_id else None
        )
        res = tick(landing, inst)
        assert "alpha" not in {r.partition_key for r in res.run_requests}
        assert inst.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE


def test_links_and_fifos_in_landing_are_quarantined_unread(landing, tmp_path, dagster_storage):
    """A symbolic link in landing/ (to a secret file, or dangling) is never followed: it is quarantined as a
    link with a reason that quotes nothing of its target; a FIFO is quarantined too (reading it would
    block)."""
    import os

    secret = tmp_path / "secret.csv"
    secret.write_text("timestamp,value\nTOP-SECRET-LINE,1\n")
    os.symlink(secret, landing.landing / "alpha" / "x.csv")
    os.symlink(tmp_path / "missing.csv", landing.landing / "gone.csv")
    os.mkfifo(landing.landing / "alpha" / "pipe.csv")
    with dagster_storage() as inst:
        res = tick(landing, inst)
    assert {r.partition_key: r.tags["nq/files"] for r in res.run_requests}["alpha"] == "2"
    for name in ("x.csv", "gone.csv", "pipe.csv"):
        moved = landing.quarantine / name
        assert os.path.lexists(moved), name
        reason = (landing.quarantine / f"{name}.reason.txt").read_text()
        assert "TOP-SECRET" not in reason and ("symbolic link" in reason or "not a regular file" in reason)
    assert (landing.quarantine / "x.csv").is_symlink() and secret.exists()
