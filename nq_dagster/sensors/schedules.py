"""Schedules: the training run of every source (daily by default). Freshness needs no schedule: the training
outputs carry Dagster freshness policies, and the streaming job runs the data-waiting check on every landing."""

import os

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from nq_dagster.jobs import SOURCE_JOB
from nq_dagster.resources import WarehouseResource
from nq_dagster.sensors.landing import ACTIVE, SOURCE_TAG, min_rows_to_train, stored_rows

TRAIN_CRON = os.environ.get("NQ_TRAIN_CRON", "0 3 * * *")


@schedule(name="training_schedule", cron_schedule=TRAIN_CRON, job_name=SOURCE_JOB,
          default_status=DefaultScheduleStatus.RUNNING,
          description="Retrain every source with enough rows over its full history (NQ_TRAIN_CRON, default daily 03:00 UTC).")
def training_schedule(context: ScheduleEvaluationContext, warehouse: WarehouseResource):
    wh = warehouse.warehouse()
    when = context.scheduled_execution_time.strftime("%Y%m%dT%H%M") if context.scheduled_execution_time else "now"
    need = min_rows_to_train(wh)
    requests, waiting = [], []
    for source in sorted(context.instance.get_dynamic_partitions("source")):
        if stored_rows(wh, source) < need:
            waiting.append(f"{source} (fewer than {need} rows)")
            continue
        if context.instance.get_runs(RunsFilter(tags={SOURCE_TAG: source}, statuses=ACTIVE), limit=1):
            waiting.append(f"{source} (a run is in progress)")
            continue
        requests.append(RunRequest(run_key=f"train-{source}-{when}", partition_key=source,
                                   tags={SOURCE_TAG: source, "nq/trigger": "schedule"}))
    return requests or SkipReason("nothing to train: " + (", ".join(waiting) or "no sources"))
