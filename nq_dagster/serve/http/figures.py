"""Figures several routes show (models, status, metrics): each source's latest validation report figures (the
`validation_metrics` table, re-read at most every 10 s) and the live accuracy of the predictions served since
the server started."""

from __future__ import annotations

import contextlib
import time

from nq_dagster.serve.engine import Engine
from nq_dagster.serve.engine.outcomes import live_accuracy
from nq_dagster.store import Warehouse

VALIDATION_REREAD_S = 10.0


class Figures:
    def __init__(self, wh: Warehouse, engine: Engine):
        self.wh, self.engine = wh, engine
        self._validation_read_at, self._validation = 0.0, {}

    def validation(self) -> dict:
        """Per source: score, accuracy, predictions, model version and report of its latest validation
        (blocking I/O: call it in a thread)."""
        if time.monotonic() - self._validation_read_at < VALIDATION_REREAD_S:
            return self._validation
        out = {}
        for s in self.engine.sources():
            with contextlib.suppress(Exception):
                if self.wh.table_parts("validation_metrics", s):
                    m = self.wh.read_table("validation_metrics", s).iloc[-1]
                    out[s] = {
                        "score": float(m["score"]),
                        "accuracy": float(m["accuracy"]),
                        "predictions": int(m["predictions"]),
                        "model_version": str(m["model_version"]),
                        "report": f"{s}.html",
                    }
        self._validation_read_at, self._validation = time.monotonic(), out
        return out

    def live(self) -> dict:
        """Per source: outcomes realized since the start, their accuracy and mean confidence, and the count of
        those left unrealized by a gap in the ticks (`outcomes.GAP_TOLERANCE`)."""
        return {s: live_accuracy(self.engine.outcomes(s)) for s in self.engine.sources()}
