"""Shared asset plumbing: the settings of the code location, the source partitions, the decorator arguments
every per-source asset shares, and standard metadata.

The Dagster layer reads the process's settings once, here, when the code location loads (the values that shape
definitions: the training cron, freshness windows, step tags). What a run or a sensor tick may see change (the
data directory, the sensor's timings) comes from resources instead (`nq_dagster.resources`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pandas as pd
from dagster import (
    AutomationCondition,
    DynamicPartitionsDefinition,
    FreshnessPolicy,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from nq_dagster.settings import Settings

SETTINGS = Settings.from_env()
SOURCE_TAG = "nq/source"  # the tag naming a run's source (the instance's one-run-per-source limit counts it)
ONLY_TAG = "nq/only"  # a run that ingests this one landed file (relative to landing/) and no other
source_partitions = DynamicPartitionsDefinition(name="source")
OWNERS = ["team:nq-dagster"]
TAGS = {"domain": "prediction"}
# the training outputs are refreshed by the daily training automation (NQ_TRAIN_CRON): Dagster's freshness
# daemon marks them late an hour before they fail
_h = SETTINGS.training_fresh_hours
DAILY = FreshnessPolicy.time_window(
    fail_window=timedelta(hours=_h), warn_window=timedelta(hours=max(_h - 1, _h / 2))
)

# Each asset's code version: Dagster shows an asset whose code version changed since its last materialization
# as unsynced ("code version changed"), so a user sees which sources still carry outputs of older code. Bump
# an entry when that asset's output for the same inputs and config changes. The model's assets follow the
# fused model's design (fusion.predictor.DESIGN_VERSION; tests/test_pipeline.py keeps them equal): a model of
# another design is refused at load, so its outputs are stale the moment the design moves.
DESIGN = "design-6"
CODE_VERSIONS = {
    "raw_ticks": "1",
    "series": "1",
    "spike_trains": "1",
    "reservoir_states": "1",
    "patterns": "2",  # 2: the detectors read reservoir activity at half precision
    "features": "2",
    "feature_selection": "1",
    "fusion_model": DESIGN,
    "serving_state": DESIGN,
    "predictions": DESIGN,
    "live_predictions": DESIGN,
    "validation_report": "2",  # 2: the score against strong baselines, zero without skill
    "portfolio": "1",
}


def table_metadata(df: pd.DataFrame, summary: str | None = None) -> dict:
    meta = {
        "dagster/row_count": len(df),
        "dagster/column_schema": TableSchema(
            columns=[TableColumn(str(c), str(t)) for c, t in df.dtypes.items()]
        ),
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


def source_asset(
    group: str, kinds: set[str], automation: AutomationCondition | None = None, **extra
) -> Callable:
    """`@asset` with the arguments every per-source asset shares: its code version (by function name), the
    source partitions, owners, tags, and the automation condition (`automation`; None for assets that only
    runs of their job materialize)."""

    def wrap(fn: Callable):
        return asset(
            code_version=CODE_VERSIONS[fn.__name__],
            partitions_def=source_partitions,
            group_name=group,
            kinds=kinds,
            owners=OWNERS,
            tags=TAGS,
            automation_condition=automation,
            **extra,
        )(fn)

    return wrap
