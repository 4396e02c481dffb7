"""Kubernetes, offline: definitions load with the k8s deployment; the Job that dagster-k8s builds for the
reservoir step carries the GPU request, node selector and toleration and validates against the Kubernetes
schema; the instance configuration for k8s loads through Dagster's config schema; the Helm values parse."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[1] / "k8s"
pytest.importorskip("dagster_k8s", reason="the k8s extra (pip install -e '.[k8s]') is not installed")


def test_definitions_load_for_k8s(tmp_path):
    code = (
        "import json; from nq_dagster.definitions import defs; "
        "j = {n: defs.resolve_job_def(n).executor_def.name for n in ('source_pipeline', 'streaming')}; "
        "print(json.dumps(j))"
    )
    env = {
        **os.environ,
        "DAGSTER_DEPLOYMENT": "k8s",
        "NQ_HOME": str(tmp_path),
        "NQ_GPU_NODE_SELECTOR": "pool=gpu-a",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "source_pipeline": "k8s",
        "streaming": "in_process",
    }
    bad = subprocess.run(
        [sys.executable, "-c", "import nq_dagster.definitions"],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_DEPLOYMENT": "k8s", "NQ_HOME": ""},
    )
    assert bad.returncode != 0 and "needs NQ_HOME" in bad.stderr


def reservoir_job() -> dict:
    """The Job dagster-k8s builds for the reservoir step, in a fresh process: op tags are read from the
    environment when the code location is imported, as in a pod."""
    env = {
        **os.environ,
        "DAGSTER_DEPLOYMENT": "k8s",
        "NQ_HOME": "/data",
        "NQ_DATA_PVC": "nq-data",
        "NQ_GPU_NODE_SELECTOR": "nq.io/pool=gpu",
    }
    code = (
        "import json; from nq_dagster.k8s_jobs import render_step_job; "
        "print(json.dumps(render_step_job('reservoir_states')))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reservoir_step_job_asks_for_a_gpu_node():
    job = reservoir_job()
    pod = job["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1" and res["requests"]["nvidia.com/gpu"] == "1"
    assert res["limits"]["cpu"] == "4" and res["limits"]["memory"] == "8Gi"
    assert pod["nodeSelector"] == {"nq.io/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    sec = pod["containers"][0]["securityContext"]
    assert sec["runAsNonRoot"] and sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"]
    assert pod["automountServiceAccountToken"] is False
    # the shared data volume (landing/, reports/ ...) is mounted at NQ_HOME, scratch space at /tmp
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "nq-data"}} in pod["volumes"]
    assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(job, "1.30.0", strict=True)  # raises on any schema violation
    kv.validate(yaml.safe_load((K8S / "pvc.yaml").read_text()), "1.30.0", strict=True)


def test_quantum_steps_ask_for_large_cpu_pods():
    from dagster_k8s.job import get_user_defined_k8s_config

    from nq_dagster.definitions import defs

    tags = defs.resolve_job_def("source_pipeline").graph.node_named("feature_selection").definition.tags
    res = get_user_defined_k8s_config(tags).container_config["resources"]
    assert res["limits"] == {"cpu": "8", "memory": "16Gi"} and "nvidia.com/gpu" not in res["limits"]


def test_k8s_instance_config_loads_through_dagster_schema():
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_k8s import K8sRunLauncher

    cfg = yaml.safe_load((K8S / "dagster.yaml").read_text())
    top = validate_config(dagster_instance_config_schema(), cfg)
    assert top.success, [e.message for e in top.errors]
    launcher = validate_config(K8sRunLauncher.config_type(), cfg["run_launcher"]["config"])
    assert launcher.success, [e.message for e in launcher.errors]
    from dagster._core.run_coordinator import QueuedRunCoordinator

    queue = validate_config(QueuedRunCoordinator.config_type(), cfg["run_coordinator"]["config"])
    assert queue.success, [e.message for e in queue.errors]
    from dagster_postgres import DagsterPostgresStorage  # in the image through the k8s extra

    storage = validate_config(DagsterPostgresStorage.config_type(), cfg["storage"]["postgres"])
    assert storage.success, [e.message for e in storage.errors]


def test_helm_values_parse_and_agree_with_code():
    base = yaml.safe_load((K8S / "values.yaml").read_text())
    gpu = yaml.safe_load((K8S / "values-gpu.yaml").read_text())
    dep = base["dagster-user-deployments"]["deployments"][0]
    assert dep["dagsterApiGrpcArgs"] == ["-m", "nq_dagster.definitions"]
    assert {"name": "DAGSTER_DEPLOYMENT", "value": "k8s"} in dep["env"]
    assert base["runLauncher"]["type"] == "K8sRunLauncher"
    assert base["postgresql"]["enabled"] is True and base["dagsterDaemon"]["enabled"] is True
    limits = base["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert [x["key"] for x in limits] == ["dagster/partition", "nq/source"]  # every launch path is limited
    assert gpu["dagster-user-deployments"]["deployments"][0]["image"]["tag"].endswith("cuda")
    assert dep["securityContext"]["runAsNonRoot"] is True
    assert dep["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    run_pod = base["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert run_pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "nq-data"
    assert {"name": "NQ_DATA_PVC", "value": "nq-data"} in dep["env"]
    docker = (K8S / "Dockerfile").read_text()
    assert "USER 10001" in docker and "ARG VARIANT" in docker and docker.count("FROM ") == 2


def test_serve_statefulset():
    """The prediction server's manifests validate strictly; the replicas share the stream's partitions by
    leases (no fixed replica count, which would stop the autoscaler's pods from owning anything) and the
    shared store (its URL a file from a secret, never in the manifest or the environment); probes hit /livez
    and /readyz; the pods run as non-root on a read-only root file system with the shared data volume."""
    docs = list(yaml.safe_load_all((K8S / "serve.yaml").read_text()))
    kv = pytest.importorskip("kubernetes_validate")
    for d in docs:
        kv.validate(d, "1.30.0", strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = kinds[("StatefulSet", "nq-serve")]
    assert kinds[("Service", "nq-serve-headless")]["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == "nq-serve-headless"
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert "NQ_SERVE_REPLICAS" not in env and "NQ_SERVE_PEERS" not in env
    assert env["NQ_SERVE_STREAM"]["value"].startswith("nats://")
    assert "NQ_SERVE_SHARED_STORE" not in env  # its URL holds a password: a file in NQ_SECRETS_DIR
    (vol,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "secrets"]
    assert mount["mountPath"] == env["NQ_SECRETS_DIR"]["value"] and mount["readOnly"]
    shared = next(
        x["secret"] for x in vol["projected"]["sources"] if x["secret"]["name"] == "nq-shared-store-url"
    )
    assert shared["items"] == [{"key": "NQ_SERVE_SHARED_STORE", "path": "NQ_SERVE_SHARED_STORE"}]
    from nq_dagster.settings import Settings

    Settings.from_env({k: e["value"] for k, e in env.items() if "value" in e})  # every value parses
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "initialDelaySeconds" not in c["livenessProbe"]  # the port opens before the models load
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "nq-data"}} in pod["volumes"]
    assert c["command"][:2] == ["nq", "serve"] and "0.0.0.0" in c["command"]


def exported_metrics() -> set[str]:
    """The Prometheus series names the server defines, read from its sources: the HTTP server's telemetry
    (serve/http/telemetry.py) and the stream's gauges (serve/stream/nats.py: `nq_stream_<name>`)."""
    import re

    serve = K8S.parent / "nq_dagster" / "serve"
    telemetry = (serve / "http" / "telemetry.py").read_text()
    names = set(re.findall(r"(?:Gauge|Counter|Histogram|Summary)\(\s*\"(nq_[a-z0-9_]+)\"", telemetry))
    stream = (serve / "stream" / "nats.py").read_text()
    assert 'Gauge(f"nq_stream_{name}"' in stream
    names |= {f"nq_stream_{n}" for n in re.findall(r"^\s*\(\s*\"([a-z_]+)\",\s*\"", stream, re.M)}
    return names


def test_autoscaler_scales_the_server_on_metrics_it_exports():
    """The HorizontalPodAutoscaler targets the server's StatefulSet on per-pod metrics of load that the
    server exports (the stream's consumer lag, the engine's queue) and that prometheus-adapter's rules serve
    under the same names, from the same series; scale-down is slower than scale-up (a removed pod hands its
    partitions over); at most as many pods as the stream has partitions."""
    docs = list(yaml.safe_load_all((K8S / "serve.yaml").read_text()))
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "nq-serve",
    }
    assert (
        sts["metadata"]["name"] == "nq-serve" and hpa["metadata"]["namespace"] == sts["metadata"]["namespace"]
    )
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])
    assert set(names) == {"nq_stream_pending", "nq_engine_queue_depth"}
    assert set(names) <= exported_metrics(), (names, sorted(exported_metrics()))
    from nq_dagster.serve.http.telemetry import Metrics

    assert "nq_engine_queue_depth" in {
        m.name for m in Metrics().registry.collect()
    }  # registered, not only text
    assert all(float(m["pods"]["target"]["averageValue"]) > 0 for m in hpa["spec"]["metrics"])
    lo, hi = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 2 <= lo <= sts["spec"]["replicas"] <= hi <= 16  # 16: `nq serve --partitions`' default
    b = hpa["spec"]["behavior"]
    assert b["scaleDown"]["stabilizationWindowSeconds"] > b["scaleUp"]["stabilizationWindowSeconds"]
    ann = sts["spec"]["template"]["metadata"]["annotations"]  # Prometheus finds the pods, then the adapter
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    rules = {r["name"]["as"]: r for r in adapter["rules"]["custom"]}
    assert set(rules) == set(names)
    for name, rule in rules.items():
        assert rule["seriesQuery"].startswith(name + "{") and rule["name"]["matches"] == f"^{name}$"
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
    env = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "NQ_SERVE_METRICS_OPEN" in env  # Prometheus scrapes without a key


