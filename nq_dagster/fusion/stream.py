"""Incremental streaming state: what one source needs to turn its next tick into features, in O(1) per tick.

The batch graph computes every feature of a step from bounded look-back windows: the encoder inputs from
rolling windows of the values (`feature_window` and 10 x `feature_window` steps), the reservoir from its
previous state, and the eight pattern detectors from the step's spikes, the last `DETECTOR_WINDOW` reservoir
frames and each neuron's last spike. `StreamState` keeps exactly those windows (and running per-step
aggregates), so a tick updates them and computes its features without reading the history again. The work per
tick is bounded by the window sizes, never by the length of the history.

`features_for_ticks` advances a batch of sources (`TickBatch`) by one tick each, stage by stage: the encoder
step (`encoder_steps`, then the spike encoder), the reservoir step (batched or source by source), the
detectors (each the streaming twin of its batch detector in neuromorphic/patterns.py) and the analog
reservoir; it returns new states and leaves the given ones untouched, so a failed call changes nothing. A
stream advanced tick by tick equals the batch graph's computation over the same history to float tolerance
(tests/test_predictor.py, tests/test_walkforward.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from nq_dagster.config import PipelineConfig
from nq_dagster.neuromorphic.encoders import change_windows, encode
from nq_dagster.neuromorphic.patterns import (
    DETECTOR_DTYPE,
    DETECTOR_WINDOW,
    NO_SPIKE,
    ORDER,
    PATTERN_NAMES,
    as_detector_activity,
    entropy_step,
    isi_aggregates,
    isi_by_step,
    isi_step,
    lag_dots,
    last_spike_bins,
    ordinal_codes,
    spike_step,
    window_grams,
    window_strengths,
)
from nq_dagster.neuromorphic.reservoir import BatchedReservoirs, Reservoir, ReservoirState
from nq_dagster.neuromorphic.stages import INPUT_NAMES, SPIKE_STAT_NAMES, analog_drive, analog_inputs

CANDIDATES = INPUT_NAMES + PATTERN_NAMES + SPIKE_STAT_NAMES  # the candidate fusion features, in this order
N_LAGS = 56  # recent one-step changes every model sees (one season back on hourly, half-hourly, weekly data)
N_CODES = DETECTOR_WINDOW - ORDER + 1  # ordinal patterns in one permutation-entropy window
_TRIU = np.triu_indices(DETECTOR_WINDOW - 1)


def pack_gram(R: np.ndarray) -> np.ndarray:
    """The upper triangles of symmetric (..., k, k) matrices, k = DETECTOR_WINDOW - 1: (..., k (k+1) / 2)."""
    return R[..., _TRIU[0], _TRIU[1]]


def unpack_gram(packed: np.ndarray) -> np.ndarray:
    k = DETECTOR_WINDOW - 1
    R = np.empty(packed.shape[:-1] + (k, k))
    R[..., _TRIU[0], _TRIU[1]] = packed
    R[..., _TRIU[1], _TRIU[0]] = packed
    return R


@dataclass
class StreamState:
    """One source's streaming state after row `n_rows - 1` (all windows chronological, oldest first)."""

    n_rows: int  # rows seen; the next tick is row n_rows (its absolute encoder step)
    last_ts: int  # timestamp of the last row, ns since the epoch (UTC)
    values: np.ndarray  # last feature_window - 1 values (the level window of the next tick)
    changes: np.ndarray  # last 10 x feature_window - 1 one-step changes (the first row's change is 0)
    change_sd: np.ndarray  # last 10 x feature_window - 1 clipped change stds (the volatility median's window)
    reservoir: ReservoirState  # after the last row (batch 1, CPU)
    frames: np.ndarray  # (DETECTOR_WINDOW - 1, size) float16: the last reservoir frames, detector precision
    last_spike: np.ndarray  # (neurons,) absolute bin of each neuron's last spike, or NO_SPIKE
    isi: np.ndarray  # (DETECTOR_WINDOW - 1, 4): per step, the ISIs ending there (`patterns.isi_aggregates`)
    codes: np.ndarray  # (N_CODES - 1,) ordinal-pattern codes of the population mean
    last_features: np.ndarray  # the candidate features of the last row (CANDIDATES order)
    analog: ReservoirState | None = None  # the analog reservoir after the last row (stages.analog_states)
    analog_scaling: np.ndarray | None = None  # (mean, std, change std) of the source's first rows
    # the analog inputs of the last row (`analog_block` adds the states; a state saved by an earlier version
    # holds the whole block here)
    last_analog: np.ndarray | None = None
    season: int = 0  # the season m of the seasonal design column (0: none detected)
    season_ring: np.ndarray | None = None  # the last m - horizon + 1 values (the seasonal column's look-back)
    last_frame: np.ndarray | None = None  # (size,) float32: the last reservoir frame at full precision
    # the stored frames' Gram matrix, its upper triangle packed (`pack_gram`); None: computed from `frames` at
    # the next tick (a state saved before it was kept)
    gram: np.ndarray | None = None

    def analog_block(self) -> np.ndarray | None:
        """The analog design block of the last row: the analog reservoir's state (`analog`, the state after
        that row) and the row's two analog inputs, as the batch graph's design row holds it."""
        if self.last_analog is None or self.analog is None:
            return None
        x = self.analog.x.numpy().astype(float).ravel()
        return self.last_analog if len(self.last_analog) > len(x) else np.concatenate([x, self.last_analog])

    def nbytes(self) -> int:
        """Bytes of state this source holds (arrays and the reservoir's tensors; two integers)."""
        return sum(self.breakdown().values()) + 16

    def breakdown(self) -> dict[str, int]:
        """Bytes per part of the state."""
        out = {
            f.name: int(getattr(self, f.name).nbytes)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        }
        for name in ("reservoir", "analog"):
            r = getattr(self, name)
            tensors = (r.x, r.v, r.z, r.refr) if r is not None else ()
            out[name] = int(sum(t.numel() * t.element_size() for t in tensors if t is not None))
        return out


