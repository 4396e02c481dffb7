"""`live_predictions`: the streaming step. New rows of a source, continued from its saved serving state."""

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue

from nq_dagster.assets.common import md_table, source_asset
from nq_dagster.assets.fusion import serving_state
from nq_dagster.assets.ingestion import raw_ticks
from nq_dagster.ingest import build_series
from nq_dagster.resources import WarehouseResource

STREAM_PART = (
    "stream-{:010d}-{:010d}"  # rows [a, b) of the source; a re-run of the same rows overwrites the part
)


@source_asset("streaming", {"torch", "parquet"}, deps=[raw_ticks, serving_state])
def live_predictions(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Predictions for the rows that arrived since the source's serving state, through the one prediction path
    (`fusion.predictor.Predictor`): appended to `predictions`; the state moves on.

    Exactly once: the new rows are those after the stream's last timestamp (training's `serving_state` or,
    when further, the `live_state` that this job or the prediction server saved); their predictions are
    written as one Parquet part named by the row range, and only then is `live_state` saved. A run that dies
    in between is re-run over the same rows and rewrites the same part. While `nq serve` owns the source, the
    server predicts its new rows (it watches `raw_ticks`) and this step leaves them to it: two writers would
    fork the stream."""
    from nq_dagster.fusion.predictor import Predictor
    from nq_dagster.fusion.record import records_table
    from nq_dagster.fusion.ticks import value_range
    from nq_dagster.store.leases import serving_replica
    from nq_dagster.streams import load_stream

    source = context.partition_key
    wh = warehouse.warehouse()
    lease = serving_replica(wh, source)
    if lease is not None:
        who = f"replica {lease['replica']} ({lease.get('address') or lease.get('host')}, pid {lease['pid']})"
        return MaterializeResult(
            metadata={
                "served_by": who,
                "summary": MetadataValue.md(
                    f"**{source}**: served live by `nq serve` {who}; the server predicts the new rows."
                ),
            }
        )
    saved, _how = load_stream(wh, source)
    st = saved.stream
    last_seen = pd.Timestamp(st.last_ts, tz="UTC")
    new = build_series(wh.read_table("raw_ticks", source, after=last_seen))
    known = wh.stored_rows("raw_ticks", source) - len(new)  # ingest stores each (source, timestamp) once
    late = known - st.n_rows  # rows at or before the last seen time that arrived after it (out of order)
    # a stored value far beyond the model's training scale (`fusion.ticks.value_range`, e.g. 1e160 in a landed
    # file) would fail every later run of the source: it is left out of the stream, counted and named here
    lo, hi = value_range(st)
    far = ~new["value"].between(lo, hi)
    if far.any():
        context.log.warning(
            f"{source}: {int(far.sum())} row(s) left out of the stream, outside what the model takes "
            f"({lo:.6g} to {hi:.6g}); first: {new['value'][far].iloc[0]:g} at {new['timestamp'][far].iloc[0]}"
        )
        new = new[~far].reset_index(drop=True)
    meta = {
        "rows_out_of_range": int(far.sum()),
        "new_rows": len(new),
        "rows_seen_before": st.n_rows,
        "model_version": saved.model.model_version,
        "late_rows_left_for_retraining": max(0, late),
    }
    if len(new) == 0:
        return MaterializeResult(
            metadata={**meta, "summary": MetadataValue.md(f"**{source}**: no new rows.")}
        )
    predictor = Predictor(threads=warehouse.settings().predict_threads)
    predictor.load(saved)
    records = predictor.advance(source, new["value"].to_numpy(), new["timestamp"].to_numpy())
    if len(records) != len(new):
        raise RuntimeError(
            f"{source}: {len(new)} new rows but {len(records)} predictions; nothing was written"
        )
    nxt = predictor.serving_state(source)
    table = records_table(records)
    wh.write_table("predictions", source, table, part=STREAM_PART.format(st.n_rows, nxt.stream.n_rows))
    wh.save_artifact("live_state", source, nxt)
    # a part per run: merged past NQ_COMPACT_PARTS (the predictions are stored already: never a failed run)
    try:
        compacted = wh.compact_if_many("predictions", source)
    except Exception as exc:  # noqa: BLE001 - the parts stay readable; the next run tries again
        context.log.warning(
            f"compaction of {source}'s live predictions deferred: {type(exc).__name__}: {exc}"
        )
        compacted = None
    if compacted:
        context.log.info(
            f"compacted {source}'s live predictions: {compacted['parts_before']} parts -> "
            f"{compacted['parts_after']}"
        )
    rows = table.to_pandas()
    counts = rows["direction"].value_counts()
    ms = rows["processing_time_ms"]
    summary = (
        f"**{source}**: {len(rows)} new prediction(s), rows {st.n_rows}-{nxt.stream.n_rows - 1}, model "
        f"`{saved.model.model_version}`; processing time per record (tick received to record ready) "
        f"median {ms.median():.2f} ms, max {ms.max():.2f} ms.\n\n"
        + md_table(rows[["timestamp", "direction", "confidence", "predicted_change"]].tail(5))
    )
    return MaterializeResult(
        metadata={
            **meta,
            "directions": MetadataValue.json(counts.to_dict()),
            "first_timestamp": str(rows["timestamp"].iloc[0]),
            "last_timestamp": str(rows["timestamp"].iloc[-1]),
            "processing_time_ms_median": float(ms.median()),
            "summary": MetadataValue.md(summary),
        }
    )
