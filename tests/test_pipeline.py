"""Definitions load; the whole graph materializes on small demo data; the `nq` command works end to end."""

import json

import pandas as pd
import pytest

from nq_dagster.cli import main


def test_definitions_load():
    from nq_dagster.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "raw_ticks",
        "series",
        "spike_trains",
        "reservoir_states",
        "patterns",
        "features",
        "feature_selection",
        "fusion_model",
        "predictions",
        "validation_report",
        "portfolio",
    } <= keys
    job = defs.resolve_job_def("source_pipeline")
    trained = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert {"series", "fusion_model", "predictions", "serving_state", "validation_report"} <= trained
    assert not {"portfolio", "live_predictions"} & trained  # cross-source and streaming are their own jobs
    stream = defs.resolve_job_def("streaming")
    assert {k.to_user_string() for k in stream.asset_layer.selected_asset_keys} == {
        "raw_ticks",
        "live_predictions",
    }
    checks = {c.name for c in stream.asset_layer.asset_graph.asset_check_keys}
    assert "live_predictions_quality" in checks  # streamed predictions pass the same suite as training


def test_demo_ingest_query_cli(wh, tmp_path, capsys):
    assert main(["--home", str(wh.home), "demo", "--sources", "3", "--points", "600", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    printed = {
        ln.split()[0]: ln.split()
        for ln in out.splitlines()
        if ln.split() and ln.split()[0] in ("iot_sensor", "mackey_glass", "market_A")
    }
    assert set(printed) == {"iot_sensor", "mackey_glass", "market_A"}
    for src, cols in printed.items():  # the summary's score is the one the validation report stored
        stored = wh.read_table("validation_metrics", src)["score"].iloc[0]
        assert float(cols[-1]) == pytest.approx(float(stored), abs=0.06)
    assert out.count("3/3 data-quality checks passed") == 3  # series, predictions, served_model_promoted
    assert (wh.reports / "mackey_glass.html").exists()
    assert (
        main(
            [
                "--home",
                str(wh.home),
                "query",
                "SELECT source, count(*) AS n FROM predictions GROUP BY 1 ORDER BY 1",
                "--format",
                "json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in rows] == ["iot_sensor", "mackey_glass", "market_A"]
    assert all(r["n"] == 600 - 250 for r in rows)  # one prediction per step after the first training window
    # one prediction per (source, time)
    assert (
        main(
            [
                "--home",
                str(wh.home),
                "query",
                "SELECT count(*) AS dup FROM (SELECT source, timestamp FROM predictions GROUP BY 1, 2 "
                "HAVING count(*) > 1)",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)[0]["dup"] == 0
    # the portfolio QUBO's cardinality penalty picks k = 3 // 2 = 1 of the three sources
    assert (
        main(
            [
                "--home",
                str(wh.home),
                "query",
                "SELECT count(*) AS n, sum(chosen::INT) AS k FROM portfolio",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)[0] == {"n": 3, "k": 1}
    csv = tmp_path / "mine.csv"
    csv.write_text("timestamp,value\n2026-02-01T00:00:00Z,1\n2026-02-01T00:01:00Z,oops\n")
    assert main(["--home", str(wh.home), "ingest", str(csv)]) == 1
    assert "row 3" in capsys.readouterr().err
    assert main(["--home", str(wh.home), "ingest", str(csv), "--skip-bad-rows"]) == 0
    assert (
        main(
            [
                "--home",
                str(wh.home),
                "query",
                "SELECT count(*) AS n FROM raw_ticks WHERE source = 'mine'",
                "--format",
                "csv",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1"


def test_series_quality_check_blocks_downstream(tmp_path):
    """A series that breaks the great-expectations suite fails the blocking check, and nothing downstream
    runs."""
    import numpy as np
    import pandas as pd
    from dagster import AssetExecutionContext, asset, materialize

    from nq_dagster.assets.checks import series_quality

    ran = []

    @asset(name="series")
    def bad_series(context: AssetExecutionContext) -> pd.DataFrame:
        ts = pd.date_range("2026-01-01", periods=50, freq="s", tz="UTC").to_series().reset_index(drop=True)
        ts.iloc[20] = ts.iloc[10]  # out of order
        v = np.arange(50.0)
        v[30] = np.nan
        return pd.DataFrame({"timestamp": ts, "value": v})

    @asset
    def downstream(series: pd.DataFrame) -> int:
        ran.append(True)
        return len(series)

    res = materialize([bad_series, downstream, series_quality], raise_on_error=False)
    (ev,) = res.get_asset_check_evaluations()
    assert not ev.passed
    text = ev.metadata["summary"].value
    assert "rows [20]" in text and "rows [30]" in text and "fix:" in text
    assert not ran  # blocked


def test_prediction_suite_catches_duplicates_and_leakage():
    import pandas as pd

    from nq_dagster.validation.quality import PREDICTION_COLUMNS, run_suite

    ts = pd.date_range("2026-01-01", periods=4, freq="s", tz="UTC")
    good = pd.DataFrame({c: ["x"] * 4 for c in PREDICTION_COLUMNS})
    good = good.assign(
        prediction_id=["a", "b", "c", "d"],
        timestamp=ts,
        train_end=ts - pd.Timedelta("1s"),
        direction=["up", "down", "hold", "up"],
        confidence=[0.5, 0.9, 0.34, 1.0],
        magnitude=[0.0, 1.0, 2.0, 3.0],
        processing_time_ms=[1.0, None, 2.0, 0.5],
        p_down=0.2,
        p_hold=0.3,
        p_up=0.5,
    )
    assert run_suite("predictions", good).success
    bad = good.copy()
    bad.loc[3, "timestamp"] = bad.loc[2, "timestamp"]  # two predictions for one (source, time)
    bad.loc[1, "train_end"] = bad.loc[1, "timestamp"]  # model saw the row it predicts
    bad.loc[0, "confidence"] = 1.2
    bad.loc[2, "p_up"] = 1.5
    rep = run_suite("predictions", bad)
    failed = set(rep.failures()["expectation"])
    assert {
        "expect_compound_columns_to_be_unique",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_values_to_be_between",
    } <= failed


def test_predict_cli_matches_pipeline(wh, capsys):
    """`nq predict` without values reproduces the pipeline's record for the last row; with values it
    continues."""
    assert main(["--home", str(wh.home), "demo", "--sources", "3", "--points", "500", "--seed", "2"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "--home",
                str(wh.home),
                "query",
                "SELECT direction, confidence, predicted_change FROM predictions "
                "WHERE source = 'mackey_glass' ORDER BY timestamp DESC LIMIT 1",
                "--format",
                "json",
            ]
        )
        == 0
    )
    stored = json.loads(capsys.readouterr().out)[0]
    assert main(["--home", str(wh.home), "predict", "--source", "mackey_glass", "--compact"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["direction"] == stored["direction"]
    assert abs(got["confidence"] - stored["confidence"]) < 1e-9
    assert abs(got["predicted_change"] - stored["predicted_change"]) < 1e-9
    assert got["calibration"]["predictions"] > 0  # confidence shown next to the accuracy achieved at it
    assert (
        main(
            [
                "--home",
                str(wh.home),
                "predict",
                "--source",
                "mackey_glass",
                "--values",
                "0.9,0.95",
                "--all",
                "--compact",
            ]
        )
        == 0
    )
    two = json.loads(capsys.readouterr().out)
    assert len(two) == 2 and two[1]["timestamp"] > two[0]["timestamp"] > got["timestamp"]
    assert main(["--home", str(wh.home), "predict", "--source", "mackey_glass", "--values", "1,x"]) == 2
    assert "--values" in capsys.readouterr().err


def test_code_location_imports_without_deprecation_warnings_from_this_project():
    """Loading the definitions raises no DeprecationWarning whose origin is this project's code (a fresh
    process, so nothing was imported before)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import nq_dagster.definitions\n"
        "print(json.dumps([(str(x.filename), str(x.message)[:200]) for x in w\n"
        "                  if issubclass(x.category, DeprecationWarning)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    ours = [(f, m) for f, m in found if "/nq_dagster/" in f]
    assert not ours, ours


def test_code_location_loads_without_the_heavy_engines():
    """Every run is a new process that imports the code location: it must not pay for torch, scipy,
    scikit-learn or matplotlib, which the assets import when they run."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys; import nq_dagster.definitions; "
        "print(json.dumps([m for m in ('torch', 'scipy', 'sklearn', 'matplotlib') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_partition_without_data_fails_in_one_line(wh):
    """A source added by hand (the UI's "Add a partition") with no data: the run fails with a one-line reason
    that says what to do, not a traceback."""
    from dagster import DagsterInstance

    from nq_dagster.definitions import defs
    from nq_dagster.runner import prepare_home

    prepare_home(str(wh.home))
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("source", ["empty"])
    res = defs.resolve_job_def("source_pipeline").execute_in_process(
        partition_key="empty", instance=instance, raise_on_error=False
    )
    assert not res.success
    failure = next(ev for ev in res.all_events if ev.is_step_failure)
    data = failure.event_specific_data
    desc = data.user_failure_data.description if data.user_failure_data else data.error.message
    assert desc.startswith("source 'empty' has no data yet") and "nq ingest FILE --source empty" in desc
    assert "\n" not in desc


def test_check_results_carry_their_source(wh):
    """The data-quality checks are partitioned by source: their results, read back from the instance, say
    which source they were for."""
    from dagster import AssetCheckKey, AssetKey, DagsterInstance

    from nq_dagster.cli import main
    from nq_dagster.demo import mackey_glass

    df = mackey_glass(450)
    path = wh.home.parent / "mg.csv"
    df.to_csv(path, index=False)
    assert main(["--home", str(wh.home), "ingest", str(path), "--source", "mg"]) == 0
    assert main(["--home", str(wh.home), "run", "--source", "mg"]) == 0
    instance = DagsterInstance.get()
    for asset, check in (("series", "series_quality"), ("predictions", "predictions_quality")):
        records = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey(asset), check), limit=5
        )
        assert records, check
        evaluation = records[0].event.dagster_event.event_specific_data
        assert evaluation.partition == "mg" and evaluation.passed, (check, evaluation)


def test_portfolio_follows_new_predictions():
    """Declarative automation: the portfolio is requested once after sources' predictions are materialized,
    and not again until new ones are (evaluated on this project's definitions)."""
    import datetime

    from dagster import AssetKey, AssetMaterialization, DagsterInstance, evaluate_automation_conditions

    from nq_dagster.definitions import defs

    # evaluated at fixed times between two ticks of the clocked conditions (the daily training, the freshness
    # check every 15 minutes): only the portfolio's own condition can request anything
    at = datetime.datetime.now(datetime.UTC).replace(hour=12, minute=1)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("source", ["a", "b", "new"])  # "new" has no predictions yet
        result = evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at)
        assert result.total_requested == 0  # nothing happened upstream yet
        for s in ("a", "b"):
            instance.report_runless_asset_event(AssetMaterialization(asset_key="predictions", partition=s))
        result = evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor, evaluation_time=at.replace(minute=2)
        )
        assert result.get_requested_partitions(AssetKey("portfolio")) == {None}
        result = evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=result.cursor, evaluation_time=at.replace(minute=3)
        )
        assert result.total_requested == 0  # handled: not again until new predictions


def test_a_short_series_fails_before_any_work_with_the_reason(wh, tmp_path, capsys):
    """Fewer rows than training needs: `nq ingest` and `nq run` say at once how many rows the source has and
    how many training needs; the run does no work."""
    from nq_dagster.cli import main
    from nq_dagster.demo import mackey_glass

    mackey_glass(120).to_csv(tmp_path / "short.csv", index=False)
    assert main(["--home", str(wh.home), "ingest", str(tmp_path / "short.csv"), "--source", "short"]) == 0
    line = "short: 120 rows stored; training needs at least 150: ingest 30 more rows before `nq run`"
    assert line in capsys.readouterr().out
    assert main(["--home", str(wh.home), "run", "--source", "short"]) == 1
    assert line in capsys.readouterr().out
    assert not wh.table_parts("series", "short")  # nothing ran


def test_a_series_of_180_rows_trains_on_a_scaled_schedule(wh, tmp_path, capsys):
    """Series shorter than 2 x train_min train on half of themselves (at least 100 rows) and refit about five
    times over the rest: 180 rows -> the first model on 100 rows, 80 walk-forward predictions."""
    from nq_dagster.cli import main
    from nq_dagster.demo import mackey_glass
    from nq_dagster.fusion.walkforward import training_schedule

    s = training_schedule(180, 250, 200)
    assert (s.train_min, s.refit_every, s.warmup) == (100, 16, 20)
    assert training_schedule(5000, 500, 250).train_min == 500  # long series: the config holds
    mackey_glass(180).to_csv(tmp_path / "s180.csv", index=False)
    assert main(["--home", str(wh.home), "ingest", str(tmp_path / "s180.csv"), "--source", "s180"]) == 0
    assert "the first model fits on 100 rows, refits every 16, predicts 80" in capsys.readouterr().out
    assert main(["--home", str(wh.home), "run", "--source", "s180"]) == 0
    assert len(wh.read_table("predictions", "s180")) == 80
    m = wh.read_table("validation_metrics", "s180").iloc[0]
    assert m["predictions"] == 79  # the last row's outcome is not realized yet


def test_every_asset_has_a_code_version_and_the_model_follows_its_design():
    """Dagster marks outputs of older code unsynced only if each asset declares a code version; the model's
    assets carry the fused model's design version, which the predictor checks at load."""
    from nq_dagster.definitions import defs
    from nq_dagster.fusion.model import DESIGN_VERSION

    graph = defs.resolve_asset_graph()
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert all(versions.values()), versions
    for name in ("fusion_model", "serving_state", "predictions", "live_predictions"):
        assert versions[name] == f"design-{DESIGN_VERSION}", name


def test_nq_dev_serves_the_code_location_through_dg(wh, tmp_path):
    """`nq dev` runs `dg dev` from the checkout (whatever the caller's directory): the UI answers and lists
    this project's code location with its assets; `dg check defs` validates the definitions."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from nq_dagster.cli.processes import dev_command

    cmd, cwd = dev_command(3000, "127.0.0.1")
    assert Path(cmd[0]).name == "dg" and cwd is not None
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "VIRTUAL_ENV": str(bin_dir.parent)}
    check = subprocess.run(
        [str(bin_dir / "dg"), "check", "defs"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0 and "All definitions loaded successfully" in check.stdout + check.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(bin_dir / "nq"), "--home", str(wh.home), "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    query = (
        b'{"query": "{ assetNodes { assetKey { path } } repositoriesOrError { ... on RepositoryConnection '
        b'{ nodes { location { name } } } } }"}'
    )
    try:
        deadline, answer = time.time() + 120, None
        while time.time() < deadline and answer is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=query,
                    headers={"content-type": "application/json"},
                )
                data = json.loads(urllib.request.urlopen(req, timeout=5).read())["data"]
                if data["assetNodes"]:
                    answer = data
            except OSError:
                time.sleep(1)
        assert answer, "the UI did not answer within 120 s"
        assert answer["repositoriesOrError"]["nodes"][0]["location"]["name"] == "nq_dagster"
        assert {"fusion_model", "serving_state"} <= {
            "/".join(n["assetKey"]["path"]) for n in answer["assetNodes"]
        }
        assert (wh.home / "dagster" / "dagster.yaml").exists()  # the instance nq writes, not dg's default
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(60)
        except (
            subprocess.TimeoutExpired
        ):  # the shutdown is not what this test is about: never leave it running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            # dagster dev starts the webserver and the daemon in sessions of their own; their code servers
            # exit on their own once these are gone (heartbeat)
            for pattern in (f"--port {port}", str(wh.home)):
                subprocess.run(["pkill", "-9", "-f", pattern], check=False)


def test_training_runs_daily_by_declarative_automation_for_sources_with_enough_rows(wh, monkeypatch):
    """The daily training is an automation condition on the per-source graph (no schedule): after the cron
    tick, every asset of the training graph is requested for each source with enough rows, in one evaluation
    (one run per source), and not for a source still short of rows; not again until the next tick."""
    import datetime

    from dagster import AssetKey, DagsterInstance, evaluate_automation_conditions

    from nq_dagster.definitions import defs

    monkeypatch.setenv("NQ_MIN_ROWS_TO_TRAIN", "20")
    ts = pd.date_range("2026-03-01", periods=30, freq="min", tz="UTC")
    wh.write_table("raw_ticks", "big", pd.DataFrame({"source": "big", "timestamp": ts, "value": 1.0}))
    wh.write_table("raw_ticks", "small", pd.DataFrame({"source": "small", "timestamp": ts[:5], "value": 1.0}))
    assert not defs.schedules
    day = datetime.datetime(2026, 3, 2, tzinfo=datetime.UTC)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("source", ["big", "small"])
        r = evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=day.replace(hour=2))
        assert r.total_requested == 0  # before the 03:00 tick
        r = evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=r.cursor, evaluation_time=day.replace(hour=3, minute=5)
        )
        trained = {
            "raw_ticks",
            "series",
            "spike_trains",
            "reservoir_states",
            "patterns",
            "features",
            "feature_selection",
            "fusion_model",
            "serving_state",
            "predictions",
            "validation_report",
        }
        for name in trained:
            assert r.get_requested_partitions(AssetKey(name)) == {"big"}, name
        assert not r.get_requested_partitions(AssetKey("live_predictions"))
        r = evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=r.cursor, evaluation_time=day.replace(hour=3, minute=10)
        )
        assert r.total_requested == 0  # handled until the next tick
