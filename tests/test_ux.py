"""What a person sees (issue 28): checks that fail only for a reason, typos and empty states answered with the
next step, progress of `nq run`, a summary that fits a terminal. One trained data directory for the module
(SMALL_CONFIG, 400 rows of Mackey-Glass), copied where a test writes to it."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from nq_dagster.demo import mackey_glass

from .conftest import small_home
from .test_object_storage import s3  # noqa: F401 - the moto S3 fixture

N_TRAIN = 400


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A data directory with source `mackey_glass` trained on N_TRAIN rows."""
    from nq_dagster.runner import prepare_home, run_pipeline

    root = tmp_path_factory.mktemp("ux")
    with small_home(root / "nq") as wh:
        wh = prepare_home(str(wh.home))
        df = mackey_glass(N_TRAIN)
        (wh.landing / "mackey_glass.csv").write_text(df.to_csv(index=False))
        assert run_pipeline(wh, ["mackey_glass"], log=lambda *_: None)["mackey_glass"]
        yield wh


@pytest.fixture
def home(trained, tmp_path, monkeypatch):
    """A copy of the trained data directory, NQ_HOME and DAGSTER_HOME pointed at it."""
    from nq_dagster.runner import prepare_home

    dest = tmp_path / "nq"
    shutil.copytree(trained.home, dest, ignore=shutil.ignore_patterns("*.lock"))
    monkeypatch.setenv("NQ_HOME", str(dest))
    monkeypatch.setenv("DAGSTER_HOME", str(dest / "dagster"))
    return prepare_home(str(dest))


# --- checks that fail only for a reason (item 3) -----------------------------------------------------------


def test_a_streaming_run_with_no_new_rows_passes_its_check_saying_so(home):
    """Nothing landed since training: the streaming run predicts nothing, and its predictions suite says "no
    new rows" (passed, zero rows checked) instead of 18 failed expectations of "0 bad value(s)"."""
    from nq_dagster.definitions import defs
    from nq_dagster.runner import open_instance, run_config_for

    res = defs.resolve_job_def("streaming").execute_in_process(
        partition_key="mackey_glass",
        instance=open_instance(home),
        run_config=run_config_for(home),
        tags={"nq/source": "mackey_glass"},
        raise_on_error=False,
    )
    assert res.success
    checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
    live = checks["live_predictions_quality"]
    assert live.passed, live.metadata["summary"].value
    assert live.metadata["rows_checked"].value == 0
    assert "no new rows" in live.metadata["summary"].value
    assert checks["predictions_fresh"].passed


def test_freshness_counts_only_sources_with_a_model(home):
    """A source still gathering the rows training needs is listed, never stale; a trained source behind its
    data is."""
    from nq_dagster.assets.checks import freshness_table
    from nq_dagster.ingest import Ingestor

    ing = Ingestor(home)
    tiny = home.home / "tiny.csv"
    tiny.write_text(mackey_glass(20).to_csv(index=False))
    assert ing.ingest_file(tiny, source="tiny").status.startswith("ingested")
    later = mackey_glass(N_TRAIN + 5).iloc[N_TRAIN:]
    more = home.home / "more.csv"
    more.write_text(later.to_csv(index=False))
    assert ing.ingest_file(more, source="mackey_glass").status.startswith("ingested")
    table = freshness_table(home, 300, pd.Timestamp.now(tz="UTC") + pd.Timedelta("1h")).set_index("source")
    assert not table.loc["tiny", "has_model"] and not table.loc["tiny", "stale"]
    assert table.loc["mackey_glass", "has_model"] and table.loc["mackey_glass", "stale"]


