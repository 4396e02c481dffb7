"""Where a source's stream continues from: the one loader of "training's `serving_state`, the stream's own
`live_state`, and the rows between them" that the streaming asset, `nq predict` and the prediction server
share. It sits above the store, the engines and ingest (it reads tables, builds the series, and moves a
predictor on)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

import nq_dagster.codecs  # noqa: F401  (the serving states this module loads are registered artifact types)
from nq_dagster.fusion.model import ServingState
from nq_dagster.fusion.predictor import continue_from
from nq_dagster.ingest import build_series, rows_after
from nq_dagster.store import Warehouse


def load_stream(
    wh: Warehouse,
    source: str,
    live: ServingState | None = None,
    series: Callable[[], pd.DataFrame] | None = None,
) -> tuple[ServingState, str]:
    """The state `source`'s stream continues from, and how it was chosen (`fusion.predictor.continue_from`).

    `live`: the stream's state when the caller holds a newer one than the saved `live_state` (the server's
    in-memory state); by default the saved one. `series`: the source's series when the caller knows rows the
    tables do not hold yet (the server's unflushed log); by default only rows after training's last timestamp
    are read (parts entirely older are skipped by their footers), so the cost does not grow with the source's
    history. Raises FileNotFoundError when the source has no trained serving state."""
    trained = wh.load_artifact("serving_state", source)
    if live is None and wh.has_artifact("live_state", source):
        live = wh.load_artifact("live_state", source)
    after = pd.Timestamp(trained.stream.last_ts, tz="UTC")
    if series is None:

        def series() -> pd.DataFrame:
            return build_series(wh.read_table("raw_ticks", source, after=after))

    return continue_from(trained, live, rows_after(series))
