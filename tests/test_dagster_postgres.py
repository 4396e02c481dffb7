"""The Dagster instance as k8s/dagster.yaml deploys it, against a real PostgreSQL (tests/pg.py): the storage
block as written there (only the host, port, database and password pointed at the test's server) opens, and
runs written through one instance are read through another, as the daemon, the webserver and the run pods
share them. The landing-sensor suites run on it too (tests/test_sensors.py, tests/test_daemon_stream.py)."""

from pathlib import Path

import yaml
from dagster import DagsterInstance
from dagster._core.test_utils import create_run_for_test

K8S = Path(__file__).resolve().parents[1] / "k8s"


def test_the_deployed_storage_block_opens_on_postgresql(pg_cluster, tmp_path, monkeypatch):
    from urllib.parse import urlsplit

    storage = yaml.safe_load((K8S / "dagster.yaml").read_text())["storage"]
    db = storage["postgres"]["postgres_db"]
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not installed: the deployment names psycopg2
    assert db["scheme"] == "postgresql+psycopg2"
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    assert values["postgresql"]["postgresqlScheme"] == db["scheme"]
    url = urlsplit(pg_cluster.new_database())
    db.update(hostname=url.hostname, port=url.port, db_name=url.path.lstrip("/"), username=url.username)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused")  # trust authentication on loopback
    (tmp_path / "dagster.yaml").write_text(
        yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}})
    )
    with DagsterInstance.from_config(str(tmp_path)) as writer:
        assert type(writer.run_storage).__name__ == "PostgresRunStorage"
        run = create_run_for_test(writer, job_name="streaming", tags={"nq/source": "alpha"})
    with DagsterInstance.from_config(str(tmp_path)) as reader:
        got = reader.get_run_by_id(run.run_id)
        assert got is not None and got.tags["nq/source"] == "alpha"
