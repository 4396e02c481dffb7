"""The one prediction path: a model version plus each source's streaming state, advanced tick by tick.

`Predictor` holds, per source, the current `ModelVersion` (fitted coefficients, selected features, calibration
table, quantum results) and its `StreamState` (fusion/stream.py). `advance` moves one source on by one or many
ticks; `advance_many` moves many sources at once, batched through the encoder and the reservoir. Every call
returns one record per tick (fusion/record.py), validates all input before touching any state, and commits the
new states only when every record is built, so a failed call changes nothing.

The training assets build the state a stream continues from (`serving_state`), the streaming job, `nq predict`
and the prediction server call this class; nothing else turns a tick into a prediction. No dagster import.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from nq_dagster.config import PipelineConfig
from nq_dagster.fusion.record import build_records
from nq_dagster.fusion.stream import (
    CANDIDATES,
    N_LAGS,
    FrameCache,
    StreamState,
    features_for_ticks,
    latest_design,
)
from nq_dagster.fusion.walkforward import (
    CLASSES,
    RECAL_WINDOW,
    FusionModel,
    calibrate,
    direction_probabilities,
    recal_every,
)
from nq_dagster.neuromorphic.patterns import PATTERN_NAMES
from nq_dagster.neuromorphic.reservoir import BatchedReservoirs
from nq_dagster.neuromorphic.stages import build_analog_reservoir, build_reservoir, source_seed
from nq_dagster.store.artifacts import register

PATTERN_COLS = [CANDIDATES.index(p) for p in PATTERN_NAMES]  # columns of the candidate features
SPIKE_RATE_COL = CANDIDATES.index("spike_rate")
CONFIDENCE_EDGES = (1 / 3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0 + 1e-12)


def reliability_table(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Accuracy actually achieved by the walk-forward predictions in each confidence bin (realized rows only)."""
    out = []
    for lo, hi in zip(CONFIDENCE_EDGES[:-1], CONFIDENCE_EDGES[1:], strict=True):
        m = (confidence >= lo) & (confidence < hi)
        out.append({"confidence_bin": [round(lo, 4), round(min(hi, 1.0), 4)], "predictions": int(m.sum()),
                    "observed_accuracy": float(correct[m].mean()) if m.any() else None})
    return out


# 3: [spike reservoir | analog reservoir and inputs | selected features | 16 recent changes | level | seasonal
# change] (1 had no analog block and 5 changes, 2 no seasonal column); 4: the same design, probabilities mixed
# with the base rates (`walkforward.calibrate`): a model of another design is refused, never fed columns it was
# not fit on nor read with another probability rule; 5: the same design and rule, base candidates without the
# selected features, stages chosen by the one-standard-error rule (`walkforward.simplest_within_one_se`)
DESIGN_VERSION = 5


