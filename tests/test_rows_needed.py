"""One rule, one answer: a 60-row source gets the same "rows training needs" from `nq ingest`, `nq run`, the
landing sensor, the daily automation's condition and the prediction server's 409 (config.rows_needed)."""

import re

import httpx
import pandas as pd
from dagster import build_sensor_context, instance_for_test

from nq_dagster.cli import main
from nq_dagster.config import load_config, rows_needed
from nq_dagster.resources import WarehouseResource
from nq_dagster.sensors.landing import landing_sensor
from nq_dagster.serve.keys import KeyStore

from .serving import ThreadServer


def write_rows(path, start, n):
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = pd.date_range(start, periods=n, freq="min", tz="UTC")
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": 100.0 + pd.RangeIndex(n)}).to_csv(
        path, index=False
    )


def needs(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"training needs(?: at least)? (\d+)", text)}


def test_a_short_source_hears_one_number_everywhere(wh, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NQ_SETTLE_SECONDS", "0")
    need = rows_needed(load_config(wh.home))
    write_rows(tmp_path / "short.csv", "2026-03-01", 60)
    assert main(["--home", str(wh.home), "ingest", str(tmp_path / "short.csv"), "--source", "short"]) == 0
    from_ingest = needs(capsys.readouterr().out)
    assert main(["--home", str(wh.home), "run", "--source", "short"]) == 1  # too short: nothing runs
    from_run = needs(capsys.readouterr().out)

    write_rows(wh.landing / "short" / "more.csv", "2026-03-02", 5)
    with instance_for_test() as inst:
        ctx = build_sensor_context(
            instance=inst, resources={"warehouse": WarehouseResource(home=str(wh.home))}
        )
        req = next(r for r in landing_sensor(ctx).run_requests if r.partition_key == "short")
    assert req.job_name == "ingest_only"  # 65 rows: stored, not trained
    from_sensor = {int(req.tags["nq/rows_needed"])}
    (wh.landing / "short" / "more.csv").unlink()

    developer = KeyStore(wh.home).create("developer", "60000/min", 1000)[0]
    srv = ThreadServer(wh.home)
    try:
        r = httpx.post(
            f"{srv.url}/api/v1/process/realtime",
            headers={"Authorization": f"Bearer {developer}"},
            json={"source": "short", "data": [1.0], "timestamps": ["2026-03-03T00:00:00Z"]},
        )
    finally:
        srv.stop()
    assert r.status_code == 409
    from_server = needs(r.json()["error"]["message"])
    assert from_ingest == from_run == from_sensor == from_server == {need}
    assert need == 150  # the walk-forward's own minimum (fusion.walkforward.training_schedule)
