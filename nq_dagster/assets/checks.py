"""Asset checks: great-expectations suites on `series` (blocking) and `predictions`, run in every pipeline run."""

import warnings

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from nq_dagster.assets.common import md_table, source_partitions
from nq_dagster.assets.fusion import predictions
from nq_dagster.assets.ingestion import series
from nq_dagster.assets.streaming import live_predictions
from nq_dagster.resources import WarehouseResource
from nq_dagster.validation.quality import run_suite

# checks partitioned by source are a Dagster preview feature (results then carry their source in the UI); the
# warning says so once per import of the code location, on every `nq` command: noted in README, silenced here
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=Warning)

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


@asset_check(asset=series, blocking=True, partitions_def=source_partitions, description="great-expectations suite `series`: schema, no nulls or "
             "infinities, strictly increasing timestamps. Blocking: nothing downstream runs on a failing series.")
def series_quality(context: AssetCheckExecutionContext, series: pd.DataFrame) -> AssetCheckResult:
    return _result(context, "series", series)


@asset_check(asset=predictions, partitions_def=source_partitions, description="great-expectations suite `predictions`: record schema, one prediction "
             "per source and time, unique ids, direction in {up, down, hold}, confidence in [1/3, 1], magnitude >= 0, "
             "and every model trained strictly before the time it predicts.")
def predictions_quality(context: AssetCheckExecutionContext, predictions: pd.DataFrame) -> AssetCheckResult:
    return _result(context, "predictions", predictions)


@asset_check(asset=live_predictions, partitions_def=source_partitions, description="The same great-expectations suite `predictions` as training, on "
             "the source's whole `predictions` table after the streaming run appended to it: the streamed records "
             "have the record schema, one per source and time, and no model saw a row it predicts.")
def live_predictions_quality(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    source = context.run.tags.get("dagster/partition")
    wh = warehouse.warehouse()
    df = wh.read_table("predictions", source) if source and wh.table_parts("predictions", source) else pd.DataFrame()
    return _result(context, "predictions", df)


def freshness_table(wh, max_lag_s: float, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per source: the newest data row, the newest prediction, and how long the newest data has waited.

    A source is stale when it has data newer than its newest prediction that was ingested more than
    `max_lag_s` seconds ago."""
    now = now or pd.Timestamp.now(tz="UTC")
    tables = set(wh.table_names())
    if "raw_ticks" not in tables:  # nothing ingested yet: nothing can be stale
        return pd.DataFrame(columns=["source", "last_data", "last_prediction", "last_ingest", "waiting_s", "stale"])
    preds = ("SELECT source, max(timestamp) AS last_prediction FROM predictions GROUP BY 1" if "predictions" in tables
             else "SELECT NULL::VARCHAR AS source, NULL::TIMESTAMPTZ AS last_prediction WHERE false")
    sql = f"""
        WITH d AS (SELECT source, max(timestamp) AS last_data FROM raw_ticks GROUP BY 1),
             p AS ({preds}),
             i AS (SELECT s.source, max(ingested_at) AS last_ingest
                   FROM ingest_log, unnest(string_split(sources, ',')) AS s(source)
                   WHERE status LIKE 'ingested%' GROUP BY 1)
        SELECT d.source, d.last_data, p.last_prediction, i.last_ingest
        FROM d LEFT JOIN p USING (source) LEFT JOIN i USING (source) ORDER BY 1"""
    df = wh.query(sql)
    if df.empty:
        return df.assign(waiting_s=pd.Series(dtype=float), stale=pd.Series(dtype=bool))
    for c in ("last_data", "last_prediction", "last_ingest"):
        df[c] = pd.to_datetime(df[c], utc=True)
    behind = df["last_prediction"].isna() | (df["last_data"] > df["last_prediction"])
    df["waiting_s"] = ((now - df["last_ingest"]).dt.total_seconds()).where(behind, 0.0).fillna(0.0)
    df["stale"] = behind & (df["waiting_s"] > max_lag_s)
    return df


@asset_check(asset=predictions, description="Freshness: every source's newest data has a prediction, or arrived "
             "less than NQ_FRESHNESS_SECONDS (default 300) ago. Run by every streaming run (and the `freshness_check` job).")
def predictions_fresh(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    import os

    max_lag = float(os.environ.get("NQ_FRESHNESS_SECONDS", "300"))
    df = freshness_table(warehouse.warehouse(), max_lag)
    stale = df[df["stale"]] if len(df) else df
    shown = df.assign(**{c: df[c].astype(str) for c in ("last_data", "last_prediction", "last_ingest")}) if len(df) else df
    text = (f"{len(stale)} of {len(df)} source(s) stale (data waiting more than {max_lag:g} s for a prediction): "
            f"{', '.join(stale['source']) or 'none'}.\n\n" + (md_table(shown) if len(df) else ""))
    return AssetCheckResult(passed=len(stale) == 0, severity=AssetCheckSeverity.WARN,
                            metadata={"stale_sources": len(stale), "sources": len(df), "summary": MetadataValue.md(text)})
