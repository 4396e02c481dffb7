"""The one prediction path: a model version plus each source's streaming state, advanced tick by tick.

`Predictor` holds, per source, the current `ModelVersion` (fitted coefficients, selected features, calibration
table, quantum results) and its `StreamState` (fusion/model.py, fusion/stream.py). `advance` moves one source
on by one or many ticks; `advance_many` moves many sources at once, batched through the encoder and the
reservoir. Every call returns one record per tick (fusion/record.py), validates all input before touching any
state (fusion/ticks.py), and commits the new states only when every record is built: a failed call changes
nothing.

The training assets build the state a stream continues from (`serving_state`, fusion/training.py); the
streaming job, `nq predict` and the prediction server call this class. Nothing else turns a tick into a
prediction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from nq_dagster.config import PipelineConfig
from nq_dagster.fusion import intervals
from nq_dagster.fusion.model import DESIGN_VERSION, ModelVersion, ServingState
from nq_dagster.fusion.record import build_records, coherent_change
from nq_dagster.fusion.stream import (
    CANDIDATES,
    N_LAGS,
    BatchedStep,
    FrameCache,
    TickBatch,
    features_for_ticks,
    latest_design,
)
from nq_dagster.fusion.threads import chunk_of, chunk_pool, single_threaded_blas
from nq_dagster.fusion.ticks import check_ticks_many, to_ns, value_range
from nq_dagster.fusion.walkforward import direction_probabilities
from nq_dagster.neuromorphic.patterns import PATTERN_NAMES
from nq_dagster.neuromorphic.reservoir import BatchedReservoirs, Reservoir
from nq_dagster.neuromorphic.stages import build_analog_reservoir, build_reservoir, source_seed

PATTERN_COLS = [CANDIDATES.index(p) for p in PATTERN_NAMES]  # columns of the candidate features
SPIKE_RATE_COL = CANDIDATES.index("spike_rate")
# the share of a chunk's sources that must tick for their reservoirs to step batched (the block-diagonal
# product reads every source's weights); fewer step one by one (`Reservoir.step_numpy`), which reads less: the
# break-even measured in bench/RESULTS.md
BATCH_SHARE = 0.75


@dataclass
class LinearBlocks:
    """A source's model as one linear form per block of the design row (`training.design_matrix`),
    x . w + c, over the reservoir frame, the analog block, all CANDIDATES (zero outside the selected features)
    and the lags."""

    frames: np.ndarray
    analog: np.ndarray
    candidates: np.ndarray
    lags: np.ndarray
    constant: float


def _linear_blocks(serving: ServingState, sel: np.ndarray) -> LinearBlocks:
    """The source's model folded per design block; the candidates' weights sit at their places among all
    CANDIDATES, so that a batch of sources with different selections is four row-wise dot products."""
    st = serving.stream
    F, A, L = len(st.last_frame), len(st.analog_block()), N_LAGS + 2
    w, c = serving.model.model.linear_form(F + A + len(sel) + L)
    w_cands = np.zeros(len(CANDIDATES))
    np.add.at(w_cands, sel, w[F + A : F + A + len(sel)])
    return LinearBlocks(w[:F], w[F : F + A], w_cands, w[F + A + len(sel) :], c)


@dataclass
class _BatchedChunk:
    """The batched reservoirs of a chunk of a config's loaded sources, and each source's position in them."""

    positions: dict[str, int]
    spiking: BatchedReservoirs
    analog: BatchedReservoirs


@dataclass
class _Source:
    serving: ServingState
    reservoir: Reservoir
    seed: int
    cfg: PipelineConfig
    config_version: str
    sel: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    analog: Reservoir | None = None
    linear: LinearBlocks | None = None


class Predictor:
    """Sources' model versions and streaming states in memory; see the module docstring."""

    def __init__(self, device: str = "cpu", threads: int | None = None):
        """`threads`: chunk threads for a many-source tick (`_chunks`, fusion/threads.py); None: one (the
        settings' `predict_threads`, passed down by the composition roots)."""
        self.device = device
        self.threads = threads or 1
        self._sources: dict[str, _Source] = {}
        self._reservoirs: dict[tuple[str, str], object] = {}
        self._analog: dict[tuple[str, str], object] = {}
        self._batched: dict[tuple[str, int], _BatchedChunk] = {}  # by (config version, chunk)
        # each source's detector frames in float64 between ticks (stream.FrameCache, 8 bytes a unit and stored
        # frame): a tick converts its new frame only; a cache not of its source's current state is rebuilt
        self._frames: dict[str, FrameCache] = {}
        self._pool = None  # threads for the chunks of a many-source tick (`_chunks`)
        self._last_undo: dict = {}  # what `undo_last` puts back

    # loading ---------------------------------------------------------------------------------------------
    def load(self, serving: ServingState) -> None:
        """Add or replace a source's model version and state (a new model version takes effect atomically)."""
        mv = serving.model
        if mv.design != DESIGN_VERSION or serving.stream.analog is None:
            raise ValueError(
                f"{mv.source}: model version {mv.model_version} was trained by an older version "
                f"of nq-dagster (design {mv.design}, this version reads {DESIGN_VERSION}). Fix: "
                f"retrain it with `nq run --source {mv.source}`"
            )
        cfg = mv.cfg
        key = (mv.source, cfg.version)
        if key not in self._reservoirs:
            self._reservoirs[key] = build_reservoir(cfg, cfg.neuron_count, mv.source, self.device)
            self._analog[key] = build_analog_reservoir(cfg, mv.source, self.device)
        sel = mv.selected_index()
        self._sources[mv.source] = _Source(
            serving,
            self._reservoirs[key],
            source_seed(cfg.seed, mv.source),
            cfg,
            cfg.version,
            sel,
            self._analog[key],
            _linear_blocks(serving, sel),
        )
        for k in [k for k in self._batched if k[0] == cfg.version]:  # rebuilt with this source, next tick
            del self._batched[k]

    def warm_up(self, source: str) -> None:
        """Run a few ticks through a throwaway copy of the source's state, so that the process's one-time
        costs (first torch kernel calls, thread-pool discovery, OpenBLAS settling on one thread:
        bench/RESULTS.md) are paid before a tick that is timed. The source's state is left as it was."""
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

    def value_range(self, source: str) -> tuple[float, float]:
        """The values the source's state accepts (`ticks.value_range`)."""
        return value_range(self._get(source).serving.stream)

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
            loaded = ", ".join(self.sources()) or "none"
            raise KeyError(f"no model loaded for source {source!r}; loaded: {loaded}") from None

    # predicting ------------------------------------------------------------------------------------------
    def latest(self, source: str) -> dict:
        """The prediction for the last row already seen (equal to the batch graph's record for that row)."""
        t0 = time.perf_counter()
        src = self._get(source)
        st, cfg = src.serving.stream, src.cfg
        frame, lags, band_sd = latest_design(st, cfg.feature_window, cfg.horizon)
        return self._records(
            [src],
            frame[None],
            st.last_features[None],
            lags[None],
            np.array([band_sd]),
            np.array([st.last_ts]),
            t0,
            None,
            st.analog_block()[None],
        )[0][0]

    def advance(self, source: str, values, timestamps=None) -> list[dict]:
        """One record per new value (in order); the source's state moves on past them."""
        return self.advance_many({source: (values, timestamps)})[source]

    def advance_many(self, ticks: dict[str, tuple]) -> dict[str, list[dict]]:
        """{source: (values, timestamps or None)} -> {source: records}. Sources advance in rounds: round r
        takes the r-th new value of every source that has one, batched through the encoder and reservoir."""
        t_recv = time.perf_counter()
        with single_threaded_blas():  # a tick is many small BLAS calls (fusion/threads.py)
            out, pending = self.compute(ticks, t_recv)
        self._last_undo = self.commit(pending)
        return out

    def undo_last(self) -> None:
        """Put the sources of the last `advance_many` back where it found them, when its records could not be
        kept (the server's journal refused the batch): a tick that was not stored moves no state. Only
        before the next call that advances."""
        undo, self._last_undo = self._last_undo, {}
        self.rollback(undo)

    def compute(
        self, ticks: dict[str, tuple], t_recv: float, checked: bool = False
    ) -> tuple[dict[str, list[dict]], dict]:
        """`advance_many`'s records and the sources' next states, not yet committed (`commit`): a caller that
        advances sources in several places (`fusion.shards.ShardedPredictor`) commits only when all succeeded.
        `checked`: the ticks are `check_ticks`'s output for these sources' states already."""
        # all input checked before any work
        if not checked:
            for s in ticks:
                self._get(s)
            ticks = check_ticks_many(
                ticks,
                {s: self._sources[s].serving.stream.last_ts for s in ticks},
                {s: self._sources[s].serving.model.step_ms for s in ticks},
                {s: value_range(self._sources[s].serving.stream) for s in ticks},
            )
        todo = ticks
        current = {s: self._sources[s].serving.stream for s in todo}
        cals = {s: self._sources[s].serving.calibration for s in todo}
        ivs = {s: self._sources[s].serving.intervals for s in todo}
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
                batches = []
                for c, part in chunks:
                    srcs = [self._sources[s] for s in part]
                    batches.append(
                        TickBatch(
                            states=[current[s] for s in part],
                            values=np.array([todo[s][0][r] for s in part]),
                            timestamps=np.array([todo[s][1][r] for s in part], dtype=np.int64),
                            cfg=srcs[0].cfg,
                            seeds=np.array([src.seed for src in srcs]),
                            reservoirs=[src.reservoir for src in srcs],
                            analog=[src.analog for src in srcs],
                            batched=self._batch(srcs[0].config_version, c, part),
                            caches=[self._frames.get(s) for s in part],
                        )
                    )
                # numpy, LAPACK and torch release the GIL: the chunks run on the cores together
                if len(batches) > 1:
                    feats = list(self._threads().map(features_for_ticks, batches))
                else:
                    feats = [features_for_ticks(batches[0])]
                for (_, part), batch, tf in zip(chunks, batches, feats, strict=True):
                    self._frames.update(zip(part, tf.caches, strict=True))
                    srcs, x = [self._sources[s] for s in part], batch.values
                    rows = [current[s].n_rows for s in part]
                    cal = [
                        cals[s].before(t, xi) if cals[s] is not None else None
                        for s, t, xi in zip(part, rows, x, strict=True)
                    ]
                    recs, model_chg, new_ivs = self._records(
                        srcs,
                        tf.frames,
                        tf.candidates,
                        tf.lags,
                        tf.band_sd,
                        batch.timestamps,
                        t_recv,
                        cal,
                        tf.analog,
                        ([ivs[s] for s in part], x),
                    )
                    for i, s in enumerate(part):
                        out[s].append(recs[i])
                        current[s] = tf.states[i]
                        ivs[s] = new_ivs[i]
                        if cal[i] is not None:  # recalibrated on the model's own change, as training does
                            cals[s] = cal[i].after(float(model_chg[i]), recs[i]["hold_band"], float(x[i]))
        return out, {s: (st, cals[s], ivs[s]) for s, st in current.items()}

    def commit(self, pending: dict) -> dict:
        """Move the sources on to the states `compute` returned (every record was built); returns what
        `rollback` needs to undo it."""
        undo = {}
        for s, (st, cal, iv) in pending.items():
            src = self._sources[s]
            undo[s] = src.serving
            src.serving = replace(src.serving, stream=st, calibration=cal, intervals=iv)
        return undo

    def rollback(self, undo: dict) -> None:
        """Put the sources back where a `commit` found them."""
        for s, serving in undo.items():
            self._sources[s].serving = serving

    def _loaded(self, config_version: str) -> list[str]:
        return sorted(s for s, src in self._sources.items() if src.config_version == config_version)

    def _chunks(self, config_version: str, active: list[str]) -> list[tuple[int, list[str]]]:
        """The active sources of a config in the chunks that step together: the loaded sources of a config in
        one fixed block of names per chunk thread (`threads.chunk_of`), each block with its own batched
        reservoirs, when at least half of them tick; else one chunk (0). A source's arithmetic is its own:
        results do not depend on the chunking. (BLAS stays on one thread: the chunks are the parallelism.)"""
        loaded = self._loaded(config_version)
        blocks = chunk_of(loaded, self.threads, self.device)
        if not blocks or len(active) * 2 < len(loaded):
            return [(0, active)]
        parts: dict[int, list[str]] = {}
        for s in active:
            parts.setdefault(blocks[s], []).append(s)
        return sorted(parts.items())

    def _threads(self):
        if self._pool is None:
            self._pool = chunk_pool()
        return self._pool

    def _batch(self, config_version: str, chunk: int, active: list[str]) -> BatchedStep | None:
        """The batched reservoirs of a chunk of a config's loaded sources and the positions of `active` in
        them, for a tick of several sources on CPU (one source steps alone: its small products are faster)."""
        if len(active) < 2 or self.device != "cpu":
            return None
        key = (config_version, chunk)
        if key not in self._batched:
            names = self._loaded(config_version)
            if chunk:
                blocks = chunk_of(names, self.threads, self.device)
                names = [n for n in names if blocks[n] == chunk]
            if len(active) < BATCH_SHARE * len(names):
                return None
            self._batched[key] = _BatchedChunk(
                {n: i for i, n in enumerate(names)},
                BatchedReservoirs([self._sources[n].reservoir for n in names]),
                BatchedReservoirs([self._sources[n].analog for n in names]),
            )
        ch = self._batched[key]
        if len(active) < BATCH_SHARE * len(ch.positions):  # part of them: stepping them in turn reads less
            return None
        return BatchedStep(ch.spiking, ch.analog, np.array([ch.positions[s] for s in active]))

    def _records(
        self,
        srcs: list[_Source],
        frames: np.ndarray,
        cands: np.ndarray,
        lags: np.ndarray,
        band_sd: np.ndarray,
        ts: np.ndarray,
        t_recv: float,
        cal: list | None = None,
        analog: np.ndarray | None = None,
        ticks: tuple[list, np.ndarray] | None = None,
    ) -> tuple[list[dict], np.ndarray, list]:
        """One record per row: row i is a tick of srcs[i] (sources of one config). Each source's own model
        predicts its change; probabilities and records are built for all rows at once. `ticks`: (each row's
        interval state, the tick's value): the intervals step on (`intervals.step`); None (`latest`): the
        intervals stated for the last row. Returns (records, the models' own predicted changes, the interval
        states after the rows)."""
        cfg = srcs[0].cfg
        band = cfg.hold_band * band_sd * np.sqrt(cfg.horizon)
        # each source's own model, folded into one linear form per design block (`_linear_blocks`): four
        # row-wise dot products for the whole batch instead of a design row and every stage per source
        lin = [src.linear for src in srcs]
        chg = (
            np.einsum("sd,sd->s", np.asarray(frames, dtype=float), np.stack([w.frames for w in lin]))
            + np.einsum("sd,sd->s", np.asarray(analog, dtype=float), np.stack([w.analog for w in lin]))
            + np.einsum("sd,sd->s", cands, np.stack([w.candidates for w in lin]))
            + np.einsum("sd,sd->s", np.asarray(lags, dtype=float), np.stack([w.lags for w in lin]))
            + np.array([w.constant for w in lin])
        )
        cal = cal or [src.serving.calibration for src in srcs]
        scale = np.array(
            [
                cal[i].error_scale(float(band[i]))
                if cal[i] is not None
                else np.broadcast_to(src.serving.model.model.error_scale(band[i : i + 1]), (1,))[0]
                for i, src in enumerate(srcs)
            ]
        )
        owners = [cal[i] if cal[i] is not None else src.serving.model.model for i, src in enumerate(srcs)]
        mix = np.array([float(o.mix) for o in owners])
        base = np.array([o.base_rate if o.base_rate is not None else np.full(3, 1 / 3) for o in owners])
        probs = direction_probabilities(chg, band, scale, mix, base)
        mvs = [src.serving.model for src in srcs]
        if ticks is None:
            new_ivs = [src.serving.intervals for src in srcs]
            half = np.array([iv.last_half if iv is not None else [np.nan] * 2 for iv in new_ivs])
        else:
            centre = coherent_change(probs, band, scale, chg)
            new_ivs, half = [], np.full((len(srcs), 2), np.nan)
            for i, (iv, x) in enumerate(zip(*ticks, strict=True)):
                if iv is not None:
                    # the tick's time: an outcome after a gap in the feed is not scored (as training's pass)
                    iv, half[i] = intervals.step(
                        iv, float(x), float(centre[i]), float(scale[i]), float(ts[i]) / 1e6
                    )
                new_ivs.append(iv)
        recs = build_records(
            [mv.source for mv in mvs],
            ts,
            probs,
            band,
            scale,
            chg,
            cands[:, PATTERN_COLS],
            cands[:, SPIKE_RATE_COL],
            frames,
            [mv.quantum for mv in mvs],
            [mv.model_version for mv in mvs],
            [src.config_version for src in srcs],
            np.array([mv.train_end_ns for mv in mvs]),
            np.array([mv.step_ms * cfg.horizon for mv in mvs]),
            None,
            half,
        )
        elapsed_ms = (time.perf_counter() - t_recv) * 1000.0  # from the call that brought the tick
        for i, (r, mv) in enumerate(zip(recs, mvs, strict=True)):
            r["processing_time_ms"] = elapsed_ms
            r["calibration"] = mv.calibration(r["confidence"])
            # |change| below it is "hold": the rule realized outcomes are scored by
            r["hold_band"] = float(band[i])
        return recs, chg, new_ivs


