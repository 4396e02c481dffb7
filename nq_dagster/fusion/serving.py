"""Serving: predictions for new values from a source's saved state, without a Dagster run.

A `ServingState` holds what continuing a stream needs: the latest fused model, the reservoir (its weights
and its state after the last row), the tail of the values, and the tail of spikes and reservoir states
that the look-back windows read (with each neuron's last spike before that tail, for the inter-spike
intervals). `advance` runs the new values through exactly the computations of the batch graph (encoders
keyed by absolute step, reservoir continued from its state, detectors on the tail) and returns one
prediction record per new value, plus the state moved on by those values.

No dagster import: `nq predict` and the streaming job both use this module.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from nq_dagster.config import PipelineConfig
from nq_dagster.fusion.walkforward import CLASS_NAMES, CLASSES, FusionModel, lag_matrix, make_targets
from nq_dagster.neuromorphic import PATTERN_NAMES, Reservoir, detect_patterns, encode, encoder_inputs
from nq_dagster.neuromorphic.patterns import NO_SPIKE, last_spike_bins
from nq_dagster.neuromorphic.reservoir import ReservoirState

PATTERN_TAIL = 64  # steps of spikes and states kept: the detectors look back 32 steps


def values_tail_length(cfg: PipelineConfig) -> int:
    """Values the causal windows need: the encoder's volatility median reads 10 windows of a 10-window floor."""
    return 22 * cfg.feature_window + 8


def reservoir_input(spikes: np.ndarray) -> np.ndarray:
    """Per-neuron spike counts of each step, scaled to [0, 1] by the bins per step: (T, N)."""
    return spikes.sum(axis=1, dtype=np.float32) / spikes.shape[1]


def spike_statistics(spikes: np.ndarray) -> dict[str, np.ndarray]:
    """Per step: share of (bin, neuron) slots that spiked, and share of neurons that spiked at all."""
    T, W, N = spikes.shape
    return {"spike_rate": spikes.sum(axis=(1, 2)) / (N * W), "active_fraction": spikes.any(axis=1).mean(axis=1)}


def feature_frame(inputs: np.ndarray, spikes: np.ndarray, states: np.ndarray, input_names: tuple[str, ...],
                  prior_last_bin: np.ndarray | None = None, last: int | None = None) -> pd.DataFrame:
    """The candidate fusion features (encoder inputs, eight pattern strengths, spike statistics) of every
    step, or of the final `last` steps only (the look-back windows still read the whole arrays given)."""
    k = len(spikes) if last is None else last
    df = pd.DataFrame({name: inputs[-k:, j].astype(float) for j, name in enumerate(input_names)})
    strengths = detect_patterns(spikes, states, prior_last_bin=prior_last_bin, last=k)
    for p in PATTERN_NAMES:
        df[p] = strengths[p]
    for name, v in spike_statistics(spikes[-k:]).items():
        df[name] = v
    return df


@dataclass
class ServingState:
    source: str
    cfg: PipelineConfig
    seed: int  # the source's encoder seed
    input_names: tuple[str, ...]
    model: FusionModel
    selected: list[str]
    model_version: str
    quantum: dict
    reservoir: Reservoir
    reservoir_state: ReservoirState  # after the last row
    n_rows: int  # rows seen; the next value is row n_rows
    timestamps: np.ndarray  # tail
    values: np.ndarray  # tail
    spikes: np.ndarray  # (PATTERN_TAIL, W, N) bool, tail
    states: np.ndarray  # (PATTERN_TAIL, size) float32, tail
    prior_last_bin: np.ndarray  # (N,) last spike of each neuron before the spikes tail, bins relative to its start
    reliability: list[dict] = field(default_factory=list)  # realized accuracy per confidence bin (walk-forward)
    model_train_end: pd.Timestamp | None = None  # time of the last row whose target the model saw

    @property
    def step(self) -> pd.Timedelta:
        """The median spacing of the recent timestamps (spacing of values given without timestamps)."""
        ts = pd.to_datetime(pd.Series(self.timestamps), utc=True)
        return ts.diff().median() if len(ts) > 1 else pd.Timedelta(seconds=1)


CONFIDENCE_EDGES = (1 / 3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0 + 1e-12)


