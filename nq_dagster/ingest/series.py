"""A source's stored rows as the pipeline reads them: `build_series` turns `raw_ticks` rows into one sorted
series without repeated timestamps, the primary value column (`primary_column`: value / price / close /
reading, else the first) named `value`; `rows_after` gives the rows after a time, the callback with which a
stream continues from its saved state.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

PRIMARY_NAMES = ("value", "price", "close", "reading")


def primary_column(columns: list[str]) -> str:
    """The value column the pipeline predicts: value/price/close/reading, else the first numeric one."""
    skip = {"source", "timestamp", "file", "content_hash"}
    candidates = [c for c in columns if c not in skip]
    for name in PRIMARY_NAMES:
        for c in candidates:
            if c.lower() == name:
                return c
    if not candidates:
        raise ValueError("no value column")
    return candidates[0]


def build_series(raw: pd.DataFrame) -> pd.DataFrame:
    """Sorted, de-duplicated series: timestamp, value (the primary column), and the other value columns."""
    value_col = primary_column(list(raw.columns))
    extra = [c for c in raw.columns if c not in ("source", "timestamp", "file", "content_hash", value_col)]
    out = raw[["timestamp", value_col, *extra]].rename(columns={value_col: "value"})
    out = out.dropna(subset=["value"]).sort_values("timestamp", kind="stable")
    out = out.drop_duplicates("timestamp", keep="first").reset_index(drop=True)
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    out.attrs["value_column"] = value_col
    return out


def rows_after(load_series: Callable[[], pd.DataFrame]) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """The `fusion.predictor.continue_from` callback: (values, timestamps) of a source's rows after a time,
    from the series `load_series()` returns, loaded only if a stream has to be replayed."""

    def rows(ts_ns: int):
        series = load_series()
        later = series[series["timestamp"] > pd.Timestamp(ts_ns, tz="UTC")]
        return later["value"].to_numpy(dtype=float), later["timestamp"].to_numpy()

    return rows
