"""`live_predictions`: the streaming step. New rows of a source, continued from its saved serving state."""

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from nq_dagster.assets.common import md_table, source_partitions
from nq_dagster.assets.fusion import serving_state
from nq_dagster.assets.ingestion import build_series, raw_ticks
from nq_dagster.fusion.serving import advance, as_table_rows
from nq_dagster.resources import DUCKDB_POOL, WarehouseResource

STREAM_PART = "stream-{:010d}-{:010d}"  # rows [a, b) of the source; a re-run of the same rows overwrites the part


@asset(partitions_def=source_partitions, group_name="streaming", deps=[raw_ticks, serving_state], pool=DUCKDB_POOL,
       kinds={"torch", "parquet"})
def live_predictions(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Predictions for the rows that arrived since the source's serving state: encoded from their absolute step,
    the reservoir continued from its saved state, the current model. Appended to `predictions`; the state moves on.

    Exactly once: the new rows are those after the state's last timestamp; their predictions are written as one
    Parquet part named by the row range, and only then is the state saved. A run that dies in between is re-run
    over the same rows and rewrites the same part."""
    source = context.partition_key
    wh = warehouse.warehouse()
    st = wh.load_artifact("serving_state", source)
    series = build_series(wh.read_table("raw_ticks", source))
    last_seen = pd.to_datetime(pd.Series([st.timestamps[-1]]), utc=True).iloc[0]
    new = series[series["timestamp"] > last_seen]
    known = len(series) - len(new)
    late = known - st.n_rows  # rows at or before the last seen time that arrived after it (out of order)
    meta = {"new_rows": len(new), "rows_seen_before": st.n_rows, "model_version": st.model_version,
            "late_rows_left_for_retraining": max(0, late)}
    if len(new) == 0:
        return MaterializeResult(metadata={**meta, "summary": MetadataValue.md(f"**{source}**: no new rows.")})
    records, nxt = advance(st, new["value"].to_numpy(), new["timestamp"].to_numpy())
    rows = as_table_rows(st, records)
    first_table = not wh.table_parts("predictions")
    wh.write_table("predictions", source, rows, part=STREAM_PART.format(st.n_rows, nxt.n_rows))
    wh.save_artifact("serving_state", source, nxt)
    if first_table:
        wh.refresh_views()
    counts = rows["direction"].value_counts()
    summary = (f"**{source}**: {len(rows)} new prediction(s), rows {st.n_rows}-{nxt.n_rows - 1}, model "
               f"`{st.model_version}`; {float(records['processing_time_ms'].iloc[0]):.1f} ms per prediction.\n\n"
               + md_table(rows[["timestamp", "direction", "confidence", "predicted_change"]].tail(5)))
    return MaterializeResult(metadata={**meta, "directions": MetadataValue.json(counts.to_dict()),
                                       "last_timestamp": str(rows["timestamp"].iloc[-1]),
                                       "summary": MetadataValue.md(summary)})