def reliability_table(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Accuracy actually achieved by the walk-forward predictions in each confidence bin (realized rows only)."""
    out = []
    for lo, hi in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:], strict=True):
        m = (confidence >= lo) & (confidence < hi)
        out.append({"confidence_bin": [round(lo, 4), round(min(hi, 1.0), 4)], "predictions": int(m.sum()),
                    "observed_accuracy": float(correct[m].mean()) if m.any() else None})
    return out


def walk_forward_reliability(fused: pd.DataFrame, targets: pd.DataFrame) -> list[dict]:
    y = targets["direction"].to_numpy()[fused["row"].to_numpy()]
    ok = y != -9
    return reliability_table(fused["confidence"].to_numpy()[ok], (fused["direction"].to_numpy()[ok] == y[ok]))


def build_state(source: str, cfg: PipelineConfig, seed: int, input_names: tuple[str, ...], fusion: dict,
                reservoir: Reservoir, reservoir_state: ReservoirState, timestamps: np.ndarray, values: np.ndarray,
                spikes: np.ndarray, states: np.ndarray, quantum: dict) -> ServingState:
    """From the batch graph's outputs over the whole history (spikes (T, W, N), states (T, size))."""
    T = len(values)
    k = min(PATTERN_TAIL, T)
    W = spikes.shape[1]
    before = last_spike_bins(spikes[: T - k]) if T > k else np.full(spikes.shape[2], NO_SPIKE, dtype=np.int64)
    prior = np.where(before == NO_SPIKE, NO_SPIKE, before - (T - k) * W)
    v = values_tail_length(cfg)
    return ServingState(source, cfg, seed, tuple(input_names), fusion["model"], list(fusion["selected"]),
                        fusion["model_version"], quantum, reservoir, reservoir_state.to(reservoir.device), T,
                        np.asarray(timestamps)[-v:], np.asarray(values, dtype=float)[-v:], spikes[-k:].copy(),
                        np.asarray(states[-k:], dtype=np.float32), prior,
                        walk_forward_reliability(fusion["fused"], fusion["targets"]) if "fused" in fusion else [],
                        pd.Timestamp(np.asarray(timestamps)[fusion["model"].train_end]))


def _records(st: ServingState, ts: np.ndarray, X: np.ndarray, band: np.ndarray, feats: pd.DataFrame,
             states: np.ndarray, elapsed_ms: float) -> pd.DataFrame:
    probs, chg = st.model.predict(X, band)
    d = CLASSES[probs.argmax(axis=1)]
    horizon_ms = st.step.total_seconds() * 1000 * st.cfg.horizon
    stamps = pd.to_datetime(pd.Series(ts), utc=True)
    version = st.cfg.version
    pats = feats[list(PATTERN_NAMES)].to_numpy().round(4)
    rates = feats["spike_rate"].to_numpy().round(6)
    means, norms = states.mean(axis=1).round(6), np.linalg.norm(states, axis=1).round(6)
    rows = []
    for i in range(len(X)):
        t = stamps.iloc[i]
        conf = float(probs[i].max())
        rows.append({
            "prediction_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{st.source}/{t.isoformat()}/{st.model_version}")),
            "source": st.source, "timestamp": t, "direction": CLASS_NAMES[int(d[i])], "confidence": conf,
            "probabilities": dict(zip(("down", "hold", "up"), map(float, probs[i]), strict=True)),
            "magnitude": float(abs(chg[i])), "predicted_change": float(chg[i]), "time_horizon_ms": horizon_ms,
            "processing_time_ms": elapsed_ms / len(X), "model_version": st.model_version,
            "config_version": version,
            "neuromorphic_results": {"patterns": dict(zip(PATTERN_NAMES, map(float, pats[i]), strict=True)),
                                     "spike_analysis": {"spike_rate": float(rates[i])},
                                     "reservoir_state": {"mean": float(means[i]), "norm": float(norms[i])}},
            "quantum_results": st.quantum,
            "calibration": _calibration(st, conf),
        })
    return pd.DataFrame(rows)


def _calibration(st: ServingState, confidence: float) -> dict:
    """The accuracy the model actually achieved, out of sample, at this confidence."""
    for b in st.reliability:
        if b["confidence_bin"][0] <= confidence <= b["confidence_bin"][1]:
            return {**b, "note": "walk-forward predictions of this source in this confidence bin, realized outcomes"}
    return {"note": "no realized walk-forward predictions to compare with"}


