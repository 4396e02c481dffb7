"""Definitions: every asset, check, job, schedule, sensor and resource, assembled in one place."""

from __future__ import annotations

import os

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from nq_dagster.assets import checks, fusion, ingestion, neuromorphic, quantum
from nq_dagster.assets.common import source_partitions
from nq_dagster.resources import ComputeResource, WarehouseResource
from nq_dagster.resources.io_manager import WarehouseIOManager

ASSET_MODULES = [ingestion, neuromorphic, quantum, fusion]


def build_resources() -> dict:
    """Resources for the deployment chosen by DAGSTER_DEPLOYMENT (only `local` is implemented)."""
    deployment = os.environ.get("DAGSTER_DEPLOYMENT", "local")
    if deployment != "local":
        raise ValueError(f"DAGSTER_DEPLOYMENT={deployment!r} is not supported yet; use 'local'")
    home = os.environ.get("NQ_HOME", "")
    return {
        "warehouse": WarehouseResource(home=home),
        "compute": ComputeResource(device=os.environ.get("NQ_DEVICE", "auto")),
        "io_manager": WarehouseIOManager(home=home),
    }


all_assets = load_assets_from_modules(ASSET_MODULES)
all_checks = load_asset_checks_from_modules([checks])

source_pipeline = define_asset_job(
    "source_pipeline",
    selection=AssetSelection.all() - AssetSelection.keys("portfolio"),
    partitions_def=source_partitions,
    executor_def=in_process_executor,
    description="The per-source graph: ingestion to validation report, for one source partition.",
)

SOURCE_JOB = "source_pipeline"
CROSS_SOURCE_JOB = "cross_source"
cross_source = define_asset_job(
    "cross_source", selection=AssetSelection.keys("portfolio"), executor_def=in_process_executor,
    description="Assets across all sources: the quantum portfolio.",
)

defs = Definitions(assets=all_assets, asset_checks=all_checks, jobs=[source_pipeline, cross_source], resources=build_resources())
