"""The Kubernetes Jobs that dagster-k8s builds for the training job's steps, rendered offline as plain dicts:
for the schema check (tests/test_k8s.py) and the security scan (`python -m nq_dagster.k8s_jobs DIR`,
k8s/scan.sh). Needs the k8s extra. It assembles the code location, so it sits beside `definitions.py`, above
everything."""

from __future__ import annotations

import json

from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from kubernetes.client import ApiClient

from nq_dagster.assets.common import SETTINGS
from nq_dagster.definitions import defs
from nq_dagster.deployment import k8s_op_tags


def render_step_job(
    step: str, image: str = "ghcr.io/your-org/nq-dagster:0.1.0-cuda", namespace: str = "nq"
) -> dict:
    """The Kubernetes Job that dagster-k8s builds for one step of the training job, as a plain dict
    (for the offline schema check and the security scan; needs the k8s extra)."""
    node = defs.resolve_job_def("source_pipeline").graph.node_named(step)
    # a step without its own tags gets the executor's step_k8s_config, which is k8s_op_tags("default",
    # SETTINGS)
    tags = (
        node.definition.tags
        if "dagster-k8s/config" in node.definition.tags
        else {"dagster-k8s/config": json.dumps(k8s_op_tags("default", SETTINGS)["dagster-k8s/config"])}
    )
    cfg = DagsterK8sJobConfig(
        job_image=image,
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="IfNotPresent",
        instance_config_map="nq-dagster-instance",
    )
    name = f"nq-step-{step.replace('_', '-')}"
    job = construct_dagster_k8s_job(
        cfg,
        args=["dagster", "api", "execute_step"],
        job_name=name,
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
        pod_name=name,
        component="step_worker",
    )
    out = ApiClient().sanitize_for_serialization(job)
    out.setdefault("metadata", {})["namespace"] = (
        namespace  # k8s_job_executor puts step Jobs in the run's namespace
    )
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
