"""The jobs: training (the whole per-source graph), streaming (new rows only), ingest-only, cross-source,
and the freshness check. All use the in-process executor: a process per step costs seconds here."""

from dagster import AssetCheckKey, AssetKey, AssetSelection, define_asset_job, in_process_executor

from nq_dagster.assets.common import SETTINGS
from nq_dagster.deployment import training_executor

# by key: the jobs sit below the asset modules (the sensors import the jobs, the assets import nothing of
# them)
predictions_fresh = AssetCheckKey(AssetKey("predictions"), "predictions_fresh")

SOURCE_JOB, STREAMING_JOB, INGEST_JOB, CROSS_SOURCE_JOB, FRESHNESS_JOB = (
    "source_pipeline",
    "streaming",
    "ingest_only",
    "cross_source",
    "freshness_check",
)

source_pipeline = define_asset_job(
    SOURCE_JOB,
    selection=(
        AssetSelection.all()
        - AssetSelection.assets("portfolio", "live_predictions")
        - AssetSelection.checks(predictions_fresh)
    ),
    executor_def=training_executor(SETTINGS),
    description="Training: the whole per-source graph over the full history (new model version, new report).",
)
streaming = define_asset_job(
    STREAMING_JOB,
    # with the predictions suite on what it wrote, and the check that no source's data waits for a prediction
    selection=AssetSelection.assets("raw_ticks", "live_predictions")
    | AssetSelection.checks(predictions_fresh),
    executor_def=in_process_executor,
    description="Streaming: ingest the landed files, predict only the new rows from the saved state.",
)
ingest_only = define_asset_job(
    INGEST_JOB,
    selection=AssetSelection.assets("raw_ticks").without_checks(),
    executor_def=in_process_executor,
    description="Store a new source's rows until it has enough to train on.",
)
cross_source = define_asset_job(
    CROSS_SOURCE_JOB,
    selection=AssetSelection.assets("portfolio").without_checks(),
    executor_def=in_process_executor,
    description="Assets across all sources: the quantum portfolio.",
)
freshness_job = define_asset_job(
    FRESHNESS_JOB,
    selection=AssetSelection.checks(predictions_fresh),
    executor_def=in_process_executor,
    description=(
        "Are every source's predictions as recent as its data? (The streaming job runs the same check on "
        "every landing; this job is for a manual look.)"
    ),
)
