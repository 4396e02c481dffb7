"""Prediction intervals for the change, calibrated out of sample and kept calibrated as outcomes arrive.

Each record's interval at level L is predicted_change +- q x s, where s is the model's calibrated error scale
for that row and q is a conformal quantile of normalized scores |realized change - predicted_change| / s:

- split conformal (Vovk et al. 2005; Lei et al. 2018): the scores are those of the latest `WINDOW` realized
  walk-forward predictions, every one made by a model that had not seen its outcome (held out), and q is their
  ceil((n + 1) x level) / n empirical quantile;
- adaptive conformal inference (ACI, Gibbs and Candes 2021, "Adaptive conformal inference under distribution
  shift"): the level used is 1 - alpha_t, and each realized outcome moves alpha_t by
  gamma x (1 - L - miss_t), miss_t = 1 when the outcome fell outside the interval stated for it, so long-run
  coverage stays at L even when the scores' distribution drifts.

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

from nq_dagster.fusion.record import coherent_change

LEVELS = (0.8, 0.95)  # the intervals every record carries (interval_80, interval_95)
WINDOW = 250  # realized scores kept: the conformal set (8 bytes each, twice: arrival order and sorted)
# ACI's step size: Gibbs and Candes 2021 use 0.005; on the demo's market source (bench/RESULTS.md) 0.005 left
# the last 30 % at 0.78 / 0.94 for 0.8 / 0.95, 0.02 holds both within a point; 0.05 makes a 95 % interval
# jump to the largest score after every miss
GAMMA = 0.02
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


def initial_state(horizon: int, levels=LEVELS) -> IntervalState:
    lv = np.asarray(levels, dtype=float)
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
    )


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


def step(st: IntervalState, x: float, change: float, scale: float) -> tuple[IntervalState, np.ndarray]:
    """Row t with value x: the prediction of row t - h is realized by it (scored, alpha_t moved), then row t's
    prediction (its predicted change and error scale) gets its half-widths (returned, one per level) and waits
    for its outcome. Returns a new state; `st` is left as it was."""
    L = len(st.levels)
    alpha, scores, ranked, pending = st.alpha, st.scores, st.ranked, st.pending
    realized, covered = st.realized, st.covered
    if len(pending) >= st.horizon:
        x0, mu, s, *half = pending[0]
        err = abs((x - x0) - mu)
        miss = err > np.asarray(half)
        alpha = alpha + GAMMA * ((1.0 - st.levels) - miss)
        score = err / max(s, 1e-12)
        if len(scores) >= WINDOW:
            ranked = np.delete(ranked, min(np.searchsorted(ranked, scores[0]), len(ranked) - 1))
            scores = scores[1:]
        scores = np.append(scores, score)
        ranked = np.insert(ranked, np.searchsorted(ranked, score), score)
        pending = pending[1:]
        realized, covered = realized + 1, covered + ~miss
    half_w = quantile_factor(ranked, alpha) * max(scale, 0.0)
    row = np.empty((1, 3 + L))
    row[0, :3], row[0, 3:] = (x, change, scale), half_w
    pending = np.vstack([pending, row])
    new = IntervalState(st.horizon, st.levels, alpha, scores, ranked, pending, half_w, realized, covered)
    return new, half_w


def interval_pass(
    values: np.ndarray, rows: np.ndarray, change: np.ndarray, scale: np.ndarray, horizon: int
) -> tuple[np.ndarray, IntervalState]:
    """Training's pass over the walk-forward predictions (contiguous rows, in order): the half-widths per row
    (n, L) and the state after the last row, which a stream continues."""
    rows = np.asarray(rows)
    if len(rows) and np.any(np.diff(rows) != 1):
        raise ValueError("interval_pass needs the walk-forward rows contiguous and in order")
    st = initial_state(horizon)
    out = np.empty((len(rows), len(st.levels)))
    v = np.asarray(values, dtype=float)
    for i, (r, mu, s) in enumerate(
        zip(rows.tolist(), np.asarray(change).tolist(), np.asarray(scale).tolist(), strict=True)
    ):
        st, out[i] = step(st, float(v[r]), mu, s)
    return out, st


def walk_forward_intervals(fused, targets, values: np.ndarray, horizon: int) -> dict:
    """The intervals of a walk-forward prediction frame (`walkforward.walk_forward`'s): each row's centre
    (the record's predicted change, `record.coherent_change`), half-widths (n, L) and the state a stream
    continues."""
    rows = fused["row"].to_numpy()
    scale = fused["error_scale"].to_numpy(dtype=float)
    centre = coherent_change(
        fused[["p_down", "p_hold", "p_up"]].to_numpy(),
        targets["band"].to_numpy()[rows],
        scale,
        fused["pred_change"].to_numpy(dtype=float),
    )
    half, state = interval_pass(values, rows, centre, scale, horizon)
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