def from_history(
    values: np.ndarray,
    timestamps: np.ndarray,
    spikes: np.ndarray,
    states: np.ndarray,
    final: ReservoirState,
    features: np.ndarray,
    feature_window: int,
    analog: dict | None = None,
    season: int = 0,
    horizon: int = 1,
) -> StreamState:
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
    isi, end_step = isi_by_step(spikes[T - k :], np.where(prior == NO_SPIKE, NO_SPIKE, prior - (T - k) * Wb))
    agg = isi_aggregates(isi, end_step, k)
    pop = as_detector_activity(states[-(N_CODES + ORDER - 2) :]).mean(axis=1)
    codes = ordinal_codes(np.lib.stride_tricks.sliding_window_view(pop, ORDER))
    ts = pd.to_datetime(pd.Series([np.asarray(timestamps)[-1]]), utc=True).iloc[0]
    return StreamState(
        n_rows=T,
        last_ts=int(ts.value),
        values=v[-(w - 1) :].copy(),
        changes=dx.to_numpy()[-(long - 1) :].copy(),
        change_sd=sd.to_numpy()[-(long - 1) :].copy(),
        reservoir=_cpu(final),
        frames=np.asarray(states[-(DETECTOR_WINDOW - 1) :], dtype=DETECTOR_DTYPE).copy(),
        gram=_stored_gram(as_detector_activity(states[-(DETECTOR_WINDOW - 1) :])),
        last_frame=np.asarray(states[-1], dtype=np.float32).copy(),
        last_spike=last_spike_bins(spikes),
        isi=agg[1:].copy(),
        codes=codes[-(N_CODES - 1) :].astype(np.int16),
        last_features=np.asarray(features, dtype=float).copy(),
        analog=_cpu(analog["final"]) if analog else None,
        analog_scaling=np.asarray(analog["scaling"], float).copy() if analog else None,
        last_analog=np.asarray(analog["last"], float)[-2:].copy() if analog else None,
        season=int(season),
        season_ring=v[-(season - horizon + 1) :].copy() if season > horizon else None,
    )


def _stored_gram(frames: np.ndarray) -> np.ndarray:
    """The packed Gram matrix of the DETECTOR_WINDOW - 1 stored frames (float64 of the detector precision), by
    the lagged products the batch detector gathers its matrices from."""
    k = DETECTOR_WINDOW - 1
    return pack_gram(window_grams(lag_dots(frames, k), np.array([k - 1]), k)[0])


