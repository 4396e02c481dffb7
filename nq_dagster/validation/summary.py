"""The per-source summary table that `nq demo` and `nq run` print."""

from __future__ import annotations

import pandas as pd

from nq_dagster.store import Warehouse


def source_summary(wh: Warehouse) -> pd.DataFrame:
    rows = []
    for src in wh.sources("series"):
        s = wh.read_table("series", src)
        row = {"source": src, "points": len(s), "first": s["timestamp"].min(), "last": s["timestamp"].max()}
        if wh.table_parts("validation_metrics", src):
            m = wh.read_table("validation_metrics", src).iloc[0].to_dict()
            row.update({k: m[k] for k in SUMMARY_COLUMNS if k in m})
        rows.append(row)
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = [
    "predictions",
    "accuracy",
    "acc_ci_low",
    "acc_ci_high",
    "p_binom",
    "best_baseline",
    "best_baseline_acc",
    "p_mcnemar_best",
    "p_dm_best",
    "ece",
    "ece_late",
    "skill",
    "score",
]
