"""Definitions: every asset, check, job, schedule, sensor and resource, assembled in one place."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from nq_dagster.assets import checks, fusion, ingestion, neuromorphic, quantum, streaming
from nq_dagster.assets.common import SETTINGS
from nq_dagster.deployment import training_executor
from nq_dagster.jobs import (  # noqa: F401  (names re-exported for the CLI)
    CROSS_SOURCE_JOB,
    FRESHNESS_JOB,
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
from nq_dagster.resources.io_manager import warehouse_io_manager
from nq_dagster.sensors import landing_sensor, run_failure_recorder
from nq_dagster.settings import Settings

ASSET_MODULES = [ingestion, neuromorphic, quantum, fusion, streaming]

# declarative automation, evaluated by the daemon every 30 s: the daily training of every source with enough
# rows (nq_dagster/assets/automation.py) and the portfolio after new predictions
automation_sensor = AutomationConditionSensorDefinition(
    "automation",
    target=AssetSelection.all() - AssetSelection.assets("live_predictions"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Requests the assets whose automation condition is true: each source's training graph once a day "
        "(NQ_TRAIN_CRON) when it has the rows training needs, and the cross-source portfolio after any "
        "source's predictions were materialized. Training runs go one per source like every run (the "
        "instance's tag limit)."
    ),
)


def build_resources(settings: Settings) -> dict:
    """Resources for the deployment chosen by DAGSTER_DEPLOYMENT (see nq_dagster/deployment.py): the storage
    backend (local files under NQ_HOME, or the bucket NQ_S3_BUCKET names) and the compute device. The data
    directory stays "" (resolved when a run starts), so runs follow NQ_HOME as the process that launches them
    sets it; the backend and the device are fixed here, once."""
    warehouse = WarehouseResource(
        home="", s3_bucket=settings.s3_bucket, s3_prefix=settings.s3_prefix, s3_endpoint=settings.s3_endpoint
    )
    return {
        "warehouse": warehouse,
        "compute": ComputeResource(device=settings.device),
        "io_manager": warehouse_io_manager,
    }


all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules([checks])

defs = Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[source_pipeline, streaming_job, ingest_only, cross_source, freshness_job],
    sensors=[landing_sensor, run_failure_recorder, automation_sensor],
    resources=build_resources(SETTINGS),
    executor=training_executor(
        SETTINGS
    ),  # runs the automation sensor launches (training) run in process, as the job does
)
