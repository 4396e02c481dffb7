"""`validate_frame`, the pandas-frame entry to the ingest rules that the prediction server's
`Engine._validate` calls today (a frame of the ticks as text, then the bad rows rebuilt positionally as (row,
column, value, problem, fix) with the server's own row numbers). It runs `rules.check_columns` and hands the
rows back in that worded form; it goes when the server calls `ticks.check_ticks`, which answers with
structured rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nq_dagster.ingest.errors import describe_row
from nq_dagster.ingest.read import Columns, from_pandas
from nq_dagster.ingest.rules import check_columns


@dataclass
class WordedRow:
    """A bad row already worded (the shape the server's `_validate` rebuilds with its own row numbers)."""

    row: int
    column: str
    value: str
    problem: str
    fix: str

    def describe(self, file: str) -> str:
        return describe_row(file, self.row, self.column, self.problem, self.value, self.fix)


def validate_frame(frame: pd.DataFrame, path: Path, row_offset: int, source_override: str | None
                   ) -> tuple[pd.DataFrame, list[WordedRow], list[str]]:
    """(clean rows as pandas, bad rows worded, notes) of a pandas frame; its `__line` column, when present,
    holds each row's number, else rows are numbered from `row_offset`."""
    rows = frame["__line"].to_numpy(dtype="int64") if "__line" in frame.columns else row_offset
    columns = Columns(from_pandas(frame.drop(columns="__line", errors="ignore")), rows)
    checked = check_columns(columns, path, source_override)
    worded = [WordedRow(b.row, b.column, b.value, b.problem, b.fix) for b in checked.bad]
    return checked.clean.to_pandas(), worded, checked.notes
