"""The one deployment switch, `DAGSTER_DEPLOYMENT` = `local` (default) or `k8s`.

`local`: every job runs in process; data in `$NQ_HOME`.
`k8s`: the training job runs each step in its own Kubernetes Job (`k8s_job_executor` from dagster-k8s); the
reservoir step asks for a GPU on the GPU node pool, the quantum steps for large CPU pods (op tags below, read
by dagster-k8s); streaming stays in its run pod for latency. Tables and artifacts go to S3-compatible object
storage when `NQ_S3_BUCKET` is set (`nq_dagster/store/`); landing/, processed/, quarantine/ and
reports/ stay under `$NQ_HOME`, a volume every pod mounts (ReadWriteMany); see k8s/README.md.
"""

from __future__ import annotations

from nq_dagster.settings import Settings

# requests = limits, as the original planned: GPU pods 1 GPU, 4 CPU, 8 GiB; quantum pods 8 CPU, 16 GiB
GPU_RESOURCES = {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}
QUANTUM_RESOURCES = {"cpu": "8", "memory": "16Gi"}
DEFAULT_STEP_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}


# every step pod: non-root, no privilege escalation, no capabilities, read-only root file system (scratch in
# an emptyDir at /tmp), the runtime's seccomp profile, no service-account token (a step does not call the API)
_SECURE_CONTAINER = {
    "security_context": {
        "run_as_non_root": True,
        "run_as_user": 10001,
        "run_as_group": 10001,
        "allow_privilege_escalation": False,
        "read_only_root_filesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccomp_profile": {"type": "RuntimeDefault"},
    },
    "volume_mounts": [{"name": "tmp", "mount_path": "/tmp"}],
}
_SECURE_POD = {
    "security_context": {
        "run_as_non_root": True,
        "run_as_user": 10001,
        "fs_group": 10001,
        "seccomp_profile": {"type": "RuntimeDefault"},
    },
    "automount_service_account_token": False,
    "volumes": [{"name": "tmp", "empty_dir": {}}],
}


def _data_volume(settings: Settings) -> tuple[list[dict], list[dict]]:
    """The shared data volume (NQ_DATA_PVC, a ReadWriteMany claim) mounted at NQ_HOME in every step pod:
    landing/, processed/, quarantine/ and reports/ live there (and everything, without object storage)."""
    claim = settings.data_pvc.strip()
    if not claim:
        return [], []
    return (
        [{"name": "data", "persistent_volume_claim": {"claim_name": claim}}],
        [{"name": "data", "mount_path": str(settings.home)}],
    )


def k8s_op_tags(kind: str, settings: Settings) -> dict:
    """`dagster-k8s/config` op tags for a step: 'gpu' (reservoir), 'quantum', or 'default'. Ignored
    locally."""
    volumes, mounts = _data_volume(settings)
    pod = {**_SECURE_POD, "volumes": _SECURE_POD["volumes"] + volumes}
    container = {**_SECURE_CONTAINER, "volume_mounts": _SECURE_CONTAINER["volume_mounts"] + mounts}
    if kind == "gpu":
        resources = {"requests": GPU_RESOURCES, "limits": GPU_RESOURCES}
        pod.update(
            {
                "node_selector": settings.node_selector(),
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }
        )
    elif kind == "quantum":
        resources = {"requests": QUANTUM_RESOURCES, "limits": QUANTUM_RESOURCES}
    elif kind == "default":
        resources = DEFAULT_STEP_RESOURCES
    else:
        raise ValueError(f"unknown step kind {kind!r}")
    return {
        "dagster-k8s/config": {
            "container_config": {**container, "resources": resources},
            "pod_spec_config": pod,
        }
    }


def training_executor(settings: Settings):
    """The training job's executor: in process locally, one Kubernetes Job per step on k8s."""
    if settings.deployment == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(
            {"max_concurrent": 8, "step_k8s_config": k8s_op_tags("default", settings)["dagster-k8s/config"]}
        )
    from dagster import in_process_executor

    return in_process_executor
