"""The checks a source's new ticks pass before they reach its state: finite values, as many timestamps as
values, each after the source's last one and after the one before it; ticks without timestamps are spaced by
the model's training step. Errors name the source and the value or timestamp at fault, and say the fix. The
predictor and the sharded predictor check every tick of a call here before any state moves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# How far from its training rows a value may lie: VALUE_SPAN x their spread around their mean. Far beyond any
# regime change a series shows, and far below where the state's arithmetic overflows (squares of 1e154), so a
# value like 1e160 is refused by name instead of turning the source's state into NaN for good.
VALUE_SPAN = 1e6


def value_range(stream) -> tuple[float, float]:
    """The values a source's state accepts (`fusion.stream.StreamState`): its training rows' mean plus or
    minus VALUE_SPAN x their standard deviation (at least a thousandth of the mean's size, so a flat series
    can still move)."""
    if stream.analog_scaling is not None:
        mean, sd = float(stream.analog_scaling[0]), float(stream.analog_scaling[1])
    else:  # a state saved before the scaling was kept: its level window
        mean, sd = float(np.mean(stream.values)), float(np.std(stream.values))
    scale = max(sd, abs(mean) * 1e-3, 1e-12)
    return mean - VALUE_SPAN * scale, mean + VALUE_SPAN * scale


def to_ns(timestamps) -> np.ndarray:
    """Timestamps (ns integers, datetime64, or anything pandas parses) as int64 ns since the epoch (UTC)."""
    a = np.asarray(timestamps)
    if a.dtype.kind in "iu":  # already ns since the epoch
        return a.astype(np.int64)
    if a.dtype.kind == "M":
        return a.astype("datetime64[ns]").view(np.int64)
    return pd.to_datetime(pd.Series(a), utc=True).to_numpy("datetime64[ns]").view(np.int64)


def check_ticks_many(
    ticks: dict[str, tuple],
    last_ts: dict[str, int],
    step_ms: dict[str, float],
    ranges: dict[str, tuple[float, float]] | None = None,
) -> dict[str, tuple]:
    """`check_ticks` for each source. A call that brings every source one value (the common tick) is checked
    in a few array operations, its output as one-element lists; anything else, or anything wrong, source by
    source (which words the error)."""
    names = list(ticks)
    seq = (list, tuple, np.ndarray)
    one = all(
        type(v) in seq
        and len(v) == 1
        and (t is None or (type(t) in seq and len(t) == 1 and isinstance(t[0], (int, np.integer))))
        for v, t in ticks.values()
    )
    if one and names:
        try:
            x = np.array([ticks[s][0][0] for s in names], dtype=float)
        except (TypeError, ValueError):
            x = None
        inside = x is not None and x.ndim == 1 and np.isfinite(x).all()
        if inside and ranges is not None:
            lo = np.array([ranges[s][0] for s in names])
            hi = np.array([ranges[s][1] for s in names])
            inside = bool(((x >= lo) & (x <= hi)).all())
        if inside:
            last = np.array([last_ts[s] for s in names], dtype=np.int64)
            given = [ticks[s][1] for s in names]
            ts = np.array(
                [
                    int(t[0]) if t is not None else last[i] + (int(round(step_ms[names[i]] * 1e6)) or 1)
                    for i, t in enumerate(given)
                ],
                dtype=np.int64,
            )
            if (ts > last).all():
                return {s: ([float(x[i])], [int(ts[i])]) for i, s in enumerate(names)}
    return {
        s: check_ticks(s, v, t, last_ts[s], step_ms[s], None if ranges is None else ranges[s])
        for s, (v, t) in ticks.items()
    }


def check_ticks(
    source: str, values, timestamps, last_ts: int, step_ms: float, span: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A source's new values and timestamps as (values, ns since the epoch), or a ValueError saying what is
    wrong: finite numbers, as many timestamps as values, each after the last one seen (`last_ts`) and after
    the one before it. Without timestamps the ticks are spaced by the model's training step (`step_ms`)."""
    new = np.asarray(values, dtype=float).ravel()
    m = len(new)
    if m == 0:
        raise ValueError(f"{source}: no new values")
    if not np.isfinite(new).all():
        bad = int(np.nonzero(~np.isfinite(new))[0][0])
        raise ValueError(f"{source}: value {bad + 1} ({new[bad]}) is not a finite number; pass numbers only")
    if span is not None and not ((new >= span[0]) & (new <= span[1])).all():
        bad = int(np.nonzero((new < span[0]) | (new > span[1]))[0][0])
        raise ValueError(out_of_range_message(source, bad + 1, float(new[bad]), span))
    last = last_ts
    if timestamps is None:
        step = int(round(step_ms * 1e6)) or 1
        return new, last + step * np.arange(1, m + 1, dtype=np.int64)
    ts = to_ns(timestamps)
    if len(ts) != m:
        raise ValueError(f"{source}: {m} values but {len(ts)} timestamps")
    if ts[0] <= last:
        raise ValueError(
            f"{source}: timestamp 1 ({pd.Timestamp(int(ts[0]), tz='UTC')}) is not after the "
            f"last one seen ({pd.Timestamp(last, tz='UTC')}); older rows are used at the next "
            "training, not streamed"
        )
    back = np.nonzero(np.diff(ts) <= 0)[0]
    if len(back):
        i = int(back[0]) + 2
        raise ValueError(
            f"{source}: timestamp {i} ({pd.Timestamp(int(ts[i - 1]), tz='UTC')}) is not after "
            f"timestamp {i - 1}; sort the rows and drop duplicate times"
        )
    return new, ts


def out_of_range_message(source: str, k: int, value: float, span: tuple[float, float]) -> str:
    return (
        f"{source}: value {k} ({value:g}) is outside what its model takes ({span[0]:.6g} to {span[1]:.6g}: "
        f"{VALUE_SPAN:g} x the spread of its training rows around their mean); send values in the source's "
        "units, or retrain the source on data of this scale"
    )
