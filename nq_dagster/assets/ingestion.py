"""`raw_ticks` and `series`: landing files into the record, and the cleaned series per source."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, Output

from nq_dagster.assets.automation import TRAINING_AUTOMATION
from nq_dagster.assets.common import ONLY_TAG, md_table, source_asset, table_metadata
from nq_dagster.config import rows_needed
from nq_dagster.ingest import (  # noqa: F401 (build_series: re-exported)
    IngestFailed,
    IngestLimits,
    Ingestor,
    build_series,
    landing_files,
)
from nq_dagster.resources import WarehouseResource


@source_asset("ingestion", {"parquet", "duckdb"}, TRAINING_AUTOMATION)
def raw_ticks(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Every accepted row of the source, with the file it came from and its content hash (append-only).

    Ingests the source's files waiting in `landing/` first; bad files go to `quarantine/`.
    """
    source = context.partition_key
    wh = warehouse.warehouse()
    files = landing_files(wh, source).get(source, [])
    only = context.run.tags.get(ONLY_TAG)
    if only:  # the landing sensor isolates a file after a failed run on several: this run takes it alone
        files = [p for p in files if str(p.relative_to(wh.landing)) == only]
    ingestor = Ingestor(wh, IngestLimits.from_settings(warehouse.settings()))
    try:
        results = [ingestor.ingest_file(p, source=source, move=True) for p in files]
    except IngestFailed as exc:  # a held lock, a full disk: one line; the files wait in landing/ for a retry
        raise Failure(description=str(exc)) from None
    for r in results:
        if r.status == "quarantined":
            context.log.warning(f"quarantined {r.file}: {r.reason}")
    if not wh.table_parts("raw_ticks", source):
        # a partition added by hand (the UI's "Add a partition") with no data: one line, no traceback
        why = "; ".join(r.reason for r in results if r.reason) or f"no files in {wh.landing / source}"
        raise Failure(
            description=f"source {source!r} has no data yet ({why[:300]}). Fix: put a CSV / Parquet / "
            f"JSON-lines file in {wh.landing / source}/ or run `nq ingest FILE --source {source}`",
            allow_retries=False,
        )
    compacted = wh.compact_if_many("raw_ticks", source)  # one part per landed file until merged
    if compacted:
        context.log.info(
            f"compacted {source}: {compacted['parts_before']} parts -> {compacted['parts_after']}"
        )
    # from the parts' footers: what is stored, without reading the history (a streaming run's cost stays flat)
    parts = wh.table_parts("raw_ticks", source)
    spans = [wh.part_time_range(q) for q in parts]
    rows = sum(n for _, _, n in spans)
    files = pd.DataFrame(
        [
            {
                "file": r.file.rsplit("/", 1)[-1],
                "status": r.status,
                "rows": r.rows_accepted,
                "bad_rows": len(r.bad_rows),
            }
            for r in results
        ]
    )
    need = rows_needed(warehouse.pipeline_config())
    summary = f"**{source}**: {rows} rows in {len(parts)} Parquet part(s); training needs at least {need}" + (
        "." if rows >= need else f": {need - rows} more before it trains."
    )
    if len(files):
        summary += "\n\nThis run:\n\n" + md_table(files)
    meta = table_metadata(wh.read_part(parts[-1]).slice(0, 0).to_pandas(), summary)
    meta["dagster/row_count"] = rows
    lows, highs = [a for a, _, _ in spans if a is not None], [b for _, b, _ in spans if b is not None]
    if lows:
        meta["first_timestamp"] = str(pd.Timestamp(min(lows), tz="UTC"))
        meta["last_timestamp"] = str(pd.Timestamp(max(highs), tz="UTC"))
    meta["rows_needed"] = need
    meta["files_this_run"] = len(results)
    meta["parts"] = len(parts)
    if compacted:
        meta["compacted_parts"] = compacted["parts_before"]
    meta["files_quarantined"] = sum(r.status == "quarantined" for r in results)
    return MaterializeResult(metadata=meta)


@source_asset("ingestion", {"parquet"}, TRAINING_AUTOMATION, deps=[raw_ticks])
def series(context: AssetExecutionContext, warehouse: WarehouseResource) -> Output[pd.DataFrame]:
    """The cleaned series of one source: sorted by time, one row per timestamp."""
    wh = warehouse.warehouse()
    out = build_series(wh.read_table("raw_ticks", context.partition_key))
    from nq_dagster.fusion.walkforward import schedule_for

    need = rows_needed(warehouse.pipeline_config())
    if len(out) < need:  # say so now, not after a minute of encoding and reservoir work
        raise Failure(
            description=f"source {context.partition_key!r} has {len(out)} rows; training needs at least "
            f"{need}. Fix: ingest more history",
            allow_retries=False,
        )
    sched = schedule_for(len(out), warehouse.pipeline_config())
    gaps = out["timestamp"].diff().dt.total_seconds().to_numpy()[1:]
    median_gap = float(np.median(gaps)) if len(gaps) else float("nan")
    summary = (
        f"**{context.partition_key}**: {len(out)} points, value column `{out.attrs['value_column']}`, "
        f"median spacing {median_gap:g} s, value range [{out['value'].min():.6g}, {out['value'].max():.6g}]."
    )
    meta = table_metadata(out, summary)
    meta["median_spacing_s"] = median_gap
    meta["training_schedule"] = MetadataValue.json(
        {"train_min": sched.train_min, "refit_every": sched.refit_every, "warmup": sched.warmup}
    )
    meta["value_column"] = MetadataValue.text(out.attrs["value_column"])
    return Output(out, metadata=meta)
