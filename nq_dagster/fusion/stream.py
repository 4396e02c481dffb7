"""Incremental streaming state: what one source needs to turn its next tick into features, in O(1) per tick.

The batch graph computes every feature of a step from bounded look-back windows: the encoder inputs from
rolling windows of the values (`feature_window` and 10 x `feature_window` steps), the reservoir from its
previous state, and the eight pattern detectors from the step's spikes, the last `DETECTOR_WINDOW` reservoir
frames and each neuron's last spike. `StreamState` keeps exactly those windows (and running per-step
aggregates), so a tick updates them and computes its features without reading the history again. The work per
tick is bounded by the window sizes, never by the length of the history.

`features_for_ticks` advances a batch of sources by one tick each (the encoder and the reservoir run batched,
the detectors vectorised over sources); it returns new states and leaves the given ones untouched, so a failed
call changes nothing. A stream advanced tick by tick equals the batch graph's computation over the same history
to float tolerance (tests/test_stream_state.py, tests/test_predictor.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nq_dagster.neuromorphic.encoders import change_windows, encode
from nq_dagster.neuromorphic.patterns import (
    BURST_ISI,
    DETECTOR_DTYPE,
    DETECTOR_WINDOW,
    NO_SPIKE,
    ORDER,
    PATTERN_NAMES,
    _isi_by_step,
    as_detector_activity,
    entropy_of_counts,
    lag_dots,
    last_spike_bins,
    ordinal_codes,
    sparseness_of_counts,
    standing_wave_gram,
    synchrony_of_bins,
    travelling_from_moments,
    window_grams,
)
from nq_dagster.neuromorphic.reservoir import Reservoir, ReservoirState
from nq_dagster.neuromorphic.stages import (
    INPUT_NAMES,
    SPIKE_STAT_NAMES,
    analog_inputs,
)
from nq_dagster.store.artifacts import register

CANDIDATES = INPUT_NAMES + PATTERN_NAMES + SPIKE_STAT_NAMES  # the candidate fusion features, in the features' order
N_LAGS = 16  # recent one-step changes every model sees, and then the level (the AR part of the design)
N_CODES = DETECTOR_WINDOW - ORDER + 1  # ordinal patterns in one permutation-entropy window
_TRIU = np.triu_indices(DETECTOR_WINDOW - 1)


def pack_gram(R: np.ndarray) -> np.ndarray:
    """The upper triangles of symmetric (..., k, k) matrices, k = DETECTOR_WINDOW - 1: (..., k (k + 1) / 2)."""
    return R[..., _TRIU[0], _TRIU[1]]


def unpack_gram(packed: np.ndarray) -> np.ndarray:
    k = DETECTOR_WINDOW - 1
    R = np.empty(packed.shape[:-1] + (k, k))
    R[..., _TRIU[0], _TRIU[1]] = packed
    R[..., _TRIU[1], _TRIU[0]] = packed
    return R


@register
@dataclass
class StreamState:
    """One source's streaming state after row `n_rows - 1` (all windows chronological, oldest first)."""

    n_rows: int  # rows seen; the next tick is row n_rows (its absolute encoder step)
    last_ts: int  # timestamp of the last row, ns since the epoch (UTC)
    values: np.ndarray  # last feature_window - 1 values (the level window of the next tick)
    changes: np.ndarray  # last 10 x feature_window - 1 one-step changes (the first row's change is 0)
    change_sd: np.ndarray  # last 10 x feature_window - 1 clipped change stds (the volatility median's window)
    reservoir: ReservoirState  # after the last row (batch 1, CPU)
    frames: np.ndarray  # (DETECTOR_WINDOW - 1, size) float16: the last reservoir frames as the detectors read them
    last_spike: np.ndarray  # (neurons,) absolute bin of each neuron's last spike, or NO_SPIKE
    isi: np.ndarray  # (DETECTOR_WINDOW - 1, 4): per step, count / sum / sum of squares / bursts of ISIs ending there
    codes: np.ndarray  # (N_CODES - 1,) ordinal-pattern codes of the population mean
    last_features: np.ndarray  # the candidate features of the last row (CANDIDATES order)
    analog: ReservoirState | None = None  # the analog reservoir after the last row (stages.analog_states)
    analog_scaling: np.ndarray | None = None  # (mean, std, change std) of the source's first rows
    last_analog: np.ndarray | None = None  # the analog inputs of the last row (`analog_block` adds the states; a
    # state saved by an earlier version holds the whole block here)
    season: int = 0  # the season m of the seasonal design column (0: none detected)
    season_ring: np.ndarray | None = None  # the last m - horizon + 1 values (the seasonal column's look-back)
    last_frame: np.ndarray | None = None  # (size,) float32: the last reservoir frame at full precision (readout)
    gram: np.ndarray | None = None  # the stored frames' Gram matrix, its upper triangle packed (`pack_gram`); None:
    # computed from `frames` at the next tick (a state saved before it was kept)

    def analog_block(self) -> np.ndarray | None:
        """The analog design block of the last row: the analog reservoir's state (`analog`, the state after that
        row) and the row's two analog inputs, as the batch graph's design row holds it."""
        if self.last_analog is None or self.analog is None:
            return None
        x = self.analog.x.numpy().astype(float).ravel()
        return self.last_analog if len(self.last_analog) > len(x) else np.concatenate([x, self.last_analog])

    def nbytes(self) -> int:
        """Bytes of state this source holds (arrays and the reservoir's tensors; two integers)."""
        return sum(self.breakdown().values()) + 16

    def breakdown(self) -> dict[str, int]:
        """Bytes per part of the state."""
        out = {f.name: int(getattr(self, f.name).nbytes) for f in dataclasses.fields(self)
               if isinstance(getattr(self, f.name), np.ndarray)}
        for name in ("reservoir", "analog"):
            r = getattr(self, name)
            out[name] = int(sum(t.numel() * t.element_size() for t in (r.x, r.v, r.z, r.refr) if t is not None)
                            ) if r is not None else 0
        return out


