"""Timestamps as ingest reads them: ISO 8601 text (any offset; a naive time is UTC) or epoch seconds or
milliseconds as numbers, to whole microseconds UTC. One rule tells milliseconds from seconds (`epoch_seconds`)
and one pattern names the ISO 8601 shapes read at speed (`ISO_SHAPE`). A column is parsed by
`parse_timestamps` (polars: the shape of its first value for the whole column, numbers by the epoch rule, and
pandas' ISO 8601 reader for the rarer forms left over, so "2026-01-05T10", "20260105T100000" or "2026/01/05"
keep being read); a single value of a server tick by `timestamp_ns`, which uses the same rule and pattern
without a frame and returns None for anything it cannot read to the same instant, leaving it to
`parse_timestamps`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl

# epoch milliseconds from 1973 on are above it; epoch seconds stay below it until the year 5138
MILLISECONDS_FROM = 1e11
EPOCH_LIMIT_S = 1e11  # seconds beyond it, either side of 1970, are not a time
UTC_MICROS = pl.Datetime("us", "UTC")
# what a nanosecond timestamp in 64 bits holds (pandas, Arrow's timestamp[ns], the predictor's clocks): a time
# outside it is refused by name, never left to overflow in a later step
MIN_NS, MAX_NS = -(2**63) + 1, 2**63 - 1
MIN_US, MAX_US = -(MIN_NS // -1000), MAX_NS // 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# a date, optionally followed by [T ]HH:MM[:SS[.ffffff]] and then optionally by Z or +HH:MM / -HH:MM
ISO_SHAPE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})"
    r"(?:([T ])(\d{2}:\d{2})(?::(\d{2})(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?)?$"
)


def epoch_seconds(x: float | np.ndarray) -> float | np.ndarray:
    """Epoch seconds or milliseconds (a float, or a numpy array of them) -> seconds: a magnitude of at least
    `MILLISECONDS_FROM` is milliseconds. NaN and infinity pass through (then out of `EPOCH_LIMIT_S`). (The
    divisor is 1000.0 or 1.0 by one expression, so a tick and a column take the same arithmetic.)"""
    return x / ((abs(x) >= MILLISECONDS_FROM) * 999.0 + 1.0)


def _from_epoch(numbers: np.ndarray) -> pl.Series:
    secs = epoch_seconds(numbers)
    ok = np.abs(secs) <= EPOCH_LIMIT_S  # (False for NaN and infinity)
    # whole microseconds (the column's unit): epoch milliseconds / 1000 are not exact in binary
    micros = pl.Series(np.round(np.where(ok, secs, 0.0) * 1e6).astype(np.int64)).cast(UTC_MICROS)
    return micros if ok.all() else micros.scatter(np.flatnonzero(~ok), None)


def _iso_format(match: re.Match) -> str:
    _, sep, _, seconds, fraction, _ = match.groups()
    fmt = "%Y-%m-%d"
    if sep:
        fmt += sep + "%H:%M" + (":%S" if seconds else "") + ("%.f" if fraction else "")
    return fmt


def _by_first_shape(text: pl.Series) -> pl.Series | None:
    """The column read with the exact format of its first value's ISO 8601 shape, null where a value is not in
    that shape; None when the first value has none of the shapes or the values differ in length (padded values
    are stripped first: they are rare)."""
    first = text[0]
    m = ISO_SHAPE.match(first.strip()) if first is not None else None
    if m is None:
        return None
    lengths = text.str.len_bytes()
    if lengths.min() != lengths.max():
        text = text.str.strip_chars()
        lengths = text.str.len_bytes()
        if lengths.min() != lengths.max():
            return None
    fmt, zone = _iso_format(m), m.group(6)
    # in the lazy engine: it parses the column's chunks on every core (the Series call runs on one)
    if zone and zone != "Z":
        expr = pl.first().str.strptime(pl.Datetime("us"), fmt + "%:z", strict=False, cache=False)
        expr = expr.dt.convert_time_zone("UTC")
    else:
        fmt += "Z" if zone else ""
        expr = pl.first().str.strptime(pl.Datetime("us"), fmt, strict=False, cache=False)
        expr = expr.dt.replace_time_zone("UTC")
    parsed = text.to_frame().lazy().select(expr).collect().to_series()
    if m.group(4) is not None:
        t0 = text[0]
        parsed = _without_leap_seconds(text, parsed, len(t0) - len(t0.lstrip()) + m.start(4), zone)
    return parsed


def _without_leap_seconds(text: pl.Series, parsed: pl.Series, at: int, zone: str | None) -> pl.Series:
    """This parser reads a leap second (23:59:60) as the next day's 00:00:00 (and may repeat that row); the
    others refuse it: null here too, and the rules name it. Only rows that parsed to a whole day (UTC, no
    offset) or a whole minute (with an offset) can be one, so the text of few rows is looked at (a string pass
    over every row cost a quarter of a 1M-row ingest)."""
    us = parsed.cast(pl.Int64)
    whole = 86_400_000_000 if zone in (None, "Z") else 60_000_000
    candidates = ((us % whole) == 0).fill_null(False)
    if not candidates.any():
        return parsed
    at_rows = candidates.arg_true()
    leap = text.gather(at_rows).str.slice(at, 2) == "60"
    return parsed.scatter(at_rows.filter(leap), None) if leap.any() else parsed


def _numbers_or_iso(text: pl.Series) -> pl.Series:
    """Text not read by one ISO 8601 shape: a number is epoch seconds or milliseconds, anything else goes to
    pandas' ISO 8601 reader ("2026-01-05T10", "20260105T100000", "2026/01/05", ...), except text without a
    digit: pandas reads "now" and "today" as the wall clock of the ingest, which is not the row's time."""
    text = text.str.strip_chars()
    numbers = text.cast(pl.Float64, strict=False)
    out = _from_epoch(numbers.fill_null(float("nan")).to_numpy())
    if numbers.null_count():
        iso_at = numbers.is_null().arg_true()
        words = text.gather(iso_at)
        words = pl.when(words.str.contains(r"\d")).then(words).otherwise(None)  # no digit, no time
        iso = pd.to_datetime(
            pd.Series(pl.select(words).to_series().to_list(), dtype="string"),
            utc=True,
            errors="coerce",
            format="ISO8601",
        )
        iso = iso.dt.as_unit("us")  # (a finer fraction is cut off)
        out = out.scatter(iso_at, pl.from_pandas(iso).cast(UTC_MICROS))
    return out


