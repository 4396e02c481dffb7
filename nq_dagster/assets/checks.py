"""Asset checks: great-expectations suites on `series` (blocking) and `predictions`, run in every pipeline
run."""

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
from nq_dagster.assets.fusion import predictions, served_state, serving_state
from nq_dagster.assets.ingestion import series
from nq_dagster.assets.streaming import live_predictions
from nq_dagster.resources import WarehouseResource
from nq_dagster.validation.quality import run_suite

# checks partitioned by source are a Dagster preview feature (results then carry their source in the UI); the
# warning says so once per import of the code location, on every `nq` command: noted in README, silenced here
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=Warning
)


def _result(context: AssetCheckExecutionContext, suite: str, df: pd.DataFrame) -> AssetCheckResult:
    where = f" for source {context.run.tags.get('dagster/partition', '?')}"
    report = run_suite(suite, df)
    shown = report.results.assign(first_bad_rows=report.results["first_bad_rows"].map(str))
    if not report.success:
        context.log.error(report.message(where))
    return AssetCheckResult(
        passed=report.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "expectations": len(report.results),
            "failed": int((~report.results["success"]).sum()),
            "rows_checked": len(df),
            "summary": MetadataValue.md(report.message(where) + "\n\n" + md_table(shown)),
        },
    )


@asset_check(
    asset=series,
    blocking=True,
    partitions_def=source_partitions,
    description="great-expectations suite `series`: schema, no nulls or "
    "infinities, strictly increasing timestamps. Blocking: nothing downstream runs on a failing series.",
)
def series_quality(context: AssetCheckExecutionContext, series: pd.DataFrame) -> AssetCheckResult:
    return _result(context, "series", series)


@asset_check(
    asset=predictions,
    partitions_def=source_partitions,
    description="great-expectations suite `predictions`: record schema, one prediction "
    "per source and time, unique ids, direction in {up, down, hold}, confidence in [1/3, 1], magnitude >= 0, "
    "and every model trained strictly before the time it predicts.",
)
def predictions_quality(context: AssetCheckExecutionContext, predictions: pd.DataFrame) -> AssetCheckResult:
    return _result(context, "predictions", predictions)


