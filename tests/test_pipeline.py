"""Definitions load; the whole graph materializes on small demo data; the `nq` command works end to end."""

import json

from nq_dagster.cli import main


def test_definitions_load():
    from nq_dagster.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_ticks", "series", "spike_trains", "reservoir_states", "patterns", "features",
            "feature_selection", "fusion_model", "predictions", "validation_report", "portfolio"} <= keys
    assert defs.resolve_job_def("source_pipeline") is not None


def test_demo_ingest_query_cli(wh, tmp_path, capsys):
    assert main(["--home", str(wh.home), "demo", "--sources", "3", "--points", "600", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "mackey_glass" in out and "score" in out
    assert (wh.reports / "mackey_glass.html").exists()
    assert main(["--home", str(wh.home), "query", "SELECT source, count(*) AS n FROM predictions GROUP BY 1 ORDER BY 1",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in rows] == ["iot_sensor", "mackey_glass", "market_A"]
    assert all(r["n"] == 600 - 250 for r in rows)  # one prediction per step after the first training window
    # one prediction per (source, time)
    assert main(["--home", str(wh.home), "query",
                 "SELECT count(*) AS dup FROM (SELECT source, timestamp FROM predictions GROUP BY 1, 2 HAVING count(*) > 1)",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["dup"] == 0
    csv = tmp_path / "mine.csv"
    csv.write_text("timestamp,value\n2026-02-01T00:00:00Z,1\n2026-02-01T00:01:00Z,oops\n")
    assert main(["--home", str(wh.home), "ingest", str(csv)]) == 1
    assert "row 3" in capsys.readouterr().err
    assert main(["--home", str(wh.home), "ingest", str(csv), "--skip-bad-rows"]) == 0
    assert main(["--home", str(wh.home), "query", "SELECT count(*) AS n FROM raw_ticks WHERE source = 'mine'",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1"
