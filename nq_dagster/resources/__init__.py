"""Dagster resources: storage (Parquet + DuckDB), compute device.

Imported lazily, so that `nq_dagster.resources.storage` (used by `nq predict` and `nq query`) does not pull
in dagster."""

from importlib import import_module

_WHERE = {"ComputeResource": "compute", "Warehouse": "storage",
          "WarehouseResource": "warehouse_resource"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"nq_dagster.resources.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'nq_dagster.resources' has no attribute {name!r}")
