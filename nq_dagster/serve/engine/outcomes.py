"""Realized outcomes of served predictions: the live reliability view (`/api/v1/outcomes`, the WebSocket's
outcome messages, the status's live accuracy).

A new tick realizes the prediction made `horizon` ticks before it: its actual direction by the same rule as
training's targets (hold inside the band the prediction stated). The last OUTCOMES_KEPT per source are kept;
the worker thread writes them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pandas as pd

OUTCOMES_KEPT = 500  # realized outcomes kept per source (the live reliability view)


@dataclass(slots=True)
class AwaitingOutcome:
    """A served prediction whose outcome is not known yet: its tick and what it said."""

    ts_ns: int
    value: float
    direction: str
    confidence: float
    hold_band: float


class Outcomes:
    def __init__(self):
        self._awaiting: dict[str, collections.deque[AwaitingOutcome]] = {}
        self._realized: dict[str, collections.deque[dict]] = {}

    def realize(self, source: str, horizon: int, ts_ns: int, value: float, rec: dict) -> list[dict]:
        """The new tick (ts_ns, value) with its prediction `rec`: the outcomes it realizes (as the API shows
        them), and `rec` waits for its own."""
        pend = self._awaiting.setdefault(source, collections.deque())
        out = []
        while len(pend) >= horizon:
            p = pend.popleft()
            change = value - p.value
            actual = "up" if change > p.hold_band else ("down" if change < -p.hold_band else "hold")
            o = {
                "source": source,
                "timestamp": pd.Timestamp(p.ts_ns, tz="UTC").isoformat(),
                "realized_at": pd.Timestamp(ts_ns, tz="UTC").isoformat(),
                "predicted": p.direction,
                "actual": actual,
                "confidence": p.confidence,
                "correct": p.direction == actual,
                "change": change,
            }
            self._realized.setdefault(source, collections.deque(maxlen=OUTCOMES_KEPT)).append(o)
            out.append(o)
        pend.append(AwaitingOutcome(ts_ns, value, rec["direction"], rec["confidence"], rec["hold_band"]))
        return out

    def of(self, source: str, limit: int = OUTCOMES_KEPT) -> list[dict]:
        return list(self._realized.get(source, ()))[-limit:]