@asset_check(
    asset=live_predictions,
    partitions_def=source_partitions,
    description="The same great-expectations suite `predictions` as training, on "
    "the rows the streaming run appended and every stored prediction of the source in their time span (where "
    "a duplicate of them would be): the streamed records have the record schema, one per source and time, "
    "and no model saw a row it predicts. Older rows were checked when they were written, so the cost does "
    "not grow with the history.",
)
def live_predictions_quality(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    source = context.run.tags.get("dagster/partition")
    wh = warehouse.warehouse()
    span = _streamed_span(context, source)
    if span is None:  # this run predicted nothing new: nothing new to check
        df = pd.DataFrame()
    else:
        df = wh.read_table("predictions", source, after=span[0] - pd.Timedelta(1, "ns"), until=span[1])
    return _result(context, "predictions", df)


def _streamed_span(
    context: AssetCheckExecutionContext, source: str | None
) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(first, last) timestamp of the predictions this run's `live_predictions` wrote, from its
    materialization."""
    from dagster import AssetKey, AssetRecordsFilter

    if not source:
        return None
    recs = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("live_predictions"), asset_partitions=[source]), limit=1
    ).records
    if not recs or recs[0].run_id != context.run.run_id:
        return None
    meta = recs[0].asset_materialization.metadata
    if "first_timestamp" not in meta or "last_timestamp" not in meta:
        return None
    return pd.Timestamp(meta["first_timestamp"].value), pd.Timestamp(meta["last_timestamp"].value)


def freshness_table(wh, max_lag_s: float, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per source: the newest data row, the newest prediction, and how long the newest data has waited.

    A source is stale when it has data newer than its newest prediction that was ingested more than
    `max_lag_s` seconds ago."""
    now = now or pd.Timestamp.now(tz="UTC")
    tables = set(wh.table_names())
    if "raw_ticks" not in tables:  # nothing ingested yet: nothing can be stale
        return pd.DataFrame(
            columns=["source", "last_data", "last_prediction", "last_ingest", "waiting_s", "stale"]
        )
    # the newest row of each source's data and predictions from the parts' footers (no history read)
    newest = {}
    for table in ("raw_ticks", "predictions"):
        hi: dict[str, int] = {}
        for part in wh.table_parts(table) if table in tables else []:
            src = part.parent.name.split("=", 1)[1]
            top = wh.part_time_range(part)[1]
            if top is None:  # no statistics: read the column
                top = pd.Timestamp(
                    wh.read_part(part, ["timestamp"]).column("timestamp").to_pandas().max()
                ).value
            hi[src] = max(hi.get(src, top), top)
        newest[table] = hi
    df = pd.DataFrame({"source": sorted(s for s in newest["raw_ticks"] if not s.startswith("_"))})
    df["last_data"] = pd.to_datetime([newest["raw_ticks"][s] for s in df["source"]], utc=True)
    df["last_prediction"] = pd.to_datetime([newest["predictions"].get(s) for s in df["source"]], utc=True)
    ingests = wh.query("""SELECT s.source, max(ingested_at) AS last_ingest
                          FROM ingest_log, unnest(string_split(sources, ',')) AS s(source)
                          WHERE status LIKE 'ingested%' GROUP BY 1""")
    df = df.merge(ingests, on="source", how="left")
    if df.empty:
        return df.assign(waiting_s=pd.Series(dtype=float), stale=pd.Series(dtype=bool))
    for c in ("last_data", "last_prediction", "last_ingest"):
        df[c] = pd.to_datetime(df[c], utc=True)
    behind = df["last_prediction"].isna() | (df["last_data"] > df["last_prediction"])
    df["waiting_s"] = ((now - df["last_ingest"]).dt.total_seconds()).where(behind, 0.0).fillna(0.0)
    df["stale"] = behind & (df["waiting_s"] > max_lag_s)
    return df


@asset_check(
    asset=predictions,
    description="Freshness: every source's newest data has a prediction, or arrived "
    "less than NQ_FRESHNESS_SECONDS (default 300) ago. Run by every streaming run (and the "
    "`freshness_check` job).",
)
def predictions_fresh(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    settings = warehouse.settings()
    max_lag = settings.freshness_seconds
    df = freshness_table(warehouse.warehouse(settings), max_lag)
    stale = df[df["stale"]] if len(df) else df
    shown = (
        df.assign(**{c: df[c].astype(str) for c in ("last_data", "last_prediction", "last_ingest")})
        if len(df)
        else df
    )
    text = (
        f"{len(stale)} of {len(df)} source(s) stale (data waiting more than {max_lag:g} s for a prediction): "
        f"{', '.join(stale['source']) or 'none'}.\n\n" + (md_table(shown) if len(df) else "")
    )
    return AssetCheckResult(
        passed=len(stale) == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"stale_sources": len(stale), "sources": len(df), "summary": MetadataValue.md(text)},
    )


@asset_check(
    asset=serving_state,
    blocking=True,
    partitions_def=source_partitions,
    description="The served model is a promoted version: the `serving_state` a stream, `nq predict` and the "
    "server continue from is the version the promotion gate last promoted (`validation.promotion`), never a "
    "rejected candidate nor an unrecorded one. Blocking: nothing streams from a model the gate did not pass. "
    "Shows the gate's last decision and its figures.",
)
def served_model_promoted(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    import nq_dagster.codecs  # noqa: F401  (the artifacts read here are registered engine types)
    from nq_dagster.validation import promotion

    source = context.run.tags.get("dagster/partition")
    wh = warehouse.warehouse()
    st, why = served_state(wh, source)
    decisions = promotion.history(wh, source)
    last = decisions[-1] if decisions else {}
    served = st.model.model_version if st is not None else None
    status = promotion.status_of(wh, source, served) if served else None
    passed = status == "promoted"
    text = (
        f"served version {served}: {status or 'not recorded by the gate'}"
        if served
        else f"no served version: {why}"
    )
    return AssetCheckResult(
        passed=passed,
        metadata={
            "served_version": served or "",
            "served_status": status or "",
            "last_decision": last.get("status", ""),
            "last_decision_version": last.get("model_version", ""),
            "summary": MetadataValue.md(text + (f"\n\nLast decision: {last.get('reason')}" if last else "")),
            "last_decision_figures": MetadataValue.json(last),
        },
    )
