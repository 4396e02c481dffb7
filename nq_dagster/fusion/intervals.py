"""Prediction intervals for the change, calibrated out of sample and kept calibrated as outcomes arrive.

Each record's interval at level L is predicted_change +- q x s, where s is the model's calibrated error scale
for that row and q is a conformal quantile of normalized scores |realized change - predicted_change| / s:

- split conformal (Vovk et al. 2005; Lei et al. 2018): the scores are those of the latest `WINDOW` realized
  walk-forward predictions, every one made by a model that had not seen its outcome (held out), and q is their
  ceil((n + 1) x level) / n empirical quantile;
- adaptive conformal inference (ACI, Gibbs and Candes 2021, "Adaptive conformal inference under distribution
  shift"): the level used is 1 - alpha_t, and each realized outcome moves alpha_t by
  gamma_L x (1 - L - miss_t), miss_t = 1 when the outcome fell outside the interval stated for it, so long-run
  coverage stays at L even when the scores' distribution drifts. Over any stretch of m outcomes the miss rate
  is within (alpha_t's range + gamma_L) / (gamma_L m) of 1 - L (their Prop. 4.1, telescoping the updates),
  so the step sets how closely a late stretch is held: the step is per level, gamma_L = GAMMA_SCALE x (1 - L)
  (`step_sizes`), the same relative move of alpha_t at every level.

Why per level, and why larger at 80 % than the single 0.02 used before (bench/RESULTS.md, "Interval coverage
late"): on near-deterministic chaotic series (Mackey-Glass, Rossler) the normalized scores are strongly
autocorrelated (the error follows the attractor's phase), so the scores are not exchangeable over a few
hundred rows and coverage over 500-row stretches swung by up to 9 points at 80 % with 0.02 (the demo's Mackey-
Glass once: 0.775 over its last 30 %); 0.1 at 80 % holds every stretch within 5 points there and the last 30 %
within 1, with narrower intervals. At 95 % a step of 0.02 already moves alpha_t (0.05) by 38 % per miss and to
<= 0 after a couple of misses, where the interval is the window's largest score (ACI would state an infinite
one); 0.025 keeps that as before.

An outcome whose tick came after a gap in the feed (more than `record.GAP_TOLERANCE` x the horizon's time
after the prediction, `record.within_horizon`: the server's rule, and training's `make_targets`) is not
realized: it is neither scored nor moves alpha_t (its change spans the stop, not the horizon). The state
keeps the pending predictions' times for that (`pending_ms`, `horizon_ms`); a state without them (saved
before, or built without times) realizes every outcome.

Before `MIN_SCORES` scores are realized, q is the Normal quantile of the model's own error model (what its
probabilities already assume). `IntervalState` holds the window, alpha_t per level and the h predictions
awaiting their outcome; `step` is the one update, used row by row by training (`interval_pass`, over the
walk-forward predictions) and tick by tick by the predictor, so both give the same interval for the same row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtri

from nq_dagster.fusion.record import coherent_change, within_horizon
from nq_dagster.fusion.ticks import to_ns
from nq_dagster.fusion.walkforward import median_spacing_ms

LEVELS = (0.8, 0.95)  # the intervals every record carries (interval_80, interval_95)
WINDOW = 250  # realized scores kept: the conformal set (8 bytes each, twice: arrival order and sorted)
# ACI's step at level L is GAMMA_SCALE x (1 - L): 0.1 at 80 %, 0.025 at 95 % (see the module's docstring;
# Gibbs and Candes 2021 use 0.005, which left the demo's market source's last 30 % at 0.78 / 0.94)
GAMMA_SCALE = 0.5
MIN_SCORES = 30  # fewer realized scores: the Normal quantile of the model's error scale


@dataclass
class IntervalState:
    """A stream's conformal state after its last row (arrays oldest first)."""

    horizon: int
    levels: np.ndarray  # (L,) nominal coverage levels
    alpha: np.ndarray  # (L,) ACI's current miscoverage targets
    scores: np.ndarray  # (<= WINDOW,) realized normalized scores in arrival order
    ranked: np.ndarray  # the same scores, sorted ascending
    pending: np.ndarray  # (<= horizon, 3 + L): value at the row, predicted change, scale, half-widths
    last_half: np.ndarray  # (L,) the half-widths stated for the last row
    realized: int = 0  # outcomes realized so far (and scored)
    covered: np.ndarray | None = None  # (L,) of those, how many fell inside the interval stated for them
    pending_ms: np.ndarray | None = (
        None  # (<= horizon,) the pending rows' times (ms since the epoch; NaN: none)
    )
    horizon_ms: float = 0.0  # the horizon's time (horizon x the source's spacing); 0: no gap rule
    unrealized_gap: int = 0  # outcomes left unrealized: their tick came after a gap in the feed


