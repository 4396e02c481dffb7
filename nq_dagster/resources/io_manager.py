"""IO manager: asset outputs into the warehouse.

DataFrames become Parquet partitions `warehouse/<asset>/source=<partition>/data.parquet`
(queryable through DuckDB views); anything else (models, reservoir states) is an
npz + JSON artifact (nq_dagster/store/artifacts.py: loading it runs no code). Unpartitioned assets use the
partition name `_all`. Both writes are atomic. Where the data lives is the `warehouse` resource's to say: the
IO manager requires that very resource (by key, so run configuration of `warehouse` reaches both), and assets
and their outputs never disagree on the data directory or the backend.
"""

from typing import Any

import pandas as pd
from dagster import InitResourceContext, InputContext, IOManager, OutputContext, io_manager

from nq_dagster.resources.warehouse_resource import WarehouseResource
from nq_dagster.store import LIVE_PARTS, Warehouse

ALL = "all-sources"


class WarehouseIOManager(IOManager):
    def __init__(self, warehouse: WarehouseResource):
        self.warehouse = warehouse

    def _wh(self) -> Warehouse:
        # the engines' artifact types, registered only in the steps that read or write them: the code location
        # itself loads without torch
        import nq_dagster.codecs  # noqa: F401

        return self.warehouse.warehouse()

    @staticmethod
    def _partition(context: OutputContext | InputContext) -> str:
        return context.partition_key if context.has_partition_key else ALL

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        wh = self._wh()
        name = context.asset_key.path[-1]
        source = self._partition(context)
        if isinstance(obj, pd.DataFrame):
            wh.write_table(name, source, obj)
            # a materialization replaces its own part; the parts the streaming job and the prediction server
            # appended (what was served live, `stream-*` / `serve-*`) stay: the `predictions` asset leaves
            # their times out of its walk-forward rows: each (source, time) keeps one record, the served one
            wh.drop_other_parts(name, source, keep="data", keep_prefixes=LIVE_PARTS)
        else:
            wh.save_artifact(name, source, obj)

    def load_input(self, context: InputContext) -> Any:
        wh = self._wh()
        name = (
            context.upstream_output.asset_key.path[-1]
            if context.upstream_output
            else context.asset_key.path[-1]
        )
        source = self._partition(context)
        if wh.table_parts(name, source):
            return wh.read_table(name, source)
        return wh.load_artifact(name, source)


@io_manager(
    required_resource_keys={"warehouse"},
    description="Asset outputs into the warehouse resource's tables (Parquet) and artifacts (npz + JSON).",
)
def warehouse_io_manager(context: InitResourceContext) -> WarehouseIOManager:
    return WarehouseIOManager(context.resources.warehouse)
