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

from nq_dagster.assets.automation import FRESHNESS_AUTOMATION
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
    source = context.run.tags.get("dagster/partition", "?")
    where = f" for source {source}"
    report = run_suite(suite, df)
    shown = report.results.assign(first_bad_rows=report.results["first_bad_rows"].map(str))
    if not report.success:
        context.log.error(report.message(where, source))
    return AssetCheckResult(
        passed=report.success,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "expectations": len(report.results),
            "failed": int((~report.results["success"]).sum()),
            "rows_checked": len(df),
            "summary": MetadataValue.md(report.message(where, source) + "\n\n" + md_table(shown)),
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
    meta = _streamed_metadata(context, source)
    span = _streamed_span(meta)
    if span is None:
        # this run predicted nothing new (no new rows, every new row out of range, a live server owns the
        # source): there is nothing to check, and a suite over zero rows "failed" every expectation with
        # "0 bad value(s)" while nothing was wrong (issue 28)
        why = "no new rows"
        if meta is not None and "served_by" in meta:
            why = f"no new rows here: the source is served live by `nq serve` {meta['served_by'].value}"
        elif meta is not None and meta.get("rows_out_of_range") and meta["rows_out_of_range"].value:
            why = f"no new rows predicted ({meta['rows_out_of_range'].value} left out of range)"
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.ERROR,
            metadata={
                "rows_checked": 0,
                "skipped": why,
                "summary": MetadataValue.md(
                    f"predictions for source {source}: {why}; nothing to check (the suite runs on the rows "
                    "a streaming run writes)."
                ),
            },
        )
    df = wh.read_table("predictions", source, after=span[0] - pd.Timedelta(1, "ns"), until=span[1])
    return _result(context, "predictions", df)


def _streamed_metadata(context: AssetCheckExecutionContext, source: str | None) -> dict | None:
    """The metadata of this run's `live_predictions` materialization (None when this run has none)."""
    from dagster import AssetKey, AssetRecordsFilter

    if not source:
        return None
    recs = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("live_predictions"), asset_partitions=[source]), limit=1
    ).records
    if not recs or recs[0].run_id != context.run.run_id:
        return None
    return recs[0].asset_materialization.metadata


def _streamed_span(meta: dict | None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """(first, last) timestamp of the predictions this run's `live_predictions` wrote, from its
    materialization's metadata."""
    if meta is None or "first_timestamp" not in meta or "last_timestamp" not in meta:
        return None
    return pd.Timestamp(meta["first_timestamp"].value), pd.Timestamp(meta["last_timestamp"].value)


def freshness_table(wh, max_lag_s: float, now: pd.Timestamp | None = None) -> pd.DataFrame:
    """Per source: the newest data row, the newest prediction, whether it has a model, and how long the newest
    data has waited.

    A source is stale when it has a model (a serving state, or predictions) and data newer than its newest
    prediction that was ingested more than `max_lag_s` seconds ago. A source without a model cannot be
    behind: it is still gathering the rows training needs, and counting it made sources with too few rows
    alert for ever (issue 28)."""
    now = now or pd.Timestamp.now(tz="UTC")
    tables = set(wh.table_names())
    columns = ["source", "last_data", "last_prediction", "last_ingest", "has_model", "waiting_s", "stale"]
    if "raw_ticks" not in tables:  # nothing ingested yet: nothing can be stale
        return pd.DataFrame(columns=columns)
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
        return pd.DataFrame(columns=columns)
    for c in ("last_data", "last_prediction", "last_ingest"):
        df[c] = pd.to_datetime(df[c], utc=True)
    modelled = set(wh.artifact_sources("serving_state")) | set(newest["predictions"])
    df["has_model"] = df["source"].isin(modelled)
    behind = df["has_model"] & (df["last_prediction"].isna() | (df["last_data"] > df["last_prediction"]))
    df["waiting_s"] = ((now - df["last_ingest"]).dt.total_seconds()).where(behind, 0.0).fillna(0.0)
    df["stale"] = behind & (df["waiting_s"] > max_lag_s)
    return df[columns]


@asset_check(
    asset=predictions,
    automation_condition=FRESHNESS_AUTOMATION,
    description="Freshness: every source with a model has a prediction for its newest data, or that data "
    "arrived less than NQ_FRESHNESS_SECONDS (default 300) ago; a source still gathering the rows training "
    "needs is listed, not counted. Run by every streaming run, after every `nq run` / `nq demo`, every 15 "
    "minutes by the automation sensor (`nq dev`), and by the `freshness_check` job.",
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
    modelled = int(df["has_model"].sum()) if len(df) else 0
    waiting = ", ".join(df.loc[~df["has_model"], "source"]) if len(df) else ""
    text = (
        f"{len(stale)} of {modelled} source(s) with a model stale (data waiting more than {max_lag:g} s "
        f"for a prediction): {', '.join(stale['source']) or 'none'}."
        + (
            f" Not counted, no model yet (still gathering the rows training needs): {waiting}."
            if waiting
            else ""
        )
        + (
            ' Fix: see the failed runs (`nq query "select * from run_failures"`), or run the daemon '
            "(`nq dev`) so landed files are streamed"
            if len(stale)
            else ""
        )
        + "\n\n"
        + (md_table(shown) if len(df) else "")
    )
    return AssetCheckResult(
        passed=len(stale) == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "stale_sources": len(stale),
            "sources_with_a_model": modelled,
            "sources": len(df),
            "summary": MetadataValue.md(text),
        },
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
