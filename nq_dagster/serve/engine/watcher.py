"""The models a replica serves, and the watcher that keeps them current.

At start every owned source with a `serving_state` artifact is loaded. Training writes a new `serving_state`;
the watcher thread sees its modification time change and has the worker swap the model in between two batches
(`streams.load_stream`: the new model continues from the furthest state, the live one or the saved
`live_state`, over the rows after it), so no request fails or waits for a restart. Only promoted versions are
served: training writes `serving_state` only for a version the promotion gate passed (`validation.promotion`),
and a state whose version the gate recorded as rejected is refused here too. A model that does not load is
recorded (status shows it; requests for it get 422) and the server keeps serving the others.

The same thread writes this replica's lease and picks up rows that files brought (`pickup.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Sequence

import pandas as pd

from nq_dagster.config import load_config, rows_needed
from nq_dagster.ingest import build_series, primary_column
from nq_dagster.serve.engine.ownership import Ownership
from nq_dagster.serve.engine.ticklog import TickLog
from nq_dagster.serve.engine.work import NoModel
from nq_dagster.store import Warehouse
from nq_dagster.streams import load_stream
from nq_dagster.validation import promotion

log = logging.getLogger("nq.serve")


class Models:
    """Loads and swaps the owned sources' models into the predictor; remembers which artifact it loaded."""

    def __init__(self, wh: Warehouse, own: Ownership, predictor, ticklog: TickLog):
        self.wh, self.own, self.predictor, self.ticklog = wh, own, predictor, ticklog
        self._mtime: dict[str, int] = {}  # serving_state's mtime when it was last loaded (or failed to)
        self.errors: dict[str, str] = {}  # sources whose model failed to load, and why

    def owned_trained_sources(self) -> list[str]:
        return [s for s in self.wh.artifact_sources("serving_state") if self.own.owns(s)]

    def changed(self) -> list[str]:
        """Owned sources whose serving_state changed since it was loaded (or appeared)."""
        return [
            s
            for s in self.owned_trained_sources()
            if self.wh.artifact_mtime_ns("serving_state", s) != self._mtime.get(s)
        ]

    def series(self, source: str) -> pd.DataFrame:
        """The source's series: raw_ticks plus the ticks still in the log (not yet flushed)."""
        raw = self.wh.read_table("raw_ticks", source)
        logged = [t for t in self.ticklog.ticks() if t.source == source]
        if logged:
            col = primary_column(list(raw.columns))
            tail = pd.DataFrame(
                {
                    "timestamp": pd.to_datetime([t.ts_ns for t in logged], utc=True),
                    col: [t.value for t in logged],
                }
            )
            raw = pd.concat([raw, tail])
        return build_series(raw)

    def load(self, source: str) -> str:
        """Load (or swap in) the source's trained model, continuing from the furthest state; runs on the
        worker thread once the engine started. Returns how it continued, or "failed"."""
        mtime = self.wh.artifact_mtime_ns("serving_state", source)
        try:
            current = self.predictor.serving_state(source) if source in self.predictor.sources() else None
            state, how = load_stream(self.wh, source, current, lambda: self.series(source))
            if promotion.status_of(self.wh, source, state.model.model_version) == "rejected":
                raise ValueError(
                    f"model version {state.model.model_version} was rejected by the promotion gate "
                    "(`nq models`); the current version stays served"
                )
        except Exception as exc:  # a broken artifact must not take the server down; status shows it
            self.errors[source] = f"{type(exc).__name__}: {exc}"
            self._mtime[source] = mtime
            log.error(json.dumps({"event": "model_load_failed", "source": source, "error": str(exc)}))
            return "failed"
        self.predictor.load(state)
        self.predictor.warm_up(source)
        self.errors.pop(source, None)
        self._mtime[source] = mtime
        log.info(
            json.dumps(
                {
                    "event": "model_loaded",
                    "source": source,
                    "model_version": state.model.model_version,
                    "from": how,
                    "rows_seen": state.stream.n_rows,
                }
            )
        )
        return how

    def no_model(self, source: str) -> NoModel:
        """The 409 for a source without a model: the rows stored and the rows training needs."""
        rows, need = 0, rows_needed()
        with contextlib.suppress(Exception):
            rows = self.wh.stored_rows("raw_ticks", source)
            need = rows_needed(load_config(self.wh.home))
        return NoModel(source, rows, need)


def watch(stop: threading.Event, interval_s: float, steps: Sequence[Callable[[], None]]) -> None:
    """Every `interval_s` until `stop`: each step in order; an error is logged and the watcher keeps
    watching."""
    while not stop.wait(interval_s):
        try:
            for step in steps:
                step()
        except Exception:  # noqa: BLE001 - the watcher keeps watching
            log.exception("watcher")
