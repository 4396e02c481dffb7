"""Declarative automation of the per-source graph: the daily training of every source with enough rows (on the
cron NQ_TRAIN_CRON, default 03:00 UTC), evaluated by the `automation` sensor with the cross-source portfolio.

`on_cron` requests a partition's assets once per cron tick (each after its dependencies are updated or
requested in the same tick, so one run per source carries the whole graph); `EnoughRowsToTrain` leaves out the
sources that cannot train yet (they would only fail), and a source with a run in progress waits for it."""

from __future__ import annotations

from dagster import AutomationCondition, AutomationContext, AutomationResult

from nq_dagster.assets.common import SETTINGS
from nq_dagster.config import load_config, rows_needed
from nq_dagster.settings import Settings
from nq_dagster.store import Warehouse

TRAIN_CRON = SETTINGS.train_cron


class EnoughRowsToTrain(AutomationCondition):
    """True for the source partitions whose stored rows reach what training needs (`config.rows_needed`, or
    NQ_MIN_ROWS_TO_TRAIN); counted from the Parquet footers, nothing read."""

    @property
    def name(self) -> str:
        return "enough_rows_to_train"

    @property
    def description(self) -> str:
        return "the source has the rows training needs"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        # evaluated by the daemon between runs: the settings of its environment at that moment (a condition
        # has no resources), so that a data directory or threshold set for the daemon applies without a reload
        settings = Settings.from_env()
        wh = Warehouse.from_settings(settings)
        need = rows_needed(load_config(wh.home), settings.min_rows_to_train)
        keys = context.candidate_subset.expensively_compute_partition_keys()
        ok = {k for k in keys if wh.stored_rows("raw_ticks", k) >= need}
        return AutomationResult(
            context=context, true_subset=context.candidate_subset.compute_intersection_with_partition_keys(ok)
        )


TRAINING_AUTOMATION = (
    AutomationCondition.on_cron(TRAIN_CRON) & ~AutomationCondition.in_progress() & EnoughRowsToTrain()
).with_label(f"daily training ({TRAIN_CRON} UTC) of sources with enough rows")

# `predictions_fresh` covers every source and tells something only when it runs: data that waits for a
# prediction grows stale with no event to run it on (a streaming run that never came, or failed), so the
# daemon evaluates it on a clock too (a run of the check alone, the `freshness_check` job's selection)
FRESHNESS_CRON = "*/15 * * * *"
FRESHNESS_AUTOMATION = (
    AutomationCondition.cron_tick_passed(FRESHNESS_CRON) & ~AutomationCondition.in_progress()
).with_label(f"every 15 minutes ({FRESHNESS_CRON} UTC)")