def test_predictions_fresh_is_evaluated_after_training_runs(trained):
    """`nq demo` and `nq run` (run_pipeline) end with one evaluation of `predictions_fresh`: the Dagster
    overview shows its result, not "Not evaluated" (training runs do not run it; before, only a streaming run
    did). Read back through the instance's API, as the UI reads it."""
    from dagster import AssetCheckKey, AssetKey
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    from nq_dagster.runner import open_instance

    instance = open_instance(trained)
    rec = instance.get_latest_asset_check_evaluation_record(
        AssetCheckKey(AssetKey("predictions"), "predictions_fresh")
    )
    assert rec is not None and rec.status == AssetCheckExecutionRecordStatus.SUCCEEDED
    evaluation = rec.event.asset_check_evaluation
    assert evaluation.passed and evaluation.metadata["sources_with_a_model"].value == 1
    assert instance.get_run_by_id(rec.run_id).job_name == "freshness_check"


def test_the_daemon_evaluates_predictions_fresh_every_15_minutes():
    """Data that waits for a prediction grows stale without an event: the automation sensor's conditions
    request the freshness check (alone) once after each quarter-hour tick, and not between ticks."""
    import datetime

    from dagster import AssetCheckKey, AssetKey, DagsterInstance, evaluate_automation_conditions

    from nq_dagster.definitions import automation_sensor, defs

    key = AssetCheckKey(AssetKey("predictions"), "predictions_fresh")
    assert key in automation_sensor.asset_selection.resolve_checks(defs.resolve_asset_graph())
    at = datetime.datetime(2026, 3, 2, 12, 1, tzinfo=datetime.UTC)  # far from the daily training's 03:00
    with DagsterInstance.ephemeral() as instance:
        requested = []
        cursor = None
        for minute in (1, 14, 16, 20, 29, 31):
            r = evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=cursor, evaluation_time=at.replace(minute=minute)
            )
            cursor = r.cursor
            checks = {k for res in r.results if res.true_subset.size for k in [res.key]}
            assert checks <= {key}, checks  # nothing else on this clock
            if key in checks:
                requested.append(minute)
        assert requested == [16, 31]  # after the :15 and :30 ticks, once each


def test_the_fix_offered_matches_the_failure():
    """A duplicate time is not fixed by retraining the model, a leak is not the user's data: each failure gets
    its own remedy, with the source filled in."""
    from nq_dagster.validation.quality import PREDICTION_COLUMNS, run_suite

    ts = pd.date_range("2026-01-01", periods=3, freq="s", tz="UTC")
    good = pd.DataFrame({c: ["x"] * 3 for c in PREDICTION_COLUMNS}).assign(
        prediction_id=["a", "b", "c"],
        timestamp=ts,
        train_end=ts - pd.Timedelta("1s"),
        direction="up",
        confidence=0.5,
        magnitude=1.0,
        processing_time_ms=1.0,
        p_down=0.2,
        p_hold=0.3,
        p_up=0.5,
    )
    dup = good.copy()
    dup.loc[2, ["timestamp", "train_end"]] = dup.loc[1, ["timestamp", "train_end"]]
    text = run_suite("predictions", dup).message(" for source s", "s")
    assert "predicted twice" in text and "source = 's'" in text and "nq run" not in text
    leak = good.copy()
    leak.loc[0, "train_end"] = leak.loc[0, "timestamp"]
    text = run_suite("predictions", leak).message(" for source s", "s")
    assert "saw the target" in text and "nq run --source s" in text and "predicted twice" not in text


# --- typos and empty states (item 4) -----------------------------------------------------------------------


