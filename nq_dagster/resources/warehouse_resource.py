"""The Dagster face of the one storage resource: where the data lives (a directory, or an S3-compatible bucket)
is this resource's configuration, chosen in `definitions.py` and shown with the resource in the UI."""


from dagster import ConfigurableResource

from nq_dagster.config import PipelineConfig, load_config
from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse


class WarehouseResource(ConfigurableResource):
    """Hands out the `Warehouse` and the pipeline config stored there.

    home: `$NQ_HOME` (empty: resolved from the environment each time). s3_bucket (with s3_prefix, s3_endpoint):
    tables and artifacts in that bucket instead of under `home/warehouse`; empty: local files."""

    home: str = ""
    s3_bucket: str = ""
    s3_prefix: str = "nq"
    s3_endpoint: str = ""

    def warehouse(self) -> Warehouse:
        bucket = {"s3_bucket": self.s3_bucket, "s3_prefix": self.s3_prefix, "s3_endpoint": self.s3_endpoint}
        settings = Settings.from_env().with_home(self.home).model_copy(update=bucket)
        return Warehouse.from_settings(settings).ensure()

    def pipeline_config(self) -> PipelineConfig:
        return load_config(self.warehouse().home)