def _design(st: ServingState, values: np.ndarray, feats: pd.DataFrame, states: np.ndarray, m: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """The fused model's design rows and hold bands for the last m of `values` (tail + new)."""
    sel = feats[st.selected].to_numpy(dtype=float)[-m:] if st.selected else np.zeros((m, 0))
    lags = lag_matrix(values, 5)[-m:]
    band = make_targets(values, st.cfg.horizon, st.cfg.hold_band, st.cfg.feature_window)["band"].to_numpy()[-m:]
    return np.hstack([states[-m:], sel, lags]), band


TABLE_COLUMNS = ("prediction_id", "source", "timestamp", "direction", "confidence", "magnitude", "predicted_change",
                 "time_horizon_ms", "processing_time_ms", "model_version", "config_version", "train_end",
                 "neuromorphic_results", "quantum_results")


def as_table_rows(st: ServingState, records: pd.DataFrame) -> pd.DataFrame:
    """Records in the `predictions` table's schema (nested results as JSON text)."""
    import json

    df = records.copy()
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    df["train_end"] = pd.to_datetime(pd.Series([st.model_train_end] * len(df), dtype=object), utc=True).to_numpy()
    for c in ("neuromorphic_results", "quantum_results"):
        df[c] = df[c].map(json.dumps)
    return df[list(TABLE_COLUMNS)]


def predict_latest(st: ServingState) -> pd.DataFrame:
    """The prediction for the last row already seen (it equals the batch graph's record for that row)."""
    t0 = time.perf_counter()
    inputs = encoder_inputs(st.values, st.cfg.feature_window)[-len(st.spikes):]
    feats = feature_frame(inputs, st.spikes, st.states, st.input_names, st.prior_last_bin, last=1)
    X, band = _design(st, st.values, feats, st.states, 1)
    return _records(st, st.timestamps[-1:], X, band, feats, st.states[-1:],
                    (time.perf_counter() - t0) * 1000)


def advance(st: ServingState, new_values: np.ndarray, new_timestamps: np.ndarray | None = None
            ) -> tuple[pd.DataFrame, ServingState]:
    """Predictions for each new value (in order) and the state moved on past them."""
    t0 = time.perf_counter()
    new = np.asarray(new_values, dtype=float).ravel()
    m = len(new)
    if m == 0:
        raise ValueError("no new values")
    if not np.isfinite(new).all():
        bad = int(np.nonzero(~np.isfinite(new))[0][0])
        raise ValueError(f"value {bad + 1} ({new[bad]}) is not a finite number; pass numbers only")
    if new_timestamps is None:
        last, step = pd.Timestamp(st.timestamps[-1]), st.step
        new_ts = np.asarray(pd.DatetimeIndex([last + step * (i + 1) for i in range(m)]))
    else:
        stamps = pd.to_datetime(pd.Series(new_timestamps), utc=True)
        if len(stamps) != m:
            raise ValueError(f"{m} values but {len(stamps)} timestamps")
        last = pd.to_datetime(pd.Series([st.timestamps[-1]]), utc=True).iloc[0]
        if stamps.iloc[0] <= last:
            raise ValueError(f"timestamp 1 ({stamps.iloc[0]}) is not after the last one seen ({last}); "
                             "older rows are used at the next training, not streamed")
        back = np.nonzero(~(stamps.diff().iloc[1:] > pd.Timedelta(0)).to_numpy())[0]
        if len(back):
            i = int(back[0]) + 2
            raise ValueError(f"timestamp {i} ({stamps.iloc[i - 1]}) is not after timestamp {i - 1}; sort the rows "
                             "and drop duplicate times")
        new_ts = np.asarray(stamps)
    cfg = st.cfg
    values = np.concatenate([st.values, new])
    inputs = encoder_inputs(values, cfg.feature_window)
    spikes_new = encode(inputs[None, -m:], cfg.encoding, cfg.neuron_count, cfg.window_bins, cfg.bin_ms,
                        cfg.min_rate_hz, cfg.max_rate_hz, seed=st.seed, device=st.reservoir.device,
                        step_offset=st.n_rows)[0].cpu().numpy()
    out, rstate = st.reservoir.run(torch.as_tensor(reservoir_input(spikes_new))[None].to(st.reservoir.device),
                                   st.reservoir_state)
    states_new = out[0].cpu().numpy().astype(np.float32)
    spikes = np.concatenate([st.spikes, spikes_new])
    states = np.concatenate([st.states, states_new])
    k = len(st.spikes)
    feats = feature_frame(inputs[-(k + m):], spikes, states, st.input_names, st.prior_last_bin, last=m)
    X, band = _design(st, values, feats, states, m)
    records = _records(st, new_ts, X, band, feats, states_new, (time.perf_counter() - t0) * 1000)
    # move the tails on
    W = spikes.shape[1]
    drop = len(spikes) - PATTERN_TAIL
    prior = st.prior_last_bin
    if drop > 0:
        dropped_last = last_spike_bins(spikes[:drop])
        prior = np.where(dropped_last != NO_SPIKE, dropped_last, prior)
        prior = np.where(prior == NO_SPIKE, NO_SPIKE, prior - drop * W)
        spikes, states = spikes[drop:], states[drop:]
    v = values_tail_length(cfg)
    nxt = replace(st, reservoir_state=rstate, n_rows=st.n_rows + m,
                  timestamps=np.concatenate([st.timestamps, new_ts])[-v:], values=values[-v:],
                  spikes=spikes, states=states, prior_last_bin=prior)
    return records, nxt