def test_a_mistyped_source_is_refused_with_the_nearest_name_and_creates_nothing(home, capsys):
    from nq_dagster.cli import main
    from nq_dagster.runner import open_instance

    before = set(open_instance(home).get_dynamic_partitions("source"))
    assert main(["--home", str(home.home), "run", "--source", "mackey_glas"]) == 2
    err = capsys.readouterr().err
    assert "unknown source 'mackey_glas'; did you mean 'mackey_glass'?" in err
    assert set(open_instance(home).get_dynamic_partitions("source")) == before  # no partition for the typo
    assert main(["--home", str(home.home), "predict", "--source", "mackey_glas"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'mackey_glass'?" in err and "nq run --source mackey_glas" not in err


def test_an_unknown_table_lists_the_known_ones_without_duckdb_catalog_errors(home, capsys):
    from nq_dagster.cli import main

    assert main(["--home", str(home.home), "query", "select count(*) from seris"]) == 1
    err = capsys.readouterr().err
    assert "unknown table 'seris'; did you mean 'series'?" in err and "Catalog Error" not in err
    assert "predictions" in err and "ingest_log" in err  # the tables that exist are listed


def test_an_empty_home_says_what_to_run_first(tmp_path, capsys):
    from nq_dagster.cli import main

    empty = str(tmp_path / "empty")
    assert main(["--home", empty, "run"]) == 1
    err = capsys.readouterr().err
    assert "nq ingest" in err and "nq demo" in err
    assert main(["--home", empty, "query", "select * from predictions"]) == 1
    err = capsys.readouterr().err
    assert "holds no rows yet" in err and "nq demo" in err and "Catalog Error" not in err
    assert main(["--home", empty, "predict", "--source", "market_A"]) == 2
    assert "nq demo" in capsys.readouterr().err


# --- progress and a summary that fits a terminal (item 2) --------------------------------------------------


def test_nq_run_shows_each_step_with_rows_and_an_estimate_and_a_summary_in_100_columns(home, capsys):
    """Not a terminal: one plain line per step (its share of the graph, rows, elapsed, an estimate measured on
    the fixture's earlier run); the summary fits 100 columns, every column with --format json."""
    from nq_dagster.cli import main
    from nq_dagster.definitions import defs

    total = len(defs.resolve_job_def("source_pipeline").graph.nodes)
    assert main(["--home", str(home.home), "run", "--source", "mackey_glass"]) == 0
    out = capsys.readouterr()
    steps = [line for line in out.err.splitlines() if line.startswith("  mackey_glass: step ")]
    assert len(steps) == total, out.err
    assert steps[0].startswith(f"  mackey_glass: step 1/{total} raw_ticks")
    assert any(f"/{total} fusion_model" in line for line in steps)
    assert all(" left" in line for line in steps)  # the fixture's run measured every step: an estimate
    assert any(f"{N_TRAIN} rows" in line for line in steps)  # rows reported by a finished step
    lines = out.out.splitlines()
    head = next(i for i, line in enumerate(lines) if "accuracy (95% CI)" in line)
    assert max(len(line) for line in lines[head:]) <= 100 and "mackey_glass" in lines[head + 1]
    assert main(["--home", str(home.home), "run", "--source", "mackey_glass", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"p_binom", "p_dm_best", "ece_late"} <= set(rows[0])  # the wide table's columns


def test_the_terminal_bar_rewrites_one_line_within_100_columns(trained):
    """The events of the fixture's training run, replayed into a terminal bar: one line rewritten (\\r), never
    wider than 100 columns, the share of the graph growing to n/n."""
    import io

    from dagster import DagsterEventType

    from nq_dagster.definitions import defs
    from nq_dagster.progress import RunProgress, step_history
    from nq_dagster.runner import open_instance

    instance = open_instance(trained)
    job = defs.resolve_job_def("source_pipeline")
    run = next(r for r in instance.get_runs() if r.job_name == job.name)
    buf = io.StringIO()
    bar = RunProgress(
        "mackey_glass",
        [n.name for n in job.graph.nodes],
        rows=N_TRAIN,
        history=step_history(instance, job.name),
        out=buf,
        tty=True,
    )
    for rec in instance.get_records_for_run(run.run_id).records:
        if rec.event_log_entry.dagster_event_type != DagsterEventType.RUN_SUCCESS:
            bar.on_event(rec.event_log_entry)
    bar.close()
    frames = buf.getvalue().split("\r")
    assert "\n" not in buf.getvalue()
    assert all(len(f) <= 100 for f in frames)
    total = len(job.graph.nodes)
    assert any(f"[{'#' * 10}" in f and f" {total}/{total} " in f for f in frames)


# --- the report's return chart (item 7) --------------------------------------------------------------------


def test_the_return_chart_is_after_costs_and_beside_the_verdict(tmp_path):
    """Flipping position every row costs 2 x 5 bp per flip: the net line is the gross one minus exactly that;
    the chart sits right after the verdict, says "after costs", and the report nowhere shows a gross line."""
    import numpy as np

    from nq_dagster.validation.report import COST_BP, strategy_returns, write_report

    values = np.exp(np.cumsum(np.full(11, 0.01)))  # +1 % a row
    rows = np.arange(10)
    pred = np.array([1, -1] * 5)
    gross, net = strategy_returns(values, rows, pred)
    turnover = np.array([1] + [2] * 9)
    assert np.allclose(pred * gross - net, COST_BP * 1e-4 * turnover)
    n = 40
    ev = {
        "reliability": pd.DataFrame({"mean_confidence": [0.5], "accuracy": [0.5]}),
        "correct": np.ones(n, bool),
        "baseline_dirs": {},
        "y_dir": np.ones(n, int),
        "pred_dir": np.ones(n, int),
        "rows": np.arange(n),
        "metrics": {"score": 0.0, "verdict": "no skill"},
        "criteria": pd.DataFrame({"criterion": ["x"], "p_value": [0.5], "p_holm": [0.5]}),
        "baselines": pd.DataFrame({"name": ["persistence"]}),
        "ablations": pd.DataFrame({"name": ["fused"]}),
        "regimes": pd.DataFrame({"regime": ["low"]}),
    }
    path, _ = write_report(tmp_path / "market_A.html", "market_A", ev, np.linspace(100, 110, n + 1), "market")
    doc = path.read_text()
    assert "no costs" not in doc and "after costs" in doc
    assert doc.index("Validation score") < doc.index("<figure>") < doc.index("<h2>Metrics")


# --- every table queryable by source, on object storage too (item 1) ---------------------------------------


@pytest.mark.usefixtures("s3")
def test_views_over_object_storage_take_the_source_from_the_partition(wh):
    """`series` rows do not name their source: on S3 as on local disk, `nq query` takes it from the
    partition."""
    from nq_dagster.settings import Settings
    from nq_dagster.store import Warehouse
    from nq_dagster.store.views import QueryLimits

    w = Warehouse.from_settings(Settings.from_env().with_home(str(wh.home))).ensure()
    assert not w.store.local
    for src, n in (("a", 3), ("b", 1)):
        ts = pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC")
        w.write_table("series", src, pd.DataFrame({"timestamp": ts, "value": range(n)}))
    # (moto's store is one per process: the object-storage tests' sources are in the same bucket)
    q = "select source, count(*) as n from series where source in ('a', 'b') group by 1 order by 1"
    df = w.user_query(q, QueryLimits())
    assert df.to_dict("records") == [{"source": "a", "n": 3}, {"source": "b", "n": 1}]


def test_a_report_s_live_section_is_replaced_whatever_its_age():
    """The server replaces the live section of a report between its markers, and in a report written before
    the markers (from its heading to the next one); the figures it shows are the ones computed."""
    from nq_dagster.serve.http.routes.reports import with_live_section
    from nq_dagster.validation.report import live_section

    live = {
        "served": 40,
        "realized": 39,
        "unrealized_gap": 0,
        "accuracy": 19 / 39,
        "ci_low": 0.33,
        "ci_high": 0.64,
        "mean_confidence": 0.494,
        "by_model_version": [{"model_version": "v1", "served": 40, "realized": 39}],
    }
    now = live_section(live, as_of="2026-12-02 20:00:00 UTC")
    assert "40 predictions served live, 39 with a realized outcome: accuracy 0.487" in now
    assert "mean stated confidence of 0.494" in now and "As of 2026-12-02 20:00:00 UTC" in now
    head, tail = "<h1>r</h1><h2>Intervals</h2><p>x</p>", "<h2>Ablations</h2><p>y</p></body>"
    for written in (
        head + live_section(None) + tail,  # a report with the markers, nothing served at training
        head + "<h2>Served live (streaming job and prediction server), realized outcomes</h2>"
        "<p>Nothing had been served live when this report was written</p>" + tail,  # before the markers
    ):
        page = with_live_section(written, now)
        assert page == head + now + tail
        assert "Nothing had been served" not in page
