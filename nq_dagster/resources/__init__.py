"""Dagster resources: storage (Parquet + DuckDB), compute device.

Imported lazily, so that `nq_dagster.store` (used by `nq predict` and `nq query`) does not pull
in dagster."""

from importlib import import_module

_WHERE = {
    "ComputeResource": "nq_dagster.resources.compute",
    "Warehouse": "nq_dagster.store",
    "WarehouseResource": "nq_dagster.resources.warehouse_resource",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'nq_dagster.resources' has no attribute {name!r}")
