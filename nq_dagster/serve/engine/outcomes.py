"""Realized outcomes of served predictions: the live reliability view (`/api/v1/outcomes`, the WebSocket's
outcome messages, the status's live accuracy).

A new tick realizes the prediction made `horizon` ticks before it: its actual direction by the same rule as
training's targets (hold inside the band the prediction stated), but only when it came within the horizon's
time: at most `record.GAP_TOLERANCE` x the record's time_horizon_ms (horizon x the source's median spacing)
after the prediction's tick (`record.within_horizon`, the rule the validation report applies too). A later
tick (a feed that stopped for hours) does not say what happened at the horizon: the outcome is marked
unrealized (`"realized": false`, `"gap_ms"`), kept and counted, and left out of every accuracy. The last
OUTCOMES_KEPT per source are kept; the worker thread writes them.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pandas as pd

from nq_dagster.fusion.record import within_horizon

OUTCOMES_KEPT = 500  # realized outcomes kept per source (the live reliability view)


@dataclass(slots=True)
class AwaitingOutcome:
    """A served prediction whose outcome is not known yet: its tick and what it said."""

    ts_ns: int
    value: float
    horizon_ms: float  # the record's time_horizon_ms
    direction: str
    confidence: float
    hold_band: float


class Outcomes:
    def __init__(self):
        self._awaiting: dict[str, collections.deque[AwaitingOutcome]] = {}
        self._realized: dict[str, collections.deque[dict]] = {}

    def realize(self, source: str, horizon: int, ts_ns: int, value: float, rec: dict) -> list[dict]:
        """The new tick (ts_ns, value) with its prediction `rec`: the outcomes it realizes (as the API shows
        them; unrealized when the tick came too late, `within_horizon`), and `rec` waits for its own."""
        pend = self._awaiting.setdefault(source, collections.deque())
        out = []
        while len(pend) >= horizon:
            p = pend.popleft()
            change = value - p.value
            actual = "up" if change > p.hold_band else ("down" if change < -p.hold_band else "hold")
            gap_ms = (ts_ns - p.ts_ns) / 1e6
            within = bool(within_horizon(gap_ms, p.horizon_ms))
            o = {
                "source": source,
                "timestamp": pd.Timestamp(p.ts_ns, tz="UTC").isoformat(),
                "realized_at": pd.Timestamp(ts_ns, tz="UTC").isoformat(),
                "predicted": p.direction,
                "confidence": p.confidence,
                "realized": within,
                # unrealized (a gap): the tick came too late to tell the outcome at the horizon
                "actual": actual if within else None,
                "correct": (p.direction == actual) if within else None,
                "change": change if within else None,
                "gap_ms": gap_ms,
                "time_horizon_ms": p.horizon_ms,
            }
            self._realized.setdefault(source, collections.deque(maxlen=OUTCOMES_KEPT)).append(o)
            out.append(o)
        pend.append(
            AwaitingOutcome(
                ts_ns, value, rec["time_horizon_ms"], rec["direction"], rec["confidence"], rec["hold_band"]
            )
        )
        return out

    def of(self, source: str, limit: int = OUTCOMES_KEPT) -> list[dict]:
        """The source's latest outcomes, realized or unrealized (gap): filter on `realized` for accuracy."""
        return list(self._realized.get(source, ()))[-limit:]


def live_accuracy(outcomes: list[dict]) -> dict:
    """Accuracy and mean confidence of the realized outcomes; the unrealized ones (gaps) only counted."""
    done = [o for o in outcomes if o.get("realized", True)]
    return {
        "realized": len(done),
        "unrealized_gap": len(outcomes) - len(done),
        "accuracy": (sum(o["correct"] for o in done) / len(done)) if done else None,
        "mean_confidence": (sum(o["confidence"] for o in done) / len(done)) if done else None,
    }
