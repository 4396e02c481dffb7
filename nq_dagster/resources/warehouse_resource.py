"""The Dagster face of the one storage resource."""


from dagster import ConfigurableResource

from nq_dagster.config import PipelineConfig, load_config
from nq_dagster.resources.storage import Warehouse, default_home


class WarehouseResource(ConfigurableResource):
    """Where `$NQ_HOME` is; hands out the `Warehouse` and the pipeline config stored there."""

    home: str = ""

    def warehouse(self) -> Warehouse:
        return Warehouse(self.home or default_home()).ensure()

    def pipeline_config(self) -> PipelineConfig:
        return load_config(self.warehouse().home)
