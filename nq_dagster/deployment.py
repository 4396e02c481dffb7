"""The one deployment switch, `DAGSTER_DEPLOYMENT` = `local` (default) or `k8s`.

`local`: every job runs in process; data in `$NQ_HOME`.
`k8s`: the training job runs each step in its own Kubernetes Job (`k8s_job_executor` from dagster-k8s); the
reservoir step asks for a GPU on the GPU node pool, the quantum steps for large CPU pods (op tags below, read by
dagster-k8s); streaming stays in its run pod for latency. Tables and artifacts go to S3-compatible object
storage when `NQ_S3_BUCKET` is set (`nq_dagster/store/backends.py`); landing/, processed/, quarantine/ and
reports/ stay under `$NQ_HOME`, a volume every pod mounts (ReadWriteMany); see k8s/README.md.
"""

from __future__ import annotations

import json
import os

DEPLOYMENTS = ("local", "k8s")

# requests = limits, as the original planned: GPU pods 1 GPU, 4 CPU, 8 GiB; quantum pods 8 CPU, 16 GiB
GPU_RESOURCES = {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}
QUANTUM_RESOURCES = {"cpu": "8", "memory": "16Gi"}
DEFAULT_STEP_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}


def deployment() -> str:
    name = os.environ.get("DAGSTER_DEPLOYMENT", "local")
    if name not in DEPLOYMENTS:
        raise ValueError(f"DAGSTER_DEPLOYMENT={name!r}: choose one of {DEPLOYMENTS}")
    return name


def _node_selector() -> dict[str, str]:
    raw = os.environ.get("NQ_GPU_NODE_SELECTOR", "nq.io/pool=gpu")
    pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"NQ_GPU_NODE_SELECTOR={raw!r}: expected key=value[,key=value]")
    return {k.strip(): v.strip() for k, v in pairs}


# every step pod: non-root, no privilege escalation, no capabilities, read-only root file system (scratch in an
# emptyDir at /tmp), the runtime's seccomp profile, no service-account token (a step does not call the API)
_SECURE_CONTAINER = {
    "security_context": {"run_as_non_root": True, "run_as_user": 10001, "run_as_group": 10001,
                         "allow_privilege_escalation": False, "read_only_root_filesystem": True,
                         "capabilities": {"drop": ["ALL"]}, "seccomp_profile": {"type": "RuntimeDefault"}},
    "volume_mounts": [{"name": "tmp", "mount_path": "/tmp"}],
}
_SECURE_POD = {
    "security_context": {"run_as_non_root": True, "run_as_user": 10001, "fs_group": 10001,
                         "seccomp_profile": {"type": "RuntimeDefault"}},
    "automount_service_account_token": False,
    "volumes": [{"name": "tmp", "empty_dir": {}}],
}


def _data_volume() -> tuple[list[dict], list[dict]]:
    """The shared data volume (NQ_DATA_PVC, a ReadWriteMany claim) mounted at NQ_HOME in every step pod:
    landing/, processed/, quarantine/ and reports/ live there (and everything, without object storage)."""
    claim = os.environ.get("NQ_DATA_PVC", "").strip()
    if not claim:
        return [], []
    return ([{"name": "data", "persistent_volume_claim": {"claim_name": claim}}],
            [{"name": "data", "mount_path": os.environ.get("NQ_HOME") or "/data"}])


def k8s_op_tags(kind: str) -> dict:
    """`dagster-k8s/config` op tags for a step: 'gpu' (reservoir), 'quantum', or 'default'. Ignored locally."""
    volumes, mounts = _data_volume()
    pod = {**_SECURE_POD, "volumes": _SECURE_POD["volumes"] + volumes}
    container = {**_SECURE_CONTAINER, "volume_mounts": _SECURE_CONTAINER["volume_mounts"] + mounts}
    if kind == "gpu":
        resources = {"requests": GPU_RESOURCES, "limits": GPU_RESOURCES}
        pod.update({"node_selector": _node_selector(),
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    elif kind == "quantum":
        resources = {"requests": QUANTUM_RESOURCES, "limits": QUANTUM_RESOURCES}
    elif kind == "default":
        resources = DEFAULT_STEP_RESOURCES
    else:
        raise ValueError(f"unknown step kind {kind!r}")
    return {"dagster-k8s/config": {"container_config": {**container, "resources": resources},
                                   "pod_spec_config": pod}}


def training_executor():
    """The training job's executor: in process locally, one Kubernetes Job per step on k8s."""
    if deployment() == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"max_concurrent": 8,
                                            "step_k8s_config": k8s_op_tags("default")["dagster-k8s/config"]})
    from dagster import in_process_executor

    return in_process_executor


def render_step_job(step: str, image: str = "ghcr.io/your-org/nq-dagster:0.1.0-cuda", namespace: str = "nq") -> dict:
    """The Kubernetes Job that dagster-k8s builds for one step of the training job, as a plain dict
    (for the offline schema check and the security scan; needs the k8s extra)."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
    from kubernetes.client import ApiClient

    from nq_dagster.definitions import defs

    node = defs.resolve_job_def("source_pipeline").graph.node_named(step)
    # a step without its own tags gets the executor's step_k8s_config, which is k8s_op_tags("default")
    tags = node.definition.tags if "dagster-k8s/config" in node.definition.tags else {
        "dagster-k8s/config": json.dumps(k8s_op_tags("default")["dagster-k8s/config"])}
    cfg = DagsterK8sJobConfig(job_image=image, dagster_home="/opt/dagster/dagster_home",
                              image_pull_policy="IfNotPresent", instance_config_map="nq-dagster-instance")
    name = f"nq-step-{step.replace('_', '-')}"
    job = construct_dagster_k8s_job(cfg, args=["dagster", "api", "execute_step"], job_name=name,
                                    user_defined_k8s_config=get_user_defined_k8s_config(tags),
                                    pod_name=name, component="step_worker")
    out = ApiClient().sanitize_for_serialization(job)
    out.setdefault("metadata", {})["namespace"] = namespace  # k8s_job_executor puts step Jobs in the run's namespace
    return out


if __name__ == "__main__":  # python -m nq_dagster.deployment OUTDIR: the step Jobs as YAML, for checkov
    import sys
    from pathlib import Path

    import yaml

    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for step in ("reservoir_states", "feature_selection", "series"):
        (target / f"{step}-job.yaml").write_text(yaml.safe_dump(render_step_job(step), sort_keys=False))
    print(f"wrote the step Jobs to {target}")