def seasonal_column(values: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """x_{t+h-m} - x_t (the seasonal naive forecast of the change); 0 where t + h - m < 0 or no season."""
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
    return col, np.append(ring, x)[-(back + 1) :]


def _cpu(st: ReservoirState) -> ReservoirState:
    """A copy of a reservoir state on the CPU (a state keeps no tensor of a device or of the batch graph)."""
    return ReservoirState(
        *[t.detach().to("cpu").clone() if t is not None else None for t in (st.x, st.v, st.z, st.refr)]
    )


class FrameCache:
    """The float64 values of a state's stored detector frames and their population means, for the predictor to
    keep between ticks beside the state they belong to (`state`): a tick then converts only its new frame
    instead of the whole window (a ring: the oldest frame's slot takes the new one). Not part of the state; a
    cache of another state (a rolled-back tick, a state loaded again) is rebuilt from the state's frames."""

    __slots__ = ("means", "pos", "ring", "state")

    def __init__(self, st: StreamState):
        # (k, size), chronological from slot `pos` on; the frames' values as the detectors read them
        self.ring = np.asarray(st.frames, dtype=DETECTOR_DTYPE).astype(np.float64)
        self.means = self.ring.mean(axis=1)
        self.pos = 0
        self.state = st

    def chronological(self) -> np.ndarray:
        return np.roll(self.ring, -self.pos, axis=0)

    def push(self, frame: np.ndarray, mean: float, state: StreamState) -> None:
        """Move on to `state`, whose newest frame is `frame` (float64, population mean `mean`): it takes the
        oldest frame's slot."""
        self.ring[self.pos] = frame
        self.means[self.pos] = mean
        self.pos = (self.pos + 1) % len(self.ring)
        self.state = state


@dataclass
class BatchedStep:
    """A chunk's reservoirs stepped at once on CPU (`BatchedReservoirs`, built for its loaded sources): the
    spiking and the analog ones, and the positions of the tick's sources among them."""

    spiking: BatchedReservoirs
    analog: BatchedReservoirs
    positions: np.ndarray


@dataclass
class TickBatch:
    """One tick of S sources of one config (row s of each array, item s of each list)."""

    states: list[StreamState]  # the sources' states before the tick (left untouched)
    values: np.ndarray  # (S,) the new values
    timestamps: np.ndarray  # (S,) their times, ns since the epoch
    cfg: PipelineConfig
    seeds: np.ndarray  # (S,) the sources' encoder seeds (`stages.source_seed`)
    reservoirs: list[Reservoir]  # the sources' spiking reservoirs
    analog: list[Reservoir] | None = None  # their analog reservoirs (None: no analog block)
    batched: BatchedStep | None = None  # None: the reservoirs step one by one
    caches: list[FrameCache | None] | None = None  # the sources' frame caches from their previous tick


@dataclass
class TickFeatures:
    """What one batched tick produced, per source (row s of each array)."""

    band_sd: np.ndarray  # (S,) std of the last feature_window changes (the hold band's scale)
    lags: np.ndarray  # (S, N_LAGS + 2): last one-step changes (newest first), the value, the seasonal change
    frames: np.ndarray  # (S, size) reservoir states
    candidates: np.ndarray  # (S, len(CANDIDATES))
    states: list[StreamState]  # the states after the tick
    analog: np.ndarray | None = None  # (S, ANALOG_SIZE + 2) the analog design blocks (None: no analog state)
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
        change_sd = np.concatenate([np.stack([states[i].change_sd for i in idx]), sd[:, None]], axis=1)[
            :, -long:
        ]
        med = np.median(change_sd, axis=1)
        z = np.column_stack([dx / sd, (xs - values.mean(axis=1)) / std, np.log(sd / med)])
        inputs[idx] = (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32).astype(float)
        band_sd[idx] = raw_sd
        k = min(N_LAGS, changes.shape[1])
        lags[idx, :k] = changes[:, ::-1][:, :k]
        lags[idx, N_LAGS] = xs
        for j, i in enumerate(idx):  # the next tick's windows add one value each
            vals[i] = values[j, -(w - 1) :].copy()
            chs[i], sds[i] = changes[j, -(long - 1) :].copy(), change_sd[j, -(long - 1) :].copy()
    return EncoderStep(inputs, band_sd, lags, vals, chs, sds)


def _spikes(batch: TickBatch, inputs: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The encoder's spikes of the tick, (S, W, N) bool: each source keyed by its seed and absolute step, as
    the batch graph encodes that step."""
    cfg = batch.cfg
    return (
        encode(
            inputs[:, None, :],
            cfg.encoding,
            cfg.neuron_count,
            cfg.window_bins,
            cfg.bin_ms,
            cfg.min_rate_hz,
            cfg.max_rate_hz,
            seed=batch.seeds,
            device=batch.reservoirs[0].device,
            step_offset=steps,
        )[:, 0]
        .cpu()
        .numpy()
    )


def _row_states(x: np.ndarray) -> list[ReservoirState]:
    """One state per row of a batch's (S, size) float32 states, each its own copy (a view would keep the
    batch's whole array alive as long as any of its sources stays unticked)."""
    return [ReservoirState(torch.from_numpy(x[s : s + 1].copy())) for s in range(len(x))]


def _step_reservoirs(
    reservoirs: list[Reservoir],
    states: list[ReservoirState],
    u: np.ndarray,
    batched: BatchedReservoirs | None,
    positions: np.ndarray | None,
    sparse_input: bool = True,
    gather_inputs: bool = False,
) -> tuple[np.ndarray, list[ReservoirState]]:
    """One step of each source's reservoir on its inputs u (S, n_inputs): the new states as float32 rows
    (S, size) and as CPU states. `batched`: all at once (`BatchedReservoirs.step` at `positions`); else one by
    one, in numpy where `Reservoir.step_numpy` applies, in torch on the reservoir's device where not."""
    if batched is not None:
        x = batched.step(
            positions,
            torch.as_tensor(u, dtype=torch.float32),
            torch.cat([st.x for st in states]),
            sparse_input=sparse_input,
        ).numpy()
        return x, _row_states(x)
    frames, out = [], []
    for s, (st, res) in enumerate(zip(states, reservoirs, strict=True)):
        x = res.step_numpy(u[s : s + 1].astype(np.float32), st.x.numpy())
        if x is not None:
            frames.append(x[0])
            out.append(ReservoirState(torch.from_numpy(x)))
            continue
        y, rs = res.step(
            torch.as_tensor(u[s : s + 1], dtype=res.dtype).to(res.device),
            st.to(res.device),
            gather_inputs=gather_inputs,
        )
        frames.append(y[0].cpu().numpy().astype(np.float32))
        out.append(rs.to("cpu"))
    return np.stack(frames), out


def _frame_window(
    states: list[StreamState], caches: list[FrameCache | None], new16: np.ndarray, new64: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The raw Gram matrices (S, k, k) and population means (S, k) of each source's last k = DETECTOR_WINDOW
    frames, the new one included, and the stored frames after the tick. The stored frames' Gram matrix is kept
    in the state; the new frame adds one row of dot products against the stored frames' float64 values, which
    each source's FrameCache keeps between ticks (a missing or stale cache is rebuilt in `caches`)."""
    S = len(states)
    K = states[0].frames.shape[0] + 1
    R = np.empty((S, K, K))
    m = np.empty((S, K))  # chronological
    chrono = np.arange(K - 1)
    stored, new_frames = [], []
    for s, st in enumerate(states):
        c = caches[s]
        if c is None or c.state is not st:
            c = caches[s] = FrameCache(st)
        order = (c.pos + chrono) % (K - 1)  # ring slot of each stored frame, oldest first
        R[s, -1, :-1] = (c.ring @ new64[s])[order]
        m[s, :-1] = c.means[order]
        stored.append(st.gram if st.gram is not None else _stored_gram(c.chronological()))
        new_frames.append(np.concatenate([np.asarray(st.frames[1:], dtype=DETECTOR_DTYPE), new16[s : s + 1]]))
    m[:, -1] = new64.mean(axis=1)
    R[:, -1, -1] = np.einsum("sm,sm->s", new64, new64)
    R[:, :-1, -1] = R[:, -1, :-1]
    R[:, :-1, :-1] = unpack_gram(np.stack(stored))
    return R, m, new_frames


def _analog_step(batch: TickBatch, x: np.ndarray) -> tuple[np.ndarray | None, list[ReservoirState | None]]:
    """The analog reservoir driven by the value and its change themselves: the design blocks (S, ANALOG_SIZE +
    2) and the new analog states, or (None, Nones) for states without an analog reservoir."""
    states = batch.states
    if batch.analog is None or any(st.analog is None for st in states):
        return None, [None] * len(states)
    prev = [float(st.values[-1]) if len(st.values) else float(x[s]) for s, st in enumerate(states)]
    u = np.concatenate(
        [analog_inputs([x[s]], [x[s] - prev[s]], st.analog_scaling) for s, st in enumerate(states)]
    )  # (S, 2)
    b = batch.batched
    frames, new = _step_reservoirs(
        batch.analog,
        [st.analog for st in states],
        analog_drive(u),
        b.analog if b is not None else None,
        b.positions if b is not None else None,
        sparse_input=False,
    )
    return np.concatenate([frames.astype(float), u], axis=1), new


def features_for_ticks(batch: TickBatch) -> TickFeatures:
    """Advance S sources by one tick each. Returns the features and the new states; `batch.states` are not
    modified. `batch.caches` are updated in place and returned for the new states."""
    states, cfg = batch.states, batch.cfg
    S = len(states)
    x = np.asarray(batch.values, dtype=float)
    enc = encoder_steps(states, batch.values, cfg.feature_window)
    steps = np.array([st.n_rows for st in states], dtype=np.int64)
    n = steps + 1  # rows seen after this tick
    spikes = _spikes(batch, enc.inputs, steps)
    sp = spike_step(spikes)
    b = batch.batched
    frames, res_states = _step_reservoirs(
        batch.reservoirs,
        [st.reservoir for st in states],
        (sp.counts / spikes.shape[1]).astype(np.float32),
        b.spiking if b is not None else None,
        b.positions if b is not None else None,
        gather_inputs=S > 1,
    )
    new16 = frames.astype(DETECTOR_DTYPE)  # the new frame as the detectors read it
    new64 = new16.astype(np.float64)
    caches = list(batch.caches) if batch.caches is not None else [None] * S
    R, means, new_frames = _frame_window(states, caches, new16, new64)
    stand, emerg = window_strengths(R, means, new64.shape[1], n)
    chaos, codes = entropy_step(np.stack([st.codes for st in states]), means, n)
    rhythm, burst, isi, last_spike = isi_step(
        sp,
        steps,
        spikes.shape[1],
        np.stack([st.last_spike for st in states]),
        np.stack([st.isi for st in states]),
    )
    # in PATTERN_NAMES order
    pats = np.column_stack([sp.sync, sp.trav, stand, emerg, rhythm, sp.spars, burst, chaos])
    cands = np.column_stack([enc.inputs, pats, sp.spike_rate, sp.active_fraction])
    blocks, an_states = _analog_step(batch, x)
    seas, rings = np.zeros(S), [None] * S
    for s, st in enumerate(states):
        seas[s], rings[s] = _seasonal_step(st, float(x[s]), cfg.horizon)
    gram = pack_gram(R[:, 1:, 1:])
    new_states = [
        StreamState(
            n_rows=int(n[s]),
            last_ts=int(batch.timestamps[s]),
            values=enc.values[s],
            changes=enc.changes[s],
            change_sd=enc.change_sd[s],
            reservoir=res_states[s],
            frames=new_frames[s],
            last_frame=frames[s].copy(),
            gram=gram[s].copy(),
            last_spike=last_spike[s].copy(),
            isi=isi[s, 1:].copy(),
            codes=codes[s, 1:].astype(np.int16),
            last_features=cands[s].copy(),
            analog=an_states[s],
            analog_scaling=st.analog_scaling,
            last_analog=blocks[s, -2:].copy() if blocks is not None else None,
            season=st.season,
            season_ring=rings[s],
        )
        for s, st in enumerate(states)
    ]
    for s, c in enumerate(caches):
        c.push(new64[s], means[s, -1], new_states[s])
    return TickFeatures(
        band_sd=enc.band_sd,
        lags=np.column_stack([enc.lags, seas]),
        frames=frames,
        candidates=cands,
        states=new_states,
        analog=blocks,
        caches=caches,
    )


def latest_design(
    st: StreamState, feature_window: int, horizon: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """The design pieces of the last row already seen: (reservoir frame, lags, band std)."""
    lags = st.changes[::-1][:N_LAGS]
    level = st.values[-1] if len(st.values) else 0.0
    seas = 0.0
    if st.season and st.season_ring is not None and len(st.season_ring) > st.season - horizon:
        ring = st.season_ring
        seas = float(ring[len(ring) - 1 - (st.season - horizon)] - ring[-1])
    frame = st.last_frame if st.last_frame is not None else st.frames[-1].astype(np.float32)
    band_sd = float(_std_rows(st.changes[None, -feature_window:])[0])
    return frame, np.append(np.pad(lags, (0, N_LAGS - len(lags))), [level, seas]), band_sd
