"""Dagster resources: storage (Parquet + DuckDB), compute device."""

from nq_dagster.resources.compute import ComputeResource
from nq_dagster.resources.storage import DUCKDB_POOL, Warehouse
from nq_dagster.resources.warehouse_resource import WarehouseResource

__all__ = ["DUCKDB_POOL", "ComputeResource", "Warehouse", "WarehouseResource"]
