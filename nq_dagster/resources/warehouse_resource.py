"""The Dagster face of the one storage resource: where the data lives (a directory, or an S3-compatible
bucket)
is this resource's configuration, chosen in `definitions.py` and shown with the resource in the UI. The
resource
is the authority: an empty `s3_bucket` means local files, whatever the environment says."""

from dagster import ConfigurableResource

from nq_dagster.config import PipelineConfig, load_config
from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse


class WarehouseResource(ConfigurableResource):
    """Hands out the `Warehouse`, the settings of the run and the pipeline config stored in the warehouse.

    home: the data directory (empty: NQ_HOME of the process's settings when a run or tick starts, so the code
    server, the runs it launches and the CLI may point at different data directories over one process's life).
    s3_bucket (with s3_prefix, s3_endpoint): tables and artifacts in that bucket instead of under
    `home/warehouse`; empty: local files."""

    home: str = ""
    s3_bucket: str = ""
    s3_prefix: str = "nq"
    s3_endpoint: str = ""

    def settings(self) -> Settings:
        return Settings.from_env().with_home(self.home or None)

    def warehouse(self, settings: Settings | None = None) -> Warehouse:
        bucket = {"s3_bucket": self.s3_bucket, "s3_prefix": self.s3_prefix, "s3_endpoint": self.s3_endpoint}
        return Warehouse.from_settings((settings or self.settings()).model_copy(update=bucket)).ensure()

    def pipeline_config(self) -> PipelineConfig:
        return load_config(self.warehouse().home)
