"""The ingest rules for the prediction server's ticks. `check_ticks(rows)` takes [(source, timestamp, value)]
as request bodies give them (a timestamp ISO 8601 text or an epoch number, a value a number) and answers with
the accepted ticks and the refused rows as `BadRow`s whose `row` and `duplicate_of` are positions in `rows`,
so the server branches on `kind` and words nothing itself. Plainly valid ticks take a scalar shortcut
(`fast_validate_ticks`: the rules' own source-name, value and timestamp functions on single values, a few
microseconds a tick, where a frame costs a few hundred); anything else is checked by `rules.check_columns` on
a frame of the ticks as text, as a file's rows are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from nq_dagster.ingest.errors import BadRow
from nq_dagster.ingest.read import Columns
from nq_dagster.ingest.rules import check_columns, finite_number, valid_source_name
from nq_dagster.ingest.timestamps import timestamp_ns


@dataclass(frozen=True)
class Tick:
    """An accepted tick: its position in the rows checked, source, time (nanoseconds since the epoch, whole
    microseconds, UTC) and value."""

    row: int
    source: str
    ts_ns: int
    value: float


@dataclass
class TickCheck:
    """The answer of `check_ticks`: `clean`, the accepted ticks in the order given; `problems`, the refused
    rows sorted by position (kind "duplicate": `duplicate_of` is the position of the first)."""

    clean: list[Tick] = field(default_factory=list)
    problems: list[BadRow] = field(default_factory=list)


def fast_validate_ticks(rows: list[tuple]) -> list[tuple[str, int, float]] | None:
    """[(source, timestamp, value)] -> [(source, ts_ns, value)] when every row is plainly valid (a valid
    source name, a finite number, a timestamp `timestamp_ns` reads, no repeated (source, timestamp)); None
    when any row is not, and then `check_tick_frame` decides and names the problems. It accepts a subset of
    what check_tick_frame accepts, with the same parsed values (tests/test_ingest.py)."""
    out, seen = [], set()
    for source, ts, value in rows:
        if not isinstance(source, str) or not valid_source_name(source) or not finite_number(value):
            return None
        t = timestamp_ns(ts)
        if t is None or (source, t) in seen:
            return None
        seen.add((source, t))
        out.append((source, t, float(value)))
    return out


def check_tick_frame(rows: list[tuple]) -> TickCheck:
    """Every rule over the ticks as a file's rows: a frame of their text (a number as Python writes it)
    checked by `rules.check_columns`, which names every problem."""
    if not rows:
        return TickCheck()
    frame = pl.DataFrame(
        {
            "source": [str(r[0]) for r in rows],
            "timestamp": [r[1] if isinstance(r[1], str) else repr(r[1]) for r in rows],
            "value": [repr(r[2]) if isinstance(r[2], float) else str(r[2]) for r in rows],
        },
        schema={"source": pl.String, "timestamp": pl.String, "value": pl.String},
    )
    checked = check_columns(Columns(frame, np.arange(len(rows), dtype=np.int64)), Path("request"), None)
    clean = checked.clean.sort("_row")
    ticks = [
        Tick(row, source, ts, value)
        for row, source, ts, value in zip(
            clean["_row"].to_list(),
            clean["source"].to_list(),
            clean["timestamp"].dt.epoch("ns").to_list(),
            clean["value"].to_list(),
            strict=True,
        )
    ]
    return TickCheck(ticks, checked.bad)


def check_ticks(rows: list[tuple]) -> TickCheck:
    """The rules over a batch of ticks [(source, timestamp, value)]: the shortcut when every tick is plainly
    valid, else the frame."""
    fast = fast_validate_ticks(rows)
    if fast is not None:
        return TickCheck([Tick(i, *tick) for i, tick in enumerate(fast)])
    return check_tick_frame(rows)
