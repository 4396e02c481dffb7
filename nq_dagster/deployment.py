"""The one deployment switch, `DAGSTER_DEPLOYMENT` = `local` (default) or `k8s`.

`local`: every job runs in process; data in `$NQ_HOME`.
`k8s`: the training job runs each step in its own Kubernetes Job (`k8s_job_executor` from dagster-k8s); the
reservoir step asks for a GPU on the GPU node pool, the quantum steps for large CPU pods (op tags below, read by
dagster-k8s); streaming stays in its run pod for latency. Data in `$NQ_HOME`, which on Kubernetes must be a
volume every pod mounts (ReadWriteMany); see k8s/README.md. Object storage (S3) is not implemented yet.
"""

from __future__ import annotations

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


def k8s_op_tags(kind: str) -> dict:
    """`dagster-k8s/config` op tags for a step: 'gpu' (reservoir), 'quantum', or 'default'. Ignored locally."""
    if kind == "gpu":
        cfg = {"container_config": {"resources": {"requests": GPU_RESOURCES, "limits": GPU_RESOURCES}},
               "pod_spec_config": {"node_selector": _node_selector(),
                                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}]}}
    elif kind == "quantum":
        cfg = {"container_config": {"resources": {"requests": QUANTUM_RESOURCES, "limits": QUANTUM_RESOURCES}}}
    elif kind == "default":
        cfg = {"container_config": {"resources": DEFAULT_STEP_RESOURCES}}
    else:
        raise ValueError(f"unknown step kind {kind!r}")
    return {"dagster-k8s/config": cfg}


def training_executor():
    """The training job's executor: in process locally, one Kubernetes Job per step on k8s."""
    if deployment() == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"max_concurrent": 8, "step_k8s_config": {
            "container_config": {"resources": DEFAULT_STEP_RESOURCES}}})
    from dagster import in_process_executor

    return in_process_executor