def design_matrix(states: np.ndarray, selected: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """The fused model's design: reservoir states, the selected candidate features, the recent changes."""
    return np.hstack([np.asarray(states, dtype=float), np.asarray(selected, dtype=float), np.asarray(lags, dtype=float)])


@register
@dataclass
class ModelVersion:
    """A trained model of one source, as streaming and serving use it."""

    source: str
    model_version: str
    config: dict  # the PipelineConfig it was trained with
    model: FusionModel
    selected: list[str]  # candidate features in the design, in order
    quantum: dict  # the feature-selection QUBO's results (the record's quantum_results)
    reliability: list[dict]  # realized walk-forward accuracy per confidence bin
    train_end_ns: int  # time of the last row whose target the model saw
    step_ms: float  # median spacing of the training rows (time_horizon_ms = horizon x step)
    fit_seconds: float  # wall time of the walk-forward fit that produced it
    trained_rows: int
    created_at: str
    design: int = 1  # the layout of the design matrix it was fit on (DESIGN_VERSION when trained by this code)

    @property
    def cfg(self) -> PipelineConfig:
        return PipelineConfig(**self.config)

    def selected_index(self) -> np.ndarray:
        return np.array([CANDIDATES.index(c) for c in self.selected], dtype=int)

    def calibration(self, confidence: float) -> dict:
        """The accuracy the model actually achieved, out of sample, at this confidence."""
        for b in self.reliability:
            if b["confidence_bin"][0] <= confidence <= b["confidence_bin"][1]:
                return {**b, "note": "walk-forward predictions of this source in this confidence bin, realized outcomes"}
        return {"note": "no realized walk-forward predictions to compare with"}


@register
@dataclass
class LiveCalibration:
    """The model's error scale as a stream recalibrates it from the outcomes it realizes, on training's grid: at
    row t = t0 + k x every (k >= 1) the scale is refitted (`walkforward.calibrate`) on the rows
    max(fit_end, t - h + 1 - window) .. t - h, exactly as `walk_forward_forecaster` does between refits, so a
    stream's confidences equal the training graph's over the same rows. Holds the last window + h rows'
    predicted change, hold band and value (24 bytes a row)."""

    t0: int  # the model's first predicted row (train_end + horizon)
    every: int
    window: int
    horizon: int
    fit_end: int
    first_row: int  # row of pred[0]
    pred: np.ndarray
    band: np.ndarray
    value: np.ndarray
    scale: float
    scale_per_band: float | None = None
    mix: float = 1.0  # as FusionModel's: the share of the error model against the base rate
    base_rate: np.ndarray | None = None

    def error_scale(self, band: float) -> float:
        return self.scale if self.scale_per_band is None else max(self.scale_per_band * band, 1e-12)

    def before(self, t: int, x_t: float) -> LiveCalibration:
        """The calibration for row t (whose value is x_t): recalibrated when t is on the grid."""
        if t <= self.t0 or (t - self.t0) % self.every or self.first_row + len(self.pred) != t:
            return self
        h = self.horizon
        last = t - h
        lo = max(self.fit_end, last + 1 - self.window, self.first_row)
        if last < lo:
            return self
        i = np.arange(lo, last + 1) - self.first_row
        values = np.append(self.value, x_t)
        chg = values[i + h] - values[i]
        band = self.band[i]
        y_dir = np.where(chg > band, 1, np.where(chg < -band, -1, 0))
        holder = FusionModel([], self.scale, 0, 0, [], self.scale_per_band)
        calibrate(holder, self.pred[i], chg, y_dir, band)
        return replace(self, scale=holder.scale, scale_per_band=holder.scale_per_band, mix=holder.mix,
                       base_rate=holder.base_rate)

    def after(self, pred: float, band: float, x: float) -> LiveCalibration:
        """Row t's prediction recorded (the next row is t + 1)."""
        keep = self.window + self.horizon
        cut = max(0, len(self.pred) + 1 - keep)
        new = copy.copy(self)  # (a tick per source: dataclasses.replace and np.append cost 19 us of it)
        new.first_row = self.first_row + cut
        new.pred, new.band, new.value = (_pushed(a, v, cut) for a, v in ((self.pred, pred), (self.band, band),
                                                                          (self.value, x)))
        return new


def _pushed(a: np.ndarray, v: float, cut: int) -> np.ndarray:
    """a with v appended and its first `cut` values dropped, as a new array."""
    out = np.empty(len(a) + 1 - cut)
    out[:-1] = a[cut:]
    out[-1] = v
    return out


def live_calibration(model: FusionModel, X: np.ndarray, targets: pd.DataFrame, values: np.ndarray, horizon: int,
                     refit_every: int) -> LiveCalibration:
    """The calibration state after training's last row, for the model `walk_forward` returned."""
    T = len(values)
    t0 = model.train_end + horizon
    window = min(model.train_end + 1 - model.fit_end, RECAL_WINDOW)
    lo = max(model.fit_end, T - window - horizon)
    rows = np.arange(lo, T)
    return LiveCalibration(t0, recal_every(refit_every), window, horizon, model.fit_end, lo,
                           model.predict_change(X[rows]), targets["band"].to_numpy()[rows].astype(float),
                           np.asarray(values, dtype=float)[rows], float(model.scale), model.scale_per_band,
                           float(model.mix), model.base_rate)


@register
@dataclass
class ServingState:
    """What a stream continues from: the model version and the source's state after its last row."""

    model: ModelVersion
    stream: StreamState
    calibration: LiveCalibration | None = None  # None: the model's own scale until the next training


_THREADPOOLS = None
# the share of a chunk's sources that must tick for their reservoirs to step batched (the block-diagonal product
# reads every source's weights); fewer step one by one (`Reservoir.step_numpy`). A server's batches of 17 of 34
# sources: 1,640 /s batched against 1,950 /s one by one; 64 of 64: 2,850 against 2,460; in the server at 32
# clients, with 3/4 instead of 1/2: 1,141-1,203 against 1,079-1,121 predictions/s (A/B, interleaved runs)
BATCH_SHARE = 0.75


_BLAS = threading.local()


@contextlib.contextmanager
def single_threaded_blas():
    """A context in which numpy's BLAS uses one thread (threadpoolctl, which scikit-learn already depends on).
    A long-lived caller (the server's worker thread) enters it once; calls inside it skip the ~0.5 ms of setting
    the limit again."""
    global _THREADPOOLS
    if getattr(_BLAS, "on", False):
        yield
        return
    from threadpoolctl import ThreadpoolController

    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    with _THREADPOOLS.limit(limits=1, user_api="blas"):
        _BLAS.on = True
        try:
            yield
        finally:
            _BLAS.on = False


def _to_ns(timestamps) -> np.ndarray:
    a = np.asarray(timestamps)
    if a.dtype.kind in "iu":  # already ns since the epoch
        return a.astype(np.int64)
    if a.dtype.kind == "M":
        return a.astype("datetime64[ns]").view(np.int64)
    return pd.to_datetime(pd.Series(a), utc=True).to_numpy("datetime64[ns]").view(np.int64)


@dataclass
class _Source:
    serving: ServingState
    reservoir: object
    seed: int
    cfg: PipelineConfig
    config_version: str
    sel: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    analog: object = None
    linear: tuple | None = None  # the model per design block, (w_frames, w_analog, w_candidates, w_lags, c)


def _linear_blocks(serving: ServingState, sel: np.ndarray) -> tuple:
    """The source's model as weights per block of the design row (`design_matrix`: the reservoir frame, the analog
    block, the selected candidate features, the lags) and a constant; the candidates' weights sit at their places
    among all CANDIDATES, so that a batch of sources with different selections is four row-wise dot products."""
    st = serving.stream
    F, A, L = len(st.last_frame), len(st.analog_block()), N_LAGS + 2
    w, c = serving.model.model.linear_form(F + A + len(sel) + L)
    w_cands = np.zeros(len(CANDIDATES))
    np.add.at(w_cands, sel, w[F + A:F + A + len(sel)])
    return w[:F], w[F:F + A], w_cands, w[F + A + len(sel):], c


class Predictor:
    """Sources' model versions and streaming states in memory; see the module docstring."""

    def __init__(self, device: str = "cpu", threads: int = 1):
        self.device = device
        # chunk threads for a many-source tick (`_chunks`). One by default: with the per-source work now mostly
        # short numpy calls under the GIL, two chunk threads on 2 cores were slower than one thread whose torch
        # products use both cores (64 sources: 2,430 against 2,660-2,840 predictions/s; a server's batches of
        # 17: 1,440 against 1,640-1,930 /s). NQ_PREDICT_THREADS overrides it.
        self.threads = threads
        self._sources: dict[str, _Source] = {}
        self._reservoirs: dict[tuple[str, str], object] = {}
        self._analog: dict[tuple[str, str], object] = {}
        self._batched: dict[tuple[str, int], tuple] = {}  # (config version, chunk) -> (positions, spiking, analog)
        # each source's detector frames in float64 between ticks (stream.FrameCache, 124 KB a source at 500 units):
        # a tick converts its new frame only; a cache that is not its source's current state's is rebuilt
        self._frames: dict[str, FrameCache] = {}
        self._pool = None  # threads for the chunks of a many-source tick (`_chunks`)

    # loading ---------------------------------------------------------------------------------------------
    def load(self, serving: ServingState) -> None:
        """Add or replace a source's model version and state (a new model version takes effect atomically)."""
        mv = serving.model
        if mv.design != DESIGN_VERSION or serving.stream.analog is None:
            raise ValueError(f"{mv.source}: model version {mv.model_version} was trained by an older version of "
                             f"nq-dagster (design {mv.design}, this version reads {DESIGN_VERSION}). Fix: retrain it "
                             f"with `nq run --source {mv.source}`")
        cfg = mv.cfg
        key = (mv.source, cfg.version)
        if key not in self._reservoirs:
            self._reservoirs[key] = build_reservoir(cfg, cfg.neuron_count, mv.source, self.device)
            self._analog[key] = build_analog_reservoir(cfg, mv.source, self.device)
        sel = mv.selected_index()
        self._sources[mv.source] = _Source(serving, self._reservoirs[key], source_seed(cfg.seed, mv.source), cfg,
                                           cfg.version, sel, self._analog[key], _linear_blocks(serving, sel))
        for k in [k for k in self._batched if k[0] == cfg.version]:  # rebuilt with this source at the next tick
            del self._batched[k]

    def warm_up(self, source: str) -> None:
        """Run a few ticks through a throwaway copy of the source's state, so that the process's one-time costs
        (first torch kernel calls, thread-pool discovery, OpenBLAS settling on one thread: the first two ticks of a
        process took 48 and 37 ms here, the third 6, then 2) are paid before a tick that is timed. The source's
        state is left as it was."""
        src = self._get(source)
        saved = src.serving
        try:
            self.latest(source)
            for _ in range(3):
                self.advance(source, [float(src.serving.stream.values[-1])])
        finally:
            src.serving = saved

    def sources(self) -> list[str]:
        return sorted(self._sources)

    def serving_state(self, source: str) -> ServingState:
        return self._get(source).serving

    def serving_states(self, sources: list[str]) -> dict[str, ServingState]:
        return {s: self._get(s).serving for s in sources}

    def model(self, source: str) -> ModelVersion:
        return self._get(source).serving.model

    def last_ts(self, source: str) -> int:
        """The timestamp (ns) of the source's last row seen."""
        return self._get(source).serving.stream.last_ts

    def rows_seen(self, source: str) -> int:
        return self._get(source).serving.stream.n_rows

    def shard_of(self, source: str) -> int:
        """The process that holds the source: always this one (0)."""
        self._get(source)
        return 0

    def close(self) -> None:
        """Nothing to stop (`fusion.shards.ShardedPredictor` stops its workers here)."""

    def _get(self, source: str) -> _Source:
        try:
            return self._sources[source]
        except KeyError:
            raise KeyError(f"no model loaded for source {source!r}; loaded: {', '.join(self.sources()) or 'none'}"
                           ) from None

    # predicting ------------------------------------------------------------------------------------------
    def latest(self, source: str) -> dict:
        """The prediction for the last row already seen (equal to the batch graph's record for that row)."""
        t0 = time.perf_counter()
        src = self._get(source)
        st, cfg = src.serving.stream, src.cfg
        frame, lags, band_sd = latest_design(st, cfg.feature_window, cfg.horizon)
        return self._records([src], frame[None], st.last_features[None], lags[None], np.array([band_sd]),
                             np.array([st.last_ts]), t0, None, st.analog_block()[None])[0]

    def advance(self, source: str, values, timestamps=None) -> list[dict]:
        """One record per new value (in order); the source's state moves on past them."""
        return self.advance_many({source: (values, timestamps)})[source]

    def advance_many(self, ticks: dict[str, tuple]) -> dict[str, list[dict]]:
        """{source: (values, timestamps or None)} -> {source: records}. Sources advance in rounds: round r takes
        the r-th new value of every source that has one, batched through the encoder and the reservoir."""
        t_recv = time.perf_counter()
        # a tick is many small BLAS/LAPACK calls (32 x 32 eigen-decompositions, vector-matrix products): BLAS
        # threads only add wake-up latency there, and torch's and OpenBLAS's pools fight over the cores
        # (a 70 us eigh took 2.3 ms beside torch's OpenMP threads on 2 cores), so BLAS runs single-threaded
        with single_threaded_blas():
            out, pending = self.compute(ticks, t_recv)
        self.commit(pending)
        return out

    def compute(self, ticks: dict[str, tuple], t_recv: float, checked: bool = False
                ) -> tuple[dict[str, list[dict]], dict]:
        """`advance_many`'s records and the sources' next states, not yet committed (`commit`): a caller that
        advances sources in several places (`fusion.shards.ShardedPredictor`) commits only when all succeeded.
        `checked`: the ticks are `check_ticks`'s output for these sources' states already."""
        # all input checked before any work
        if not checked:
            for s in ticks:
                self._get(s)
            ticks = check_ticks_many(ticks, {s: self._sources[s].serving.stream.last_ts for s in ticks},
                                     {s: self._sources[s].serving.model.step_ms for s in ticks})
        todo = ticks
        current = {s: self._sources[s].serving.stream for s in todo}
        cals = {s: self._sources[s].serving.calibration for s in todo}
        out: dict[str, list[dict]] = {s: [] for s in todo}
        rounds = max((len(v) for v, _ in todo.values()), default=0)
        groups: dict[str, list[str]] = {}
        for s in todo:
            groups.setdefault(self._sources[s].config_version, []).append(s)
        for r in range(rounds):
            for names in groups.values():
                active = [s for s in names if len(todo[s][0]) > r]
                if not active:
                    continue
                chunks = self._chunks(self._sources[active[0]].config_version, active)
                args = []
                for c, part in chunks:
                    srcs = [self._sources[s] for s in part]
                    x = np.array([todo[s][0][r] for s in part])
                    ts = np.array([todo[s][1][r] for s in part], dtype=np.int64)
                    args.append(([current[s] for s in part], x, ts, srcs[0].cfg, np.array([src.seed for src in srcs]),
                                 [src.reservoir for src in srcs], [src.analog for src in srcs],
                                 self._batch(srcs[0].config_version, c, part), [self._frames.get(s) for s in part]))
                if len(args) > 1:  # numpy, LAPACK and torch release the GIL: the chunks run on the cores together
                    feats = list(self._threads().map(lambda a: features_for_ticks(*a), args))
                else:
                    feats = [features_for_ticks(*args[0])]
                for (_, part), a, tf in zip(chunks, args, feats, strict=True):
                    self._frames.update(zip(part, tf.caches, strict=True))
                    srcs, x, ts = [self._sources[s] for s in part], a[1], a[2]
                    rows = [current[s].n_rows for s in part]
                    cal = [cals[s].before(t, xi) if cals[s] is not None else None
                           for s, t, xi in zip(part, rows, x, strict=True)]
                    recs = self._records(srcs, tf.frames, tf.candidates, tf.lags, tf.band_sd, ts, t_recv, cal,
                                         tf.analog)
                    for i, s in enumerate(part):
                        out[s].append(recs[i])
                        current[s] = tf.states[i]
                        if cal[i] is not None:
                            cals[s] = cal[i].after(recs[i]["predicted_change"], recs[i]["hold_band"], float(x[i]))
        return out, {s: (st, cals[s]) for s, st in current.items()}

    def commit(self, pending: dict) -> dict:
        """Move the sources on to the states `compute` returned (every record was built); returns what `rollback`
        needs to undo it."""
        undo = {}
        for s, (st, cal) in pending.items():
            src = self._sources[s]
            undo[s] = src.serving
            src.serving = replace(src.serving, stream=st, calibration=cal)
        return undo

    def rollback(self, undo: dict) -> None:
        """Put the sources back where a `commit` found them."""
        for s, serving in undo.items():
            self._sources[s].serving = serving

    def _loaded(self, config_version: str) -> list[str]:
        return sorted(s for s, src in self._sources.items() if src.config_version == config_version)

    def _chunk_of(self, loaded: list[str]) -> dict[str, int]:
        """Each loaded source's chunk (1..k, blocks of names), or {} when the sources step as one chunk."""
        threads = int(os.environ.get("NQ_PREDICT_THREADS", self.threads))
        k = 1 if self.device != "cpu" else max(1, min(threads, 4, len(loaded) // 8))
        return {n: i * k // len(loaded) + 1 for i, n in enumerate(loaded)} if k > 1 else {}

    def _chunks(self, config_version: str, active: list[str]) -> list[tuple[int, list[str]]]:
        """The active sources of a config in the chunks that step together: the loaded sources of a config in
        one fixed block of names per CPU thread (NQ_PREDICT_THREADS, else the predictor's `threads`; at most 4;
        at least 8 sources a block), each block with its own batched reservoirs, when at least half of them tick;
        else one chunk (0). A source's arithmetic is its own: results do not depend on the chunking. (BLAS stays
        on one thread: the chunks are the parallelism.)"""
        loaded = self._loaded(config_version)
        chunk_of = self._chunk_of(loaded)
        if not chunk_of or len(active) * 2 < len(loaded):
            return [(0, active)]
        parts: dict[int, list[str]] = {}
        for s in active:
            parts.setdefault(chunk_of[s], []).append(s)
        return sorted(parts.items())

    def _threads(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            # the chunks are the parallelism: torch's own intra-op threads inside each chunk thread only contend
            # for the same cores (64 sources: 2,250-2,320 against 2,530 predictions/s on 2 cores); the setting
            # is per thread, so the caller's threads keep theirs
            self._pool = ThreadPoolExecutor(4, thread_name_prefix="nq-predict", initializer=torch.set_num_threads,
                                            initargs=(1,))
        return self._pool

    def _batch(self, config_version: str, chunk: int, active: list[str]) -> tuple | None:
        """The batched reservoirs of a chunk of a config's loaded sources and the positions of `active` in them,
        for a tick of several sources on CPU (one source steps alone: its own small products are faster)."""
        if len(active) < 2 or self.device != "cpu":
            return None
        key = (config_version, chunk)
        if key not in self._batched:
            names = self._loaded(config_version)
            if chunk:
                chunk_of = self._chunk_of(names)
                names = [n for n in names if chunk_of[n] == chunk]
            if len(active) < BATCH_SHARE * len(names):
                return None
            self._batched[key] = (
                {n: i for i, n in enumerate(names)},
                BatchedReservoirs([self._sources[n].reservoir for n in names]),
                BatchedReservoirs([self._sources[n].analog for n in names]))
        pos, spiking, analog = self._batched[key]
        if len(active) < BATCH_SHARE * len(pos):  # part of them: stepping them in turn reads less
            return None
        return spiking, analog, np.array([pos[s] for s in active])

    def _records(self, srcs: list[_Source], frames: np.ndarray, cands: np.ndarray, lags: np.ndarray,
                 band_sd: np.ndarray, ts: np.ndarray, t_recv: float, cal: list | None = None,
                 analog: np.ndarray | None = None) -> list[dict]:
        """One record per row: row i is a tick of srcs[i] (sources of one config). Each source's own model
        predicts its change; probabilities and records are built for all rows at once."""
        cfg = srcs[0].cfg
        band = cfg.hold_band * band_sd * np.sqrt(cfg.horizon)
        # each source's own model, folded into one linear form per design block (`_linear_blocks`): four row-wise
        # dot products for the whole batch instead of a design row and every stage per source
        lin = [src.linear for src in srcs]
        chg = (np.einsum("sd,sd->s", np.asarray(frames, dtype=float), np.stack([w[0] for w in lin]))
               + np.einsum("sd,sd->s", np.asarray(analog, dtype=float), np.stack([w[1] for w in lin]))
               + np.einsum("sd,sd->s", cands, np.stack([w[2] for w in lin]))
               + np.einsum("sd,sd->s", np.asarray(lags, dtype=float), np.stack([w[3] for w in lin]))
               + np.array([w[4] for w in lin]))
        cal = cal or [src.serving.calibration for src in srcs]
        scale = np.array([cal[i].error_scale(float(band[i])) if cal[i] is not None else
                          np.broadcast_to(src.serving.model.model.error_scale(band[i:i + 1]), (1,))[0]
                          for i, src in enumerate(srcs)])
        owners = [cal[i] if cal[i] is not None else src.serving.model.model for i, src in enumerate(srcs)]
        mix = np.array([float(o.mix) for o in owners])
        base = np.array([o.base_rate if o.base_rate is not None else np.full(3, 1 / 3) for o in owners])
        probs = direction_probabilities(chg, band, scale, mix, base)
        mvs = [src.serving.model for src in srcs]
        recs = build_records([mv.source for mv in mvs], ts, probs, chg, cands[:, PATTERN_COLS], cands[:, SPIKE_RATE_COL],
                             frames, [mv.quantum for mv in mvs], [mv.model_version for mv in mvs],
                             [src.config_version for src in srcs], np.array([mv.train_end_ns for mv in mvs]),
                             np.array([mv.step_ms * cfg.horizon for mv in mvs]), None)
        elapsed_ms = (time.perf_counter() - t_recv) * 1000.0  # from the call that brought the tick
        for i, (r, mv) in enumerate(zip(recs, mvs, strict=True)):
            r["processing_time_ms"] = elapsed_ms
            r["calibration"] = mv.calibration(r["confidence"])
            r["hold_band"] = float(band[i])  # |change| below it is "hold": the rule realized outcomes are scored by
        return recs


def check_ticks_many(ticks: dict[str, tuple], last_ts: dict[str, int], step_ms: dict[str, float]) -> dict[str, tuple]:
    """`check_ticks` for each source. A call that brings every source one value (the common tick) is checked in a
    few array operations, its output as one-element lists; anything else, or anything wrong, source by source
    (which words the error)."""
    names = list(ticks)
    one = all(type(v) in (list, tuple, np.ndarray) and len(v) == 1 and (
        t is None or (type(t) in (list, tuple, np.ndarray) and len(t) == 1 and isinstance(t[0], (int, np.integer))))
        for v, t in ticks.values())
    if one and names:
        try:
            x = np.array([ticks[s][0][0] for s in names], dtype=float)
        except (TypeError, ValueError):
            x = None
        if x is not None and x.ndim == 1 and np.isfinite(x).all():
            last = np.array([last_ts[s] for s in names], dtype=np.int64)
            given = [ticks[s][1] for s in names]
            ts = np.array([int(t[0]) if t is not None else last[i] + (int(round(step_ms[names[i]] * 1e6)) or 1)
                           for i, t in enumerate(given)], dtype=np.int64)
            if (ts > last).all():
                return {s: ([float(x[i])], [int(ts[i])]) for i, s in enumerate(names)}
    return {s: check_ticks(s, v, t, last_ts[s], step_ms[s]) for s, (v, t) in ticks.items()}


def check_ticks(source: str, values, timestamps, last_ts: int, step_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """A source's new values and timestamps as (values, ns since the epoch), or a ValueError saying what is wrong:
    finite numbers, as many timestamps as values, each after the last one seen (`last_ts`) and after the one
    before it. Without timestamps the ticks are spaced by the model's training step (`step_ms`)."""
    new = np.asarray(values, dtype=float).ravel()
    m = len(new)
    if m == 0:
        raise ValueError(f"{source}: no new values")
    if not np.isfinite(new).all():
        bad = int(np.nonzero(~np.isfinite(new))[0][0])
        raise ValueError(f"{source}: value {bad + 1} ({new[bad]}) is not a finite number; pass numbers only")
    last = last_ts
    if timestamps is None:
        step = int(round(step_ms * 1e6)) or 1
        return new, last + step * np.arange(1, m + 1, dtype=np.int64)
    ts = _to_ns(timestamps)
    if len(ts) != m:
        raise ValueError(f"{source}: {m} values but {len(ts)} timestamps")
    if ts[0] <= last:
        raise ValueError(f"{source}: timestamp 1 ({pd.Timestamp(int(ts[0]), tz='UTC')}) is not after the last "
                         f"one seen ({pd.Timestamp(last, tz='UTC')}); older rows are used at the next training, "
                         "not streamed")
    back = np.nonzero(np.diff(ts) <= 0)[0]
    if len(back):
        i = int(back[0]) + 2
        raise ValueError(f"{source}: timestamp {i} ({pd.Timestamp(int(ts[i - 1]), tz='UTC')}) is not after "
                         f"timestamp {i - 1}; sort the rows and drop duplicate times")
    return new, ts


def continue_from(trained: ServingState, live: ServingState | None, rows_after=None) -> tuple[ServingState, str]:
    """The state a stream continues from, given training's `serving_state` and the stream's own `live_state`
    (saved by the streaming job or the server after the rows they predicted); returns (state, how).

    The stream state depends on the config and the data only (not on the fitted coefficients), so when the live
    state has gone past what training saw, under the same config, the new model continues from the live state.
    Under a changed config (or a changed season of the seasonal column, which a short series' retraining can
    find) the training state is advanced over the rows it did not see (`rows_after(ts_ns)` ->
    (values, timestamps)) without emitting predictions: those rows were predicted already, by the older model."""
    if live is None or live.stream.last_ts <= trained.stream.last_ts:
        return trained, "training state"
    if live.model.config == trained.model.config and live.stream.season == trained.stream.season:
        if live.model.model_version == trained.model.model_version:
            # the same model: the stream goes on with the calibration it has been recalibrating (dropping it made
            # every streaming run, and every server restart, fall back to the model's own scale)
            return ServingState(trained.model, live.stream, live.calibration), "live state"
        # the stream went on past training: training's calibration window ends before the live rows, so the new
        # model keeps its own scale until its next training (the live calibration belongs to the old model)
        return ServingState(trained.model, live.stream), "live state, new model"
    if rows_after is None:
        raise ValueError(f"{trained.model.source}: the config changed since the live state; rows after "
                         f"{pd.Timestamp(trained.stream.last_ts, tz='UTC')} must be replayed")
    values, ts = rows_after(trained.stream.last_ts)
    keep = _to_ns(ts) <= live.stream.last_ts
    p = Predictor()
    p.load(trained)
    if keep.any():
        p.advance(trained.model.source, np.asarray(values)[keep], np.asarray(ts)[keep])
    return p.serving_state(trained.model.source), f"training state replayed over {int(keep.sum())} rows"


def model_version_from_fit(source: str, cfg: PipelineConfig, version: str, fusion: dict, selected: list[str],
                           quantum: dict, timestamps: np.ndarray, fit_seconds: float) -> ModelVersion:
    """The model version that training hands to streaming: the last walk-forward model and what it achieved."""
    fused, targets = fusion["fused"], fusion["targets"]
    y = targets["direction"].to_numpy()[fused["row"].to_numpy()]
    ok = y != -9
    reliability = reliability_table(fused["confidence"].to_numpy()[ok], fused["direction"].to_numpy()[ok] == y[ok])
    ts = _to_ns(timestamps)
    step_ms = float(np.median(np.diff(ts)) / 1e6) if len(ts) > 1 else 0.0
    return ModelVersion(source=source, model_version=version, config=cfg.as_dict(), model=fusion["model"],
                        selected=list(selected), quantum=quantum, reliability=reliability,
                        train_end_ns=int(ts[fusion["model"].train_end]), step_ms=step_ms, fit_seconds=float(fit_seconds),
                        trained_rows=len(ts), created_at=pd.Timestamp.now(tz="UTC").isoformat(), design=DESIGN_VERSION)


__all__ = ["CLASSES", "LiveCalibration", "ModelVersion", "Predictor", "ServingState", "check_ticks", "check_ticks_many", "continue_from", "design_matrix", "model_version_from_fit",
           "reliability_table"]
