"""The prediction record (DESIGN.md section 6): one pyarrow schema for the `predictions` table, built by one
function for the training assets, the streaming job, `nq predict` and the prediction server alike.

One rule ties a record's fields together (`coherent_change`): `direction` is the most likely class of the
calibrated probabilities; `predicted_change` is the model's forecast where it agrees with that class, else the
mean of the Normal predictive distribution whose class probabilities are exactly the record's; `magnitude` is
its absolute value. So the sign of `predicted_change` is that of the more likely of up and down, and a stated
hold has |predicted_change| within the hold band.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa

from nq_dagster.neuromorphic.patterns import PATTERN_NAMES

DIRECTION_NAMES = np.array(["down", "hold", "up"])  # CLASSES order

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("direction", pa.string(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("p_down", pa.float64(), nullable=False),
        pa.field("p_hold", pa.float64(), nullable=False),
        pa.field("p_up", pa.float64(), nullable=False),
        pa.field("magnitude", pa.float64(), nullable=False),
        pa.field("predicted_change", pa.float64(), nullable=False),
        pa.field("time_horizon_ms", pa.float64(), nullable=False),
        # the prediction intervals of the change (fusion/intervals.py); null where the state has none (a
        # model trained before intervals existed)
        pa.field("interval_80_low", pa.float64(), nullable=True),
        pa.field("interval_80_high", pa.float64(), nullable=True),
        pa.field("interval_95_low", pa.float64(), nullable=True),
        pa.field("interval_95_high", pa.float64(), nullable=True),
        # wall time from receiving the tick to its record being ready; null for walk-forward records of
        # training, which no tick triggered (their fit time is in the model version's metadata)
        pa.field("processing_time_ms", pa.float64(), nullable=True),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("config_version", pa.string(), nullable=False),
        pa.field("train_end", pa.timestamp("ns", tz="UTC"), nullable=False),
        pa.field("neuromorphic_results", pa.string(), nullable=False),  # JSON
        pa.field("quantum_results", pa.string(), nullable=False),  # JSON
    ]
)
PREDICTION_COLUMNS = tuple(PREDICTION_SCHEMA.names)


def prediction_id(source: str, ts_iso: str, model_version: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}/{ts_iso}/{model_version}"))


# a prediction is realized by the tick `horizon` rows later only if that tick came at most this many times
# its time_horizon_ms (horizon x the source's median spacing) after it: a regular feed's jitter passes, a feed
# that stopped for hours does not (its next tick does not say what happened at the horizon: unrealized)
GAP_TOLERANCE = 1.5


def within_horizon(gap_ms, time_horizon_ms):
    """Whether ticks gap_ms after predictions with these horizons realize them (arrays or floats); a horizon
    of 0 ms (a model trained on one row's spacing) sets no limit."""
    gap, hz = np.asarray(gap_ms, dtype=float), np.asarray(time_horizon_ms, dtype=float)
    return (hz <= 0) | (gap <= GAP_TOLERANCE * hz)


INTERVAL_KEYS = ("interval_80", "interval_95")  # the record's [low, high] pairs, in intervals.LEVELS order
MIN_HOLD_P = 1e-6  # below it the hold class is too thin to pin the Normal's spread (see coherent_change)


def coherent_change(
    probs: np.ndarray, band: np.ndarray, scale: np.ndarray, model_change: np.ndarray
) -> np.ndarray:
    """The predicted change that agrees with calibrated class probabilities (n, 3 in CLASSES order).

    The model's own forecast where it agrees with the most likely class (up: > 0, down: < 0, hold: within the
    band): always so where the probabilities are the model's Normal error model alone, whose most likely class
    follows the forecast's sign. Where the mix with the base rates moved the most likely class away from it,
    the mean of the Normal N(mu, sigma) with P(change < -band) = p_down and P(change > band) = p_up (two
    equations, two unknowns): with a = z(p_down), c = -z(p_up) (z the Normal quantile), sigma =
    2 band / (c - a) and mu = -band (a + c) / (c - a); mu > 0 exactly when p_up > p_down, and when hold is the
    most likely class |mu| <= band (a Normal centred beyond the band puts more than half its mass past it).
    Where the band is 0 or hold is too thin to identify sigma (p_hold < MIN_HOLD_P), sigma is the model's
    error scale and mu = sigma z(p_up / (p_up + p_down)): the sign rule still holds (hold is not the most
    likely class there). (Inverting the probabilities everywhere would lose the forecast where they
    saturate: a near-perfect model's 1 - 1e-9 says nothing of its size.)"""
    from scipy.special import ndtri  # lazy: the code location imports the record's schema, never scipy

    P = np.asarray(probs, dtype=float)
    b = np.asarray(band, dtype=float)
    m = np.asarray(model_change, dtype=float)
    cls = P.argmax(axis=1)
    agrees = np.where(cls == 2, m > 0, np.where(cls == 0, m < 0, np.abs(m) <= b))
    a, c = ndtri(P[:, 0]), -ndtri(P[:, 2])
    ok = (b > 0) & (P[:, 1] >= MIN_HOLD_P) & (c > a)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(ok, -b * (a + c) / (c - a), 0.0)
        thin = np.asarray(scale, dtype=float) * ndtri(P[:, 2] / (P[:, 2] + P[:, 0]))
    implied = np.where(ok, mu, np.where(cls == 1, 0.0, thin))
    return np.where(agrees, m, implied)


def _rows(v, n: int) -> list:
    return list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] * n