def initial_state(horizon: int, levels=LEVELS, horizon_ms: float | None = None) -> IntervalState:
    """A stream's state before its first row; with `horizon_ms`, outcomes after a gap are not realized."""
    lv = np.asarray(levels, dtype=float)
    if np.any(np.diff(lv) <= 0):
        raise ValueError(f"interval levels must be ascending and distinct, got {lv.tolist()}")
    return IntervalState(
        horizon,
        lv,
        1.0 - lv,
        np.zeros(0),
        np.zeros(0),
        np.zeros((0, 3 + len(lv))),
        np.full(len(lv), np.nan),
        0,
        np.zeros(len(lv), dtype=np.int64),
        None if horizon_ms is None else np.zeros(0),
        float(horizon_ms or 0.0),
    )


def step_sizes(levels: np.ndarray) -> np.ndarray:
    """ACI's step per level: GAMMA_SCALE x (1 - level), the same relative move of alpha_t at every level."""
    return GAMMA_SCALE * (1.0 - np.asarray(levels, dtype=float))


def quantile_factor(ranked: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The conformal quantile of the sorted scores at levels 1 - alpha: the ceil((n + 1)(1 - alpha))-th
    smallest (the largest when that exceeds n, ACI's alpha_t <= 0; 0 when alpha_t >= 1); with too few scores,
    the Normal quantile z_{1 - alpha / 2} (the scores are |error| / s)."""
    a = np.clip(alpha, 1e-6, 1.0)
    n = len(ranked)
    if n < MIN_SCORES:
        return ndtri(1.0 - a / 2.0)
    k = np.ceil((n + 1) * (1.0 - a)).astype(int)
    return np.where(k <= 0, 0.0, ranked[np.clip(k, 1, n) - 1])


def step(
    st: IntervalState, x: float, change: float, scale: float, ts_ms: float | None = None
) -> tuple[IntervalState, np.ndarray]:
    """Row t with value x (at time ts_ms, ms since the epoch): the prediction of row t - h is realized by it
    (scored, alpha_t moved) unless row t came after a gap (`within_horizon` of the row's time, when the state
    has the times), then row t's prediction (its predicted change and error scale) gets its half-widths
    (returned, one per level) and waits for its outcome. Returns a new state; `st` is left as it was."""
    L = len(st.levels)
    alpha, scores, ranked, pending = st.alpha, st.scores, st.ranked, st.pending
    realized, covered, gaps, times = st.realized, st.covered, st.unrealized_gap, st.pending_ms
    if len(pending) >= st.horizon:
        x0, mu, s, *half = pending[0]
        elapsed = None if times is None or ts_ms is None else ts_ms - float(times[0])
        # NaN (a pending row stepped without its time) compares False: realized, as before the rule
        if elapsed is not None and elapsed == elapsed and not within_horizon(elapsed, st.horizon_ms):
            gaps += 1  # the tick came after a gap in the feed: not what happened at the horizon
        else:
            err = abs((x - x0) - mu)
            miss = err > np.asarray(half)
            alpha = alpha + GAMMA_SCALE * (1.0 - st.levels) * ((1.0 - st.levels) - miss)  # step_sizes
            score = err / max(s, 1e-12)
            if len(scores) >= WINDOW:
                ranked = np.delete(ranked, min(np.searchsorted(ranked, scores[0]), len(ranked) - 1))
                scores = scores[1:]
            scores = np.append(scores, score)
            ranked = np.insert(ranked, np.searchsorted(ranked, score), score)
            realized, covered = realized + 1, covered + ~miss
        pending = pending[1:]
        times = None if times is None else times[1:]
    half_w = quantile_factor(ranked, alpha) * max(scale, 0.0)
    # nested: a higher level's interval holds the lower one's (each level has its own alpha_t and step, so
    # after a run of misses at 80 % its quantile can pass the 95 % one's); widening only lowers that level's
    # misses, and the miss ACI counts is the stated interval's. Levels are ascending (`initial_state`).
    half_w = np.maximum.accumulate(half_w)
    row = np.empty((1, 3 + L))
    row[0, :3], row[0, 3:] = (x, change, scale), half_w
    pending = np.vstack([pending, row])
    if times is not None:
        times = np.append(times, np.nan if ts_ms is None else float(ts_ms))
    new = IntervalState(
        st.horizon,
        st.levels,
        alpha,
        scores,
        ranked,
        pending,
        half_w,
        realized,
        covered,
        times,
        st.horizon_ms,
        gaps,
    )
    return new, half_w


def interval_pass(
    values: np.ndarray,
    rows: np.ndarray,
    change: np.ndarray,
    scale: np.ndarray,
    horizon: int,
    timestamps=None,
    horizon_ms: float | None = None,
) -> tuple[np.ndarray, IntervalState]:
    """Training's pass over the walk-forward predictions (contiguous rows, in order): the half-widths per row
    (n, L) and the state after the last row, which a stream continues. With the rows' `timestamps` and the
    horizon's time `horizon_ms` (horizon x the model version's step_ms), outcomes after a gap are not
    realized, as the stream decides them."""
    rows = np.asarray(rows)
    if len(rows) and np.any(np.diff(rows) != 1):
        raise ValueError("interval_pass needs the walk-forward rows contiguous and in order")
    st = initial_state(horizon, horizon_ms=None if timestamps is None else horizon_ms)
    ms = [None] * len(values) if timestamps is None else (to_ns(timestamps) / 1e6).tolist()
    out = np.empty((len(rows), len(st.levels)))
    v = np.asarray(values, dtype=float)
    for i, (r, mu, s) in enumerate(
        zip(rows.tolist(), np.asarray(change).tolist(), np.asarray(scale).tolist(), strict=True)
    ):
        st, out[i] = step(st, float(v[r]), mu, s, ms[r])
    return out, st


def walk_forward_intervals(
    fused, targets, values: np.ndarray, horizon: int, timestamps=None, step_ms: float | None = None
) -> dict:
    """The intervals of a walk-forward prediction frame (`walkforward.walk_forward`'s): each row's centre
    (the record's predicted change, `record.coherent_change`), half-widths (n, L) and the state a stream
    continues. With the rows' `timestamps`, outcomes after a gap in the feed are not realized (the horizon's
    time: horizon x `step_ms`, default the timestamps' median spacing, as the model version's)."""
    rows = fused["row"].to_numpy()
    scale = fused["error_scale"].to_numpy(dtype=float)
    centre = coherent_change(
        fused[["p_down", "p_hold", "p_up"]].to_numpy(),
        targets["band"].to_numpy()[rows],
        scale,
        fused["pred_change"].to_numpy(dtype=float),
    )
    hz = None
    if timestamps is not None:
        hz = horizon * (median_spacing_ms(timestamps) if step_ms is None else float(step_ms))
    half, state = interval_pass(values, rows, centre, scale, horizon, timestamps, hz)
    return {"centre": centre, "half": half, "state": state}


def coverage(
    lo: np.ndarray, hi: np.ndarray, realized: np.ndarray, late_fraction: float = 0.3
) -> dict[str, float | int]:
    """Empirical coverage of intervals [lo, hi] by the realized changes (NaN: not realized, left out): overall
    and over the last `late_fraction` of the realized rows."""
    ok = np.isfinite(realized) & np.isfinite(lo) & np.isfinite(hi)
    inside = (realized[ok] >= lo[ok]) & (realized[ok] <= hi[ok])
    n = len(inside)
    late = inside[n - int(round(n * late_fraction)) :] if n else inside
    return {
        "n": int(n),
        "coverage": float(inside.mean()) if n else float("nan"),
        "n_late": int(len(late)),
        "coverage_late": float(late.mean()) if len(late) else float("nan"),
    }


def coverage_table(fusion: dict, late_fraction: float = 0.3) -> pd.DataFrame:
    """Per level: the realized walk-forward rows, the empirical coverage of their intervals overall and over
    the last `late_fraction`, and the gap to the level (run_fusion's output; empty without intervals)."""
    iv = fusion.get("intervals")
    if not iv:
        return pd.DataFrame()
    rows = fusion["fused"]["row"].to_numpy()
    y = fusion["targets"]["change"].to_numpy(dtype=float)[rows]
    if "gap" in fusion["targets"].columns:  # the horizon tick came after a gap in the feed: not realized
        y = np.where(fusion["targets"]["gap"].to_numpy()[rows], np.nan, y)
    out = []
    for j, level in enumerate(iv["state"].levels.tolist()):
        c = coverage(iv["centre"] - iv["half"][:, j], iv["centre"] + iv["half"][:, j], y, late_fraction)
        out.append(
            {
                "level": level,
                "realized": c["n"],
                "coverage": c["coverage"],
                f"coverage_last_{round(late_fraction * 100)}pct": c["coverage_late"],
                "mean_width": float(np.mean(2 * iv["half"][:, j])),
                "max_gap_points": 100 * max(abs(c["coverage"] - level), abs(c["coverage_late"] - level)),
            }
        )
    return pd.DataFrame(out)
