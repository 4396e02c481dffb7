"""Asset checks: great-expectations suites on `series` (blocking) and `predictions`, run in every pipeline run."""

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from nq_dagster.assets.common import md_table
from nq_dagster.assets.fusion import predictions
from nq_dagster.assets.ingestion import series
from nq_dagster.validation.quality import run_suite


def _result(context: AssetCheckExecutionContext, suite: str, df: pd.DataFrame) -> AssetCheckResult:
    where = f" for source {context.run.tags.get('dagster/partition', '?')}"
    report = run_suite(suite, df)
    shown = report.results.assign(first_bad_rows=report.results["first_bad_rows"].map(str))
    if not report.success:
        context.log.error(report.message(where))
    return AssetCheckResult(
        passed=report.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={"expectations": len(report.results), "failed": int((~report.results["success"]).sum()),
                  "rows_checked": len(df), "summary": MetadataValue.md(report.message(where) + "\n\n" + md_table(shown))},
    )


@asset_check(asset=series, blocking=True, description="great-expectations suite `series`: schema, no nulls or "
             "infinities, strictly increasing timestamps. Blocking: nothing downstream runs on a failing series.")
def series_quality(context: AssetCheckExecutionContext, series: pd.DataFrame) -> AssetCheckResult:
    return _result(context, "series", series)


@asset_check(asset=predictions, description="great-expectations suite `predictions`: record schema, one prediction "
             "per source and time, unique ids, direction in {up, down, hold}, confidence in [1/3, 1], magnitude >= 0, "
             "and every model trained strictly before the time it predicts.")
def predictions_quality(context: AssetCheckExecutionContext, predictions: pd.DataFrame) -> AssetCheckResult:
    return _result(context, "predictions", predictions)
