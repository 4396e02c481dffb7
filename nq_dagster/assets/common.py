"""Shared asset plumbing: the source partitions and standard metadata."""

from __future__ import annotations

import os
from datetime import timedelta

import pandas as pd
from dagster import DynamicPartitionsDefinition, FreshnessPolicy, MetadataValue, TableColumn, TableSchema

source_partitions = DynamicPartitionsDefinition(name="source")
OWNERS = ["team:nq-dagster"]
TAGS = {"domain": "prediction"}
# the training outputs are refreshed by the daily training automation (NQ_TRAIN_CRON): Dagster's freshness daemon
# marks them late after 25 h and failed after 26 h, with no run of its own
_h = float(os.environ.get("NQ_TRAINING_FRESH_HOURS", "26"))
DAILY = FreshnessPolicy.time_window(fail_window=timedelta(hours=_h), warn_window=timedelta(hours=_h - 1))

# Each asset's code version: Dagster shows an asset whose code version changed since its last materialization as
# unsynced ("code version changed"), so a user sees which sources still carry outputs of older code. Bump an entry
# when that asset's output for the same inputs and config changes. The model's assets follow the fused model's
# design (fusion.predictor.DESIGN_VERSION; tests/test_pipeline.py keeps them equal): a model of another design is
# refused at load, so its outputs are stale the moment the design moves.
DESIGN = "design-5"
CODE_VERSIONS = {
    "raw_ticks": "1", "series": "1",
    "spike_trains": "1", "reservoir_states": "1",
    "patterns": "2",  # 2: the detectors read reservoir activity at half precision
    "features": "2", "feature_selection": "1",
    "fusion_model": DESIGN, "serving_state": DESIGN, "predictions": DESIGN, "live_predictions": DESIGN,
    "validation_report": "2",  # 2: the score against strong baselines, zero without skill
    "portfolio": "1",
}


def table_metadata(df: pd.DataFrame, summary: str | None = None) -> dict:
    meta = {
        "dagster/row_count": len(df),
        "dagster/column_schema": TableSchema(columns=[TableColumn(str(c), str(t)) for c, t in df.dtypes.items()]),
    }
    if "timestamp" in df.columns and len(df):
        meta["first_timestamp"] = str(df["timestamp"].min())
        meta["last_timestamp"] = str(df["timestamp"].max())
    if summary:
        meta["summary"] = MetadataValue.md(summary)
    return meta


def md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A small Markdown table for the UI (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