def from_history(values: np.ndarray, timestamps: np.ndarray, spikes: np.ndarray, states: np.ndarray,
                 final: ReservoirState, features: np.ndarray, feature_window: int, analog: dict | None = None,
                 season: int = 0, horizon: int = 1) -> StreamState:
    """The state after a whole history that the batch graph computed: values (T,), timestamps (T,), spikes
    (T, W, N) bool, reservoir states (T, size), the reservoir's final state, and the candidate features of the
    last row. Windows are cut from the same pandas computations the batch encoder uses."""
    v = np.asarray(values, dtype=float)
    T = len(v)
    if T < DETECTOR_WINDOW:
        raise ValueError(f"a stream needs at least {DETECTOR_WINDOW} rows of history; got {T}")
    w, long = feature_window, 10 * feature_window
    dx, sd, _ = change_windows(v, w)
    Wb = spikes.shape[1]
    k = DETECTOR_WINDOW
    prior = last_spike_bins(spikes[: T - k])
    isi, end_step = _isi_by_step(spikes[T - k:], np.where(prior == NO_SPIKE, NO_SPIKE, prior - (T - k) * Wb))
    agg = np.column_stack([np.bincount(end_step, minlength=k), np.bincount(end_step, weights=isi, minlength=k),
                           np.bincount(end_step, weights=isi**2, minlength=k),
                           np.bincount(end_step, weights=(isi <= BURST_ISI).astype(float), minlength=k)]).astype(float)
    pop = as_detector_activity(states[-(N_CODES + ORDER - 2):]).mean(axis=1)
    codes = ordinal_codes(np.lib.stride_tricks.sliding_window_view(pop, ORDER))
    ts = pd.to_datetime(pd.Series([np.asarray(timestamps)[-1]]), utc=True).iloc[0]
    return StreamState(
        n_rows=T, last_ts=int(ts.value), values=v[-(w - 1):].copy(), changes=dx.to_numpy()[-(long - 1):].copy(),
        change_sd=sd.to_numpy()[-(long - 1):].copy(),
        reservoir=ReservoirState(*[t.detach().to("cpu").clone() if t is not None else None
                                   for t in (final.x, final.v, final.z, final.refr)]),
        frames=np.asarray(states[-(DETECTOR_WINDOW - 1):], dtype=DETECTOR_DTYPE).copy(),
        gram=_stored_gram(as_detector_activity(states[-(DETECTOR_WINDOW - 1):])),
        last_frame=np.asarray(states[-1], dtype=np.float32).copy(),
        last_spike=last_spike_bins(spikes), isi=agg[1:].copy(), codes=codes[-(N_CODES - 1):].astype(np.int16),
        last_features=np.asarray(features, dtype=float).copy(),
        analog=_cpu(analog["final"]) if analog else None,
        analog_scaling=np.asarray(analog["scaling"], float).copy() if analog else None,
        last_analog=np.asarray(analog["last"], float)[-2:].copy() if analog else None,
        season=int(season), season_ring=v[-(season - horizon + 1):].copy() if season > horizon else None)


