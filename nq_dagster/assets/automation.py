"""Declarative automation of the per-source graph: the daily training of every source with enough rows (on the
cron NQ_TRAIN_CRON, default 03:00 UTC), evaluated by the `automation` sensor with the cross-source portfolio.

`on_cron` requests a partition's assets once per cron tick (each after its dependencies are updated or requested
in the same tick, so one run per source carries the whole graph); `EnoughRowsToTrain` leaves out the sources
that cannot train yet (they would only fail), and a source with a run in progress waits for it."""

from __future__ import annotations

import os

from dagster import AutomationCondition, AutomationContext, AutomationResult

TRAIN_CRON = os.environ.get("NQ_TRAIN_CRON", "0 3 * * *")


class EnoughRowsToTrain(AutomationCondition):
    """True for the source partitions whose stored rows reach what training needs (`min_rows_to_train`:
    train_min + 100, or NQ_MIN_ROWS_TO_TRAIN); counted from the Parquet footers, nothing read."""

    @property
    def name(self) -> str:
        return "enough_rows_to_train"

    @property
    def description(self) -> str:
        return "the source has the rows training needs"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        from nq_dagster.sensors.landing import min_rows_to_train, stored_rows
        from nq_dagster.settings import Settings
        from nq_dagster.store import Warehouse

        wh = Warehouse.from_settings(Settings.from_env())
        need = min_rows_to_train(wh)
        keys = context.candidate_subset.expensively_compute_partition_keys()
        ok = {k for k in keys if stored_rows(wh, k) >= need}
        return AutomationResult(context=context,
                                true_subset=context.candidate_subset.compute_intersection_with_partition_keys(ok))


TRAINING_AUTOMATION = (
    AutomationCondition.on_cron(TRAIN_CRON) & ~AutomationCondition.in_progress() & EnoughRowsToTrain()
).with_label(f"daily training ({TRAIN_CRON} UTC) of sources with enough rows")
