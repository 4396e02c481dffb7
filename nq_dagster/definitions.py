"""Definitions: every asset, check, job, schedule, sensor and resource, assembled in one place."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from nq_dagster.assets import checks, fusion, ingestion, neuromorphic, quantum, streaming
from nq_dagster.deployment import deployment, training_executor
from nq_dagster.jobs import (  # noqa: F401  (names re-exported for the CLI)
    CROSS_SOURCE_JOB,
    SOURCE_JOB,
    cross_source,
    freshness_job,
    ingest_only,
    source_pipeline,
)
from nq_dagster.jobs import (
    streaming as streaming_job,
)
from nq_dagster.resources import ComputeResource, WarehouseResource
from nq_dagster.resources.io_manager import WarehouseIOManager
from nq_dagster.sensors import landing_sensor, run_failure_recorder

ASSET_MODULES = [ingestion, neuromorphic, quantum, fusion, streaming]

# declarative automation, evaluated by the daemon every 30 s: the daily training of every source with enough rows
# (nq_dagster/assets/automation.py) and the portfolio after new predictions
automation_sensor = AutomationConditionSensorDefinition(
    "automation", target=AssetSelection.all() - AssetSelection.assets("live_predictions"),
    default_status=DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Requests the assets whose automation condition is true: each source's training graph once a day "
    "(NQ_TRAIN_CRON) when it has the rows training needs, and the cross-source portfolio after any source's "
    "predictions were materialized. Training runs go one per source like every run (the instance's tag limit).")


def build_resources() -> dict:
    """Resources for the deployment chosen by DAGSTER_DEPLOYMENT (see nq_dagster/deployment.py)."""
    if deployment() == "k8s" and not os.environ.get("NQ_HOME"):
        raise ValueError("DAGSTER_DEPLOYMENT=k8s needs NQ_HOME: the path of the volume every pod mounts")
    # home "" = resolved from NQ_HOME each time it is used, not frozen at import: the code server, the runs it
    # launches and the CLI may point at different data directories over one process's life (tests do)
    return {
        # the storage backend: local files under NQ_HOME, or the bucket NQ_S3_BUCKET names (k8s)
        "warehouse": WarehouseResource(home="", s3_bucket=os.environ.get("NQ_S3_BUCKET", ""),
                                       s3_prefix=os.environ.get("NQ_S3_PREFIX", "nq"),
                                       s3_endpoint=os.environ.get("NQ_S3_ENDPOINT", "")),
        "compute": ComputeResource(device=os.environ.get("NQ_DEVICE", "auto")),
        "io_manager": WarehouseIOManager(home=""),
    }


all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules([checks])

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[source_pipeline, streaming_job, ingest_only, cross_source, freshness_job],
    sensors=[landing_sensor, run_failure_recorder, automation_sensor],
    resources=build_resources(),
    executor=training_executor(),  # runs the automation sensor launches (training) run in process, as the job does
)