def _parse_text(text: pl.Series) -> pl.Series:
    parsed = _by_first_shape(text)
    if parsed is None:
        return _numbers_or_iso(text)
    left = parsed.is_null() & text.is_not_null()
    if not left.any():
        return parsed
    at = left.arg_true()
    return parsed.scatter(at, _numbers_or_iso(text.gather(at)))


_ZONED = re.compile(r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$")


def _localize(naive_utc: pl.Series, tz: str | None) -> pl.Series:
    """Times read as UTC wall clocks -> the same wall clocks in `tz`, as UTC (None: UTC). A wall clock that
    does not exist there (skipped by a DST change) or exists twice (repeated by one) is null: not one time."""
    if tz is None or tz == "UTC":
        return naive_utc
    wall = naive_utc.dt.replace_time_zone(None)
    local = wall.dt.replace_time_zone(tz, ambiguous="null", non_existent="null")
    return local.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def _with_format(text: pl.Series, fmt: str, tz: str | None) -> pl.Series:
    """Text read by a strftime format only (`--timestamp-format`): null where a value does not match it; a
    format with %z gives aware times, else the times are naive, in `tz` (default UTC)."""
    parsed = text.str.strip_chars().str.strptime(pl.Datetime("us"), fmt, strict=False, cache=False)
    if parsed.dtype.time_zone is not None:
        parsed = parsed.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    else:
        parsed = _localize(parsed.dt.replace_time_zone("UTC"), tz)
    if (
        "%S" in fmt or "%T" in fmt
    ):  # a leap second, as on the ISO 8601 path (its seconds are not at one place)
        us = parsed.cast(pl.Int64)
        at_rows = ((us % 60_000_000) == 0).fill_null(False).arg_true()
        if len(at_rows):
            leap = text.gather(at_rows).str.contains(r":60(?:\D|$)")
            parsed = parsed.scatter(at_rows.filter(leap), None) if leap.any() else parsed
    return parsed


def parse_timestamps(col: pl.Series, fmt: str | None = None, tz: str | None = None) -> pl.Series:
    """A column of timestamps -> Datetime(us, UTC), null where a value is not a time. Typed datetimes are
    taken as UTC when naive; numbers are epoch seconds or milliseconds (`epoch_seconds`); text is a number
    (so) or ISO 8601 (padding ignored). Booleans and other types are not times. `fmt` (strftime) reads text
    by that format only; `tz` (an IANA name) is the zone of naive times, typed or text (epoch numbers and
    times with an offset are absolute)."""
    dtype = col.dtype
    if dtype == pl.Datetime:
        naive = dtype.time_zone is None
        if naive:
            return _localize(col.dt.replace_time_zone("UTC").dt.cast_time_unit("us"), tz)
        return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if dtype == pl.Date:
        return _localize(col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"), tz)
    if dtype.is_numeric():
        return _from_epoch(col.cast(pl.Float64).to_numpy())  # (a null is NaN here: not a time)
    if dtype == pl.String:
        if fmt:
            return _with_format(col, fmt, tz)
        parsed = _parse_text(col)
        if tz is None or tz == "UTC":
            return parsed
        text = col.str.strip_chars()
        naive = text.cast(pl.Float64, strict=False).is_null() & ~text.str.contains(_ZONED.pattern)
        naive = naive.fill_null(False) & parsed.is_not_null()
        if not naive.any():
            return parsed
        at = naive.arg_true()
        return parsed.scatter(at, _localize(parsed.gather(at), tz))
    return pl.repeat(None, len(col), dtype=UTC_MICROS, eager=True)


def timestamp_ns(value) -> int | None:
    """One tick's timestamp (a number, or text in an `ISO_SHAPE` form) -> nanoseconds since the epoch, whole
    microseconds, as `parse_timestamps` reads it; None for anything else (then parse_timestamps decides)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            secs = epoch_seconds(float(value))
        except OverflowError:  # an integer beyond any float
            return None
        if not abs(secs) <= EPOCH_LIMIT_S:
            return None
        ns = round(secs * 1e6) * 1000  # round half to even, as numpy rounds the column
        return ns if MIN_NS <= ns <= MAX_NS else None
    if isinstance(value, str) and ISO_SHAPE.match(value):
        try:
            d = datetime.fromisoformat(value)
        except ValueError:
            return None
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        ns = (d - _EPOCH) // _MICROSECOND * 1000
        return ns if MIN_NS <= ns <= MAX_NS else None
    return None


def out_of_range(timestamps: pl.Series) -> np.ndarray:
    """Parsed timestamps (Datetime(us, UTC)) that a nanosecond clock cannot hold, as a mask (null: False)."""
    us = timestamps.cast(pl.Int64)
    return ((us < MIN_US) | (us > MAX_US)).fill_null(False).to_numpy()