def build_records(
    source: str | list[str],
    ts_ns: np.ndarray,
    probs: np.ndarray,
    band: np.ndarray,
    scale: np.ndarray,
    model_change: np.ndarray,
    patterns: np.ndarray,
    spike_rate: np.ndarray,
    frames: np.ndarray,
    quantum: dict | list[dict],
    model_version: str | list[str],
    config_version: str | list[str],
    train_end_ns: np.ndarray,
    horizon_ms: float | np.ndarray,
    processing_ms: np.ndarray | None,
    half_widths: np.ndarray | None = None,
) -> list[dict]:
    """The records of n predictions as dicts with nested results (the API's JSON shape). Source, model and
    config fields are one value for every row, or one per row (a batch of sources). `band`, `scale` and
    `model_change`: each row's hold band, the model's error scale and its forecast, from which with the
    probabilities the predicted change follows (`coherent_change`: no record states a change its direction
    contradicts); `half_widths` (n, 2): the intervals' half-widths around it at intervals.LEVELS (NaN or None:
    no interval)."""
    n = len(ts_ns)
    source, quantum, model_version = _rows(source, n), _rows(quantum, n), _rows(model_version, n)
    config_version, horizon_ms = _rows(config_version, n), _rows(horizon_ms, n)
    probs = np.asarray(probs, dtype=float)
    change = coherent_change(probs, band, scale, model_change)
    direction = DIRECTION_NAMES[probs.argmax(axis=1)].tolist()
    confidence, p3 = probs.max(axis=1).tolist(), probs.tolist()
    chg = change.tolist()
    pats = np.round(np.asarray(patterns, dtype=float), 4).tolist()
    rates = np.round(np.asarray(spike_rate, dtype=float), 6).tolist()
    fr = np.asarray(frames, dtype=np.float32)
    means = np.round(fr.mean(axis=1).astype(float), 6).tolist()
    norms = np.round(np.linalg.norm(fr, axis=1).astype(float), 6).tolist()
    stamps = list(pd.DatetimeIndex(np.asarray(ts_ns, dtype=np.int64), tz="UTC"))
    ends = {int(t): pd.Timestamp(int(t), tz="UTC") for t in set(np.asarray(train_end_ns).tolist())}
    train_end = [ends[int(t)] for t in np.asarray(train_end_ns).tolist()]
    processing = None if processing_ms is None else np.asarray(processing_ms, dtype=float).tolist()
    hw = np.full((n, len(INTERVAL_KEYS)), np.nan) if half_widths is None else np.asarray(half_widths, float)
    lo_hi = np.stack([change[:, None] - hw, change[:, None] + hw], axis=-1)
    intervals = [[None if np.isnan(p).any() else p for p in row] for row in lo_hi.tolist()]
    out = []
    for i in range(n):
        t, p = stamps[i], p3[i]
        out.append(
            {
                "prediction_id": prediction_id(source[i], t.isoformat(), model_version[i]),
                "source": source[i],
                "timestamp": t,
                "direction": direction[i],
                "confidence": confidence[i],
                "probabilities": {"down": p[0], "hold": p[1], "up": p[2]},
                "magnitude": abs(chg[i]),
                "predicted_change": chg[i],
                "time_horizon_ms": float(horizon_ms[i]),
                **dict(zip(INTERVAL_KEYS, intervals[i], strict=True)),
                "processing_time_ms": None if processing is None else processing[i],
                "model_version": model_version[i],
                "config_version": config_version[i],
                "train_end": train_end[i],
                "neuromorphic_results": {
                    "patterns": dict(zip(PATTERN_NAMES, pats[i], strict=True)),
                    "spike_analysis": {"spike_rate": rates[i]},
                    "reservoir_state": {"mean": means[i], "norm": norms[i]},
                },
                "quantum_results": quantum[i],
            }
        )
    return out


def records_table(records: list[dict]) -> pa.Table:
    """Records in the `predictions` table's schema (nested results as JSON text)."""
    cols = {name: [] for name in PREDICTION_COLUMNS}
    for r in records:
        for name in PREDICTION_COLUMNS:
            if name in ("p_down", "p_hold", "p_up"):
                cols[name].append(r["probabilities"][name[2:]])
            elif name.startswith("interval_"):
                pair = r.get(name.rsplit("_", 1)[0])
                cols[name].append(None if pair is None else pair[name.endswith("_high")])
            elif name in ("neuromorphic_results", "quantum_results"):
                cols[name].append(json.dumps(r[name]))
            else:
                cols[name].append(r[name])
    return pa.table(cols, schema=PREDICTION_SCHEMA)


def records_frame(records: list[dict]) -> pd.DataFrame:
    return records_table(records).to_pandas()


def jsonable(record: dict) -> dict:
    """A record with timestamps as ISO 8601 strings (for JSON output)."""
    return {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in record.items()}
