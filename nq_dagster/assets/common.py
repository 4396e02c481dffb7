"""Shared asset plumbing: the source partitions and standard metadata."""

from __future__ import annotations

import os
from datetime import timedelta

import pandas as pd
from dagster import DynamicPartitionsDefinition, FreshnessPolicy, MetadataValue, TableColumn, TableSchema

source_partitions = DynamicPartitionsDefinition(name="source")
OWNERS = ["team:nq-dagster"]
TAGS = {"domain": "prediction"}
# the training outputs are refreshed by the daily training schedule (NQ_TRAIN_CRON): Dagster's freshness daemon
# marks them late after 25 h and failed after 26 h, with no run of its own
_h = float(os.environ.get("NQ_TRAINING_FRESH_HOURS", "26"))
DAILY = FreshnessPolicy.time_window(fail_window=timedelta(hours=_h), warn_window=timedelta(hours=_h - 1))


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