def _stored_gram(frames: np.ndarray) -> np.ndarray:
    """The packed Gram matrix of the DETECTOR_WINDOW - 1 stored frames (float64 of the detector precision), by the
    lagged products the batch detector gathers its matrices from."""
    k = DETECTOR_WINDOW - 1
    return pack_gram(window_grams(lag_dots(frames, k), np.array([k - 1]), k)[0])


def seasonal_column(values: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """x_{t+h-m} - x_t (the seasonal naive forecast of the change), 0 where t + h - m < 0 or without a season."""
    v = np.asarray(values, dtype=float)
    out = np.zeros(len(v))
    if season > horizon:
        t = np.arange(season - horizon, len(v))
        out[t] = v[t + horizon - season] - v[t]
    return out


def _seasonal_step(st: StreamState, x: float, horizon: int) -> tuple[float, np.ndarray | None]:
    """The seasonal column of a new value x and the ring after it."""
    if not st.season or st.season_ring is None:
        return 0.0, None
    back = st.season - horizon  # x_{t-back} is the value one season before the forecast target
    ring = st.season_ring
    col = float(ring[len(ring) - back] - x) if len(ring) >= back else 0.0
    return col, np.append(ring, x)[-(back + 1):]


def _cpu(st: ReservoirState) -> ReservoirState:
    return ReservoirState(*[t.detach().to("cpu").clone() if t is not None else None for t in (st.x, st.v, st.z, st.refr)])


class FrameCache:
    """The float64 values of a state's stored detector frames and their population means, for the predictor to keep
    between ticks beside the state they belong to (`state`): a tick then converts only its new frame instead of
    the whole window (a ring: the oldest frame's slot takes the new one). Not part of the state; a cache of
    another state (a rolled-back tick, a state loaded again) is rebuilt from the state's frames."""

    __slots__ = ("means", "pos", "ring", "state")

    def __init__(self, st: StreamState):
        # (k, size), chronological from slot `pos` on; the frames' values as the detectors read them
        self.ring = np.asarray(st.frames, dtype=DETECTOR_DTYPE).astype(np.float64)
        self.means = self.ring.mean(axis=1)
        self.pos = 0
        self.state = st

    def chronological(self) -> np.ndarray:
        return np.roll(self.ring, -self.pos, axis=0)


@dataclass
class TickFeatures:
    """What one batched tick produced, per source (row s of each array)."""

    band_sd: np.ndarray  # (S,) std of the last feature_window changes (the hold band's scale)
    lags: np.ndarray  # (S, N_LAGS + 2) the last one-step changes, newest first, the value, the seasonal change
    frames: np.ndarray  # (S, size) reservoir states
    candidates: np.ndarray  # (S, len(CANDIDATES))
    states: list[StreamState]  # the states after the tick
    analog: np.ndarray | None = None  # (S, ANALOG_SIZE + 2) the analog design blocks (None: states without one)
    caches: list[FrameCache] | None = None  # each source's frame cache, now belonging to its new state


@dataclass
class EncoderStep:
    """The encoder's part of a tick for S sources (row s each)."""

    inputs: np.ndarray  # (S, 3) encoder inputs, float32 precision (as the batch graph stores them)
    band_sd: np.ndarray  # (S,) std of the last feature_window changes (the hold band's scale)
    lags: np.ndarray  # (S, N_LAGS + 1) the last one-step changes, newest first, then the value itself
    values: list[np.ndarray]  # the windows to keep, per source
    changes: list[np.ndarray]
    change_sd: list[np.ndarray]


def _std_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise pandas rolling std (ddof 1; 0 below two values, as the batch's fillna(0))."""
    return a.std(axis=1, ddof=1) if a.shape[1] >= 2 else np.zeros(len(a))


def encoder_steps(states: list[StreamState], x: np.ndarray, feature_window: int) -> EncoderStep:
    """The encoder inputs of one new value per source from the states' windows, as `encoder_inputs` computes
    them; vectorised over sources whose windows have the same fill (all of them, once a source has seen
    10 x feature_window rows)."""
    w, long = feature_window, 10 * feature_window
    S = len(states)
    inputs, band_sd, lags = np.empty((S, 3)), np.empty(S), np.zeros((S, N_LAGS + 1))
    vals, chs, sds = [None] * S, [None] * S, [None] * S
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, st in enumerate(states):
        groups.setdefault((len(st.values), len(st.changes), len(st.change_sd)), []).append(i)
    for (nv, _, _), idx in groups.items():
        xs = np.asarray(x, dtype=float)[idx]
        prev = np.stack([states[i].values for i in idx])
        dx = xs - prev[:, -1] if nv else xs - xs
        changes = np.concatenate([np.stack([states[i].changes for i in idx]), dx[:, None]], axis=1)[:, -long:]
        values = np.concatenate([prev, xs[:, None]], axis=1)[:, -w:]
        raw_sd = _std_rows(changes[:, -w:])
        floor = np.maximum(_std_rows(changes) * 1e-3, 1e-12)
        sd = np.maximum(raw_sd, floor)
        std = np.maximum(_std_rows(values), floor)
        change_sd = np.concatenate([np.stack([states[i].change_sd for i in idx]), sd[:, None]], axis=1)[:, -long:]
        med = np.median(change_sd, axis=1)
        z = np.column_stack([dx / sd, (xs - values.mean(axis=1)) / std, np.log(sd / med)])
        inputs[idx] = (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32).astype(float)
        band_sd[idx] = raw_sd
        k = min(N_LAGS, changes.shape[1])
        lags[idx, :k] = changes[:, ::-1][:, :k]
        lags[idx, N_LAGS] = xs
        for j, i in enumerate(idx):  # the next tick's windows add one value each
            vals[i], chs[i], sds[i] = values[j, -(w - 1):].copy(), changes[j, -(long - 1):].copy(), change_sd[j, -(long - 1):].copy()
    return EncoderStep(inputs, band_sd, lags, vals, chs, sds)


@dataclass
class SpikeStep:
    """What the detectors read of one step's spikes per source, from its spike list (a few per cent of the
    (bin, neuron) slots fire): one pass to find the spikes, then counts and moments by bincount, instead of a
    pass over every slot per detector. Equal to `synchronous`, `travelling_wave`, `sparse`,
    `spike_statistics` and `reservoir_input` on the dense array (integer sums, the same formulas)."""

    src: np.ndarray  # the spikes sorted by (source, neuron, bin)
    neuron: np.ndarray
    bin: np.ndarray
    counts: np.ndarray  # (S, N) spikes per neuron
    sync: np.ndarray
    trav: np.ndarray
    spars: np.ndarray
    spike_rate: np.ndarray
    active_fraction: np.ndarray


def spike_step(spikes: np.ndarray) -> SpikeStep:
    S, W, N = spikes.shape
    flat = np.flatnonzero(np.ascontiguousarray(spikes.transpose(0, 2, 1)))  # sorted by source, neuron, bin
    src, rem = np.divmod(flat, N * W)
    neuron, b = np.divmod(rem, W)
    counts = np.bincount(src * N + neuron, minlength=S * N).reshape(S, N).astype(float)
    per_bin = np.bincount(src * W + b, minlength=S * W).reshape(S, W).astype(float)
    total = per_bin.sum(axis=1)
    bf, i_f = b.astype(float), neuron.astype(float)
    trav = travelling_from_moments(total, per_bin @ np.arange(W, dtype=float),
                                   per_bin @ (np.arange(W, dtype=float) ** 2), np.bincount(src, weights=i_f, minlength=S),
                                   np.bincount(src, weights=i_f * i_f, minlength=S),
                                   np.bincount(src, weights=bf * i_f, minlength=S))
    sync, spars = synchrony_of_bins(per_bin), sparseness_of_counts(counts)
    return SpikeStep(src, neuron, b, counts, sync, trav, spars, total / (N * W), (counts > 0).mean(axis=1))


def _row_states(x: np.ndarray) -> list[ReservoirState]:
    """One state per row of a batch's (S, size) float32 states, each its own copy (a view would keep the batch's
    whole array alive as long as any of its sources stays unticked)."""
    return [ReservoirState(torch.from_numpy(x[s:s + 1].copy())) for s in range(len(x))]


def features_for_ticks(states: list[StreamState], x: np.ndarray, ts: np.ndarray, cfg, seeds: np.ndarray,
                       reservoirs: list[Reservoir], analog: list[Reservoir] | None = None,
                       batched: tuple | None = None, caches: list[FrameCache | None] | None = None) -> TickFeatures:
    """Advance S sources by one tick each: values x (S,), timestamps ts (S,) ns. Returns the features and the
    new states; `states` are not modified. `batched` = (BatchedReservoirs of the spiking reservoirs, of the analog
    ones, the sources' positions in them) steps all reservoirs at once (many sources on CPU). `caches`: the
    sources' `FrameCache`s from the previous tick (updated in place and returned for the new states; one that
    does not belong to its state is rebuilt)."""
    S = len(states)
    enc = encoder_steps(states, x, cfg.feature_window)
    inputs = enc.inputs
    steps = np.array([st.n_rows for st in states], dtype=np.int64)
    device = reservoirs[0].device
    spikes_t = encode(inputs[:, None, :], cfg.encoding, cfg.neuron_count, cfg.window_bins, cfg.bin_ms,
                      cfg.min_rate_hz, cfg.max_rate_hz, seed=seeds, device=device, step_offset=steps)[:, 0]
    spikes = spikes_t.cpu().numpy()  # (S, W, N)
    sp = spike_step(spikes)
    u = (sp.counts / spikes.shape[1]).astype(np.float32)  # `reservoir_input`: (S, N)
    if batched is not None:
        x_new = batched[0].step(batched[2], torch.as_tensor(u), torch.cat([st.reservoir.x for st in states]))
        frames_new = x_new.numpy().astype(np.float32)
        res_states = _row_states(frames_new)
    else:
        frames_new, res_states = [], []
        for s, (st, res) in enumerate(zip(states, reservoirs, strict=True)):
            xs = res.step_numpy(u[s:s + 1], st.reservoir.x.numpy()) if device == "cpu" else None
            if xs is not None:
                frames_new.append(xs[0])
                res_states.append(ReservoirState(torch.from_numpy(xs)))
                continue
            out, rs = res.step(torch.as_tensor(u[s:s + 1]).to(device), st.reservoir.to(device), gather_inputs=S > 1)
            frames_new.append(out[0].cpu().numpy().astype(np.float32))
            res_states.append(rs.to("cpu"))
        frames_new = np.stack(frames_new)  # (S, size)
    new16 = frames_new.astype(DETECTOR_DTYPE)  # the new frame as the detectors read it
    new64 = new16.astype(np.float64)
    n = steps + 1  # rows seen after this tick

    # per-step detectors on the tick's spikes
    sync, trav, spars = sp.sync, sp.trav, sp.spars
    # standing wave and emergent on the last DETECTOR_WINDOW frames, from the window's Gram matrix: the stored
    # frames' part is kept in the state, the new frame adds one row of dot products (against the stored frames'
    # float64 values, which each source's FrameCache keeps between ticks), and the population means likewise
    K, M = states[0].frames.shape[0] + 1, new64.shape[1]
    R = np.empty((S, K, K))
    m = np.empty((S, K))  # the window's population means, chronological
    caches = list(caches) if caches is not None else [None] * S
    chrono = np.arange(K - 1)
    stored = []
    new_frames = []
    for s, st in enumerate(states):
        c = caches[s]
        if c is None or c.state is not st:
            c = caches[s] = FrameCache(st)
        order = (c.pos + chrono) % (K - 1)  # ring slot of each stored frame, oldest first
        R[s, -1, :-1] = (c.ring @ new64[s])[order]
        m[s, :-1] = c.means[order]
        stored.append(st.gram if st.gram is not None else _stored_gram(c.chronological()))
        new_frames.append(np.concatenate([np.asarray(st.frames[1:], dtype=DETECTOR_DTYPE), new16[s:s + 1]]))
    m[:, -1] = new64.mean(axis=1)
    R[:, -1, -1] = np.einsum("sm,sm->s", new64, new64)
    R[:, :-1, -1] = R[:, -1, :-1]
    R[:, :-1, :-1] = unpack_gram(np.stack(stored))
    stand = np.where(n > 3, standing_wave_gram(R), 0.0)
    k = float(DETECTOR_WINDOW)
    var_pop = (m**2).sum(axis=1) / k - (m.sum(axis=1) / k) ** 2
    # the units' mean variance over the window: (trace R / k - 1'R1 / k^2) / M
    var_units = (np.trace(R, axis1=1, axis2=2) / k - R.sum(axis=(1, 2)) / k**2) / M
    gram_new = pack_gram(R[:, 1:, 1:])
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(var_units > 1e-15, var_pop / var_units, 0.0)
    emerg = np.sqrt(np.clip(chi2, 0, 1))
    # permutation entropy of the population mean: the code of the newest triple joins the window
    new_codes = ordinal_codes(m[:, -ORDER:])
    codes = np.concatenate([np.stack([st.codes for st in states]).astype(np.int64), new_codes[:, None]], axis=1)
    n_codes = ORDER**ORDER
    counts = np.bincount((np.arange(S)[:, None] * n_codes + codes).ravel(), minlength=S * n_codes)
    counts = counts.reshape(S, n_codes).astype(float)
    chaos = np.where(n > DETECTOR_WINDOW // 2, entropy_of_counts(counts), 0.0)
    # inter-spike intervals of time-sorted spikes per neuron, across the step boundary
    W, N = spikes.shape[1], spikes.shape[2]
    src, neuron, b = sp.src, sp.neuron, sp.bin  # sorted by source, neuron, bin
    g = src * N + neuron
    t_abs = steps[src] * W + b
    last = np.stack([st.last_spike for st in states]).reshape(-1)
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    prev = np.where(first, last[g], np.concatenate([[0], t_abs[:-1]]))
    ok = prev != NO_SPIKE
    isi = (t_abs - prev)[ok].astype(float)
    si = src[ok]
    agg_new = np.column_stack([np.bincount(si, minlength=S), np.bincount(si, weights=isi, minlength=S),
                               np.bincount(si, weights=isi**2, minlength=S),
                               np.bincount(si, weights=(isi <= BURST_ISI).astype(float), minlength=S)]).astype(float)
    agg = np.concatenate([np.stack([st.isi for st in states]), agg_new[:, None]], axis=1)  # (S, 32, 4)
    c, r1, r2, rs = (agg[:, :, j].sum(axis=1) for j in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = r1 / c
        sd = np.sqrt(np.maximum(r2 / c - mean**2, 0))
        rhythm = np.where(c >= 3, np.clip(1 - sd / mean, 0, 1), 0.0)
        burst = np.clip(np.where(c >= 3, rs / c, 0.0), 0, 1)
    last_new = last.copy()
    is_last = np.ones(len(g), dtype=bool)
    is_last[:-1] = g[1:] != g[:-1]
    last_new[g[is_last]] = t_abs[is_last]
    last_new = last_new.reshape(S, N)

    pats = np.column_stack([sync, trav, stand, emerg, rhythm, spars, burst, chaos])  # PATTERN_NAMES order
    cands = np.column_stack([inputs, pats, sp.spike_rate, sp.active_fraction])
    # the analog reservoir: the value and its change themselves
    blocks, an_states = None, [None] * S
    if analog is not None and batched is not None and all(st.analog is not None for st in states):
        xs_all = np.asarray(x, dtype=float)
        prev_all = np.array([float(st.values[-1]) if len(st.values) else float(xs_all[s]) for s, st in enumerate(states)])
        u_an = np.concatenate([analog_inputs([xs_all[s]], [xs_all[s] - prev_all[s]], st.analog_scaling)
                               for s, st in enumerate(states)])  # (S, 2)
        an_new = batched[1].step(batched[2], torch.as_tensor(np.tanh(u_an / 3.0), dtype=torch.float32),
                                 torch.cat([st.analog.x for st in states]), sparse_input=False)
        an_states = _row_states(an_new.numpy())
        blocks = np.concatenate([an_new.numpy().astype(float), u_an], axis=1)
    elif analog is not None and all(st.analog is not None for st in states):
        blocks = []
        for s, (st, res) in enumerate(zip(states, analog, strict=True)):
            xs = float(np.asarray(x, dtype=float)[s])
            prev = float(st.values[-1]) if len(st.values) else xs
            u = analog_inputs([xs], [xs - prev], st.analog_scaling)
            a_np = res.step_numpy(np.tanh(u / 3.0).astype(np.float32), st.analog.x.numpy())
            if a_np is not None:
                an_states[s] = ReservoirState(torch.from_numpy(a_np))
                blocks.append(np.concatenate([a_np[0].astype(float), u[0]]))
                continue
            out, an_states[s] = res.step(torch.as_tensor(np.tanh(u / 3.0), dtype=res.dtype).to(res.device),
                                         st.analog.to(res.device))
            an_states[s] = an_states[s].to("cpu")
            blocks.append(np.concatenate([out[0].cpu().numpy().astype(float), u[0]]))
        blocks = np.stack(blocks)
    seas, rings = np.zeros(S), [None] * S
    for s, st in enumerate(states):
        seas[s], rings[s] = _seasonal_step(st, float(np.asarray(x, dtype=float)[s]), cfg.horizon)
    new_states = [
        StreamState(n_rows=int(n[s]), last_ts=int(ts[s]), values=enc.values[s], changes=enc.changes[s],
                    change_sd=enc.change_sd[s],
                    reservoir=res_states[s], frames=new_frames[s], last_frame=frames_new[s].copy(),
                    gram=gram_new[s].copy(),
                    last_spike=last_new[s].copy(),
                    isi=agg[s, 1:].copy(), codes=codes[s, 1:].astype(np.int16), last_features=cands[s].copy(),
                    analog=an_states[s], analog_scaling=states[s].analog_scaling,
                    last_analog=blocks[s, -2:].copy() if blocks is not None else None, season=states[s].season,
                    season_ring=rings[s])
        for s in range(S)]
    for s, c in enumerate(caches):  # each cache moves on to its new state: the oldest slot takes the new frame
        c.ring[c.pos] = new64[s]
        c.means[c.pos] = m[s, -1]
        c.pos = (c.pos + 1) % (K - 1)
        c.state = new_states[s]
    return TickFeatures(band_sd=enc.band_sd, lags=np.column_stack([enc.lags, seas]),
                        frames=frames_new, candidates=cands, states=new_states, analog=blocks, caches=caches)


def latest_design(st: StreamState, feature_window: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray, float]:
    """The design pieces of the last row already seen: (reservoir frame, lags, band std)."""
    lags = st.changes[::-1][:N_LAGS]
    level = st.values[-1] if len(st.values) else 0.0
    seas = 0.0
    if st.season and st.season_ring is not None and len(st.season_ring) > st.season - horizon:
        ring = st.season_ring
        seas = float(ring[len(ring) - 1 - (st.season - horizon)] - ring[-1])
    frame = st.last_frame if st.last_frame is not None else st.frames[-1].astype(np.float32)
    return frame, np.append(np.pad(lags, (0, N_LAGS - len(lags))), [level, seas]), float(_std_rows(st.changes[None, -feature_window:])[0])