def continue_from(
    trained: ServingState, live: ServingState | None, rows_after=None
) -> tuple[ServingState, str]:
    """The state a stream continues from, given training's `serving_state` and the stream's own `live_state`
    (saved by the streaming job or the server after the rows they predicted); returns (state, how).

    The stream state depends on the config and the data only (not on the fitted coefficients), so when the
    live state has gone past what training saw, under the same config, the new model continues from the live
    state. Under a changed config (or a changed season of the seasonal column, which a short series'
    retraining can find) the training state is advanced over the rows it did not see (`rows_after(ts_ns)` ->
    (values, timestamps)) without emitting predictions: the older model predicted those rows already."""
    if live is None or live.stream.last_ts <= trained.stream.last_ts:
        return trained, "training state"
    if live.model.config == trained.model.config and live.stream.season == trained.stream.season:
        if live.model.model_version == trained.model.model_version:
            # the same model: the stream goes on with the calibration it has been recalibrating (dropping it
            # made every streaming run, and every server restart, fall back to the model's own scale)
            return ServingState(trained.model, live.stream, live.calibration, live.intervals), "live state"
        # the stream went on past training: training's calibration window ends before the live rows, so the
        # new model keeps its own scale until its next training (the live calibration is the old model's)
        # the intervals go on with the live stream: their pending predictions are the ones it served
        return ServingState(trained.model, live.stream, None, live.intervals), "live state, new model"
    if rows_after is None:
        raise ValueError(
            f"{trained.model.source}: the config changed since the live state; rows after "
            f"{pd.Timestamp(trained.stream.last_ts, tz='UTC')} must be replayed"
        )
    values, ts = rows_after(trained.stream.last_ts)
    keep = to_ns(ts) <= live.stream.last_ts
    p = Predictor()
    p.load(trained)
    if keep.any():
        p.advance(trained.model.source, np.asarray(values)[keep], np.asarray(ts)[keep])
    return p.serving_state(trained.model.source), f"training state replayed over {int(keep.sum())} rows"
