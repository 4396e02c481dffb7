"""Run-failure sensor: every failed run (job, source, error) into the `run_failures` table of the
warehouse."""

import pandas as pd
from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from nq_dagster.assets.common import SOURCE_TAG
from nq_dagster.resources import WarehouseResource
from nq_dagster.store import RUN_FAILURES_DDL


def error_text(err) -> str:
    """The error and the chain of its causes, messages only (the stack traces stay in the run's logs)."""
    parts = []
    while err is not None and len(parts) < 5:
        parts.append(err.message.strip())
        err = err.cause or getattr(err, "context", None)
    return "\ncaused by: ".join(parts)


def failure_rows(context: RunFailureSensorContext) -> pd.DataFrame:
    run = context.dagster_run
    source = run.tags.get(SOURCE_TAG) or run.tags.get("dagster/partition") or ""
    steps = [
        (
            e.step_key or "",
            error_text(e.event_specific_data.error)
            if e.event_specific_data and e.event_specific_data.error
            else e.message or "",
        )
        for e in context.get_step_failure_events()
    ]
    if not steps:  # the run failed outside any step (launch, resources, ...)
        steps = [("", (context.failure_event.message or "run failed").strip())]
    now = pd.Timestamp.now(tz="UTC")
    return pd.DataFrame(
        [
            {
                "run_id": run.run_id,
                "job": run.job_name,
                "source": source,
                "failed_at": now,
                "step": step,
                "error": err[:4000],
            }
            for step, err in steps
        ]
    )


@run_failure_sensor(
    name="run_failure_recorder",
    default_status=DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description='Records every failed run in the `run_failures` table (`nq query "select * from '
    'run_failures"`).',
)
def run_failure_recorder(context: RunFailureSensorContext, warehouse: WarehouseResource) -> None:
    rows = failure_rows(context)
    warehouse.warehouse().append_rows("run_failures", rows, RUN_FAILURES_DDL)
    for r in rows.itertuples():
        context.log.error(
            f"run {r.run_id[:8]} of {r.job} failed (source {r.source or '-'}, step {r.step or '-'}): "
            f"{r.error.splitlines()[0] if r.error else ''}"
        )