def test_shared_store_postgres_values():
    """The PostgreSQL the replicas share is a named dependency: its release's service, user and database are
    the ones the documented URL (serve.yaml) names, its password comes from a secret."""
    values = yaml.safe_load((K8S / "postgres-values.yaml").read_text())
    url = (
        f"postgresql://{values['auth']['username']}:PASSWORD@{values['fullnameOverride']}.nq.svc.cluster.local"
        f":5432/{values['auth']['database']}"
    )
    assert url in (K8S / "serve.yaml").read_text()
    assert values["auth"]["existingSecret"] and "password" not in values["auth"]
    assert values["primary"]["persistence"]["enabled"]


def test_nats_values_for_the_tick_stream():
    """The NATS chart's values run JetStream on files (the server's streams are file-backed), clustered in
    three so that a stream survives the loss of one broker, with the exporter that shows consumer lag; the
    serve manifest's documented stream URL names that release's service."""
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    js = values["config"]["jetstream"]
    assert js["enabled"] and js["fileStore"]["enabled"] and js["fileStore"]["pvc"]["enabled"]
    assert not js["memoryStore"]["enabled"]
    assert values["config"]["cluster"]["enabled"] and values["config"]["cluster"]["replicas"] == 3
    assert values["promExporter"]["enabled"]
    url = f"nats://{values['fullnameOverride']}.nq.svc.cluster.local:4222"
    assert url in (K8S / "serve.yaml").read_text()
