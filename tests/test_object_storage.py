"""The k8s storage path: tables and artifacts in S3-compatible object storage (a moto server started here),
end to end through materialization, queries, `nq predict` and re-ingestion."""

import json
import socket

import pyarrow.fs as pafs
import pytest

from nq_dagster.cli import main


@pytest.fixture
def s3(monkeypatch):
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is a test dependency (dev extra)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "NQ_S3_BUCKET": "nq-test",
        "NQ_S3_ENDPOINT": f"http://127.0.0.1:{port}",
        "NQ_S3_PREFIX": "team-a",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fs = pafs.S3FileSystem(
        access_key="test",
        secret_key="test",
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("nq-test")
    yield fs
    server.stop()


def test_graph_on_object_storage(wh, s3, capsys):
    assert main(["--home", str(wh.home), "demo", "--sources", "3", "--points", "450", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("3/3 data-quality checks passed") == 3  # series, predictions, served_model_promoted
    # the record is in the bucket, not on the local disk
    keys = {i.path for i in s3.get_file_info(pafs.FileSelector("nq-test/team-a", recursive=True))}
    assert "nq-test/team-a/warehouse/predictions/source=mackey_glass/data.parquet" in keys
    assert "nq-test/team-a/artifacts/serving_state/mackey_glass.npz" in keys
    assert any(k.startswith("nq-test/team-a/warehouse/ingest_log/source=_log/") for k in keys)
    assert not list((wh.home / "warehouse").rglob("*.parquet"))
    # DuckDB answers over the objects
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
    assert all(
        r["n"] == 450 - 225 for r in rows
    )  # 450 < 2 x train_min: the first model fits on 450 // 2 rows
    # serving from the bucket
    assert (
        main(["--home", str(wh.home), "predict", "--source", "market_A", "--values", "101.5", "--compact"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["source"] == "market_A"
    # the ingest log in the bucket still makes re-ingestion of the same bytes a no-op
    first = next((wh.home / "processed" / "market_A").rglob("*.csv"))  # its own file: (source, content) seen
    assert main(["--home", str(wh.home), "ingest", str(first), "--source", "market_A"]) == 0
    assert "skipped-duplicate-file" in capsys.readouterr().out


def test_object_storage_settings_from_secret_files(tmp_path, monkeypatch):
    """k8s/serve.yaml mounts the storage secret as files (NQ_SECRETS_DIR): they set the variables the
    environment does not already set."""
    from nq_dagster.settings import Settings
    from nq_dagster.store import ObjectStore

    for name in ("NQ_S3_BUCKET", "NQ_S3_PREFIX", "NQ_S3_ENDPOINT", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "NQ_S3_BUCKET").write_text("from-file\n")
    (tmp_path / "NQ_S3_ENDPOINT").write_text("http://127.0.0.1:9")
    (tmp_path / "NQ_S3_PREFIX").write_text("ignored")
    monkeypatch.setenv("NQ_S3_PREFIX", "from-env")
    monkeypatch.setenv("NQ_SECRETS_DIR", str(tmp_path))
    store = ObjectStore.from_settings(Settings.from_env())
    assert (
        store.bucket == "from-file" and store.prefix == "from-env" and store.endpoint == "http://127.0.0.1:9"
    )


def test_the_backend_is_the_warehouse_resource_chosen_in_definitions(tmp_path, monkeypatch):
    """definitions.py picks the storage backend as the `warehouse` resource's configuration (shown with it in
    the UI): a bucket when NQ_S3_BUCKET names one, else local files."""
    from nq_dagster.definitions import build_resources
    from nq_dagster.settings import Settings

    monkeypatch.delenv("NQ_S3_BUCKET", raising=False)
    local = build_resources(Settings.from_env())["warehouse"]
    assert local.s3_bucket == "" and local.warehouse().store.local
    monkeypatch.setenv("NQ_S3_BUCKET", "nq-test")
    monkeypatch.setenv("NQ_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("NQ_HOME", str(tmp_path / "nq"))
    res = build_resources(Settings.from_env())["warehouse"]
    assert (res.s3_bucket, res.s3_prefix, res.s3_endpoint) == ("nq-test", "nq", "http://127.0.0.1:9")
    store = res.warehouse().store
    assert store.bucket == "nq-test" and store.url() == "s3://nq-test/nq at http://127.0.0.1:9"
    # the resource is the authority: no bucket configured means local files, whatever the environment says
    from nq_dagster.resources import WarehouseResource

    assert WarehouseResource(home=str(tmp_path / "nq"), s3_bucket="").warehouse().store.local
