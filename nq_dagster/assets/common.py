"""Shared asset plumbing: the source partitions and standard metadata."""

from __future__ import annotations

import pandas as pd
from dagster import DynamicPartitionsDefinition, MetadataValue, TableColumn, TableSchema

source_partitions = DynamicPartitionsDefinition(name="source")


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
