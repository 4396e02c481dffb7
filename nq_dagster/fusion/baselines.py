"""Baselines a forecaster would respect, walk-forward on the same rows, scored by the same rule as the model.

Each baseline forecasts the change over the horizon; `walk_forward_forecaster` refits it at the model's refit
points on the model's fit rows, calibrates its error scale on the same held-out rows by the same log loss,
recalibrates it between refits the same way, and calls a direction the most likely class of its own
probabilities. So model and baselines differ in their forecast of the change and in nothing else.

- persistence: the last change repeats (x_{t+h} - x_t forecast as x_t - x_{t-h});
- seasonal naive: x_{t+h} forecast as the value one season earlier, x_{t+h-m}; m is the lag of the largest
  mean autocorrelation of the one-step changes at m, 2m, 3m, ..., beyond their first zero crossing after lag 1
  (up to min(n/3, 1000) lags of the first training stretch), used only when the autocorrelation at m exceeds
  0.3 and the 1 % significance bound;
- ar_levels / ar_diffs: AR(p) with a constant on the levels / on the one-step changes, p chosen by AIC up to
  MAX_AR_ORDER (statsmodels `ar_select_order`, `AutoReg`), iterated over the horizon;
- esn: a plain echo-state network (the source's analog reservoir, `stages.analog_states`: leaky tanh, driven
  by the standardised value and change, no spike encoding) read out directly by ridge regression, its penalty
  chosen on the held-out calibration rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.stream import seasonal_column
from nq_dagster.fusion.walkforward import (
    FusionModel,
    GramSums,
    RidgeBasis,
    calibrate,
    fit_rows,
    walk_forward_forecaster,
)

MAX_AR_ORDER = 16
SEASON_MIN_ACF = 0.3


def detect_season(values: np.ndarray, upto: int) -> int | None:
    """The season m of the first `upto` values (see the module), or None."""
    from statsmodels.tsa.stattools import acf

    d = np.diff(np.asarray(values[:upto], dtype=float))
    n = len(d)
    max_lag = min(n // 3, 1000)
    if max_lag < 4 or np.std(d) == 0:
        return None
    r = acf(d, nlags=max_lag, fft=True)
    neg = np.nonzero(r[2:] < 0)[0]  # lag 1 left out: differencing makes it negative for any noisy series
    if not len(neg):
        return None  # no decay below zero: a trend or a smooth drift, not a season
    start = int(neg[0]) + 3  # past the first zero crossing (short-lag correlation is not a season)
    if start > max_lag:
        return None
    # a season correlates at all its multiples: score a lag by the mean autocorrelation at m, 2m, 3m, ...
    # (which sharpens the flat top of a single peak, where one-lag noise would pick m +- 1); among near-equal
    # scores the shortest lag wins (2m scores like m)
    score = np.array([r[m::m].mean() for m in range(start, max_lag + 1)])
    m = int(start + np.nonzero(score >= score.max() - 0.02)[0][0])
    return m if r[m] > max(SEASON_MIN_ACF, 2.58 / np.sqrt(n)) else None


def season_of(values: np.ndarray, train_min: int, horizon: int) -> int:
    """The season of a source's first training stretch for forecasts `horizon` ahead, or 0 (none, or one no
    longer than the horizon)."""
    m = detect_season(values, train_min - horizon + 1)
    return m if m is not None and m > horizon else 0


def _ar_forecast_levels(
    v: np.ndarray, params: np.ndarray, lags: list[int], horizon: int, lo: int, hi: int, diffs: bool
) -> np.ndarray:
    """Change forecasts x_{t+h} - x_t for t in [lo, hi) from AR coefficients (const first), over h steps."""
    series = np.diff(v, prepend=v[0]) if diffs else v  # AR on the changes (first change 0) or on the levels
    p = max(lags)
    t = np.arange(lo, hi)
    idx = t[:, None] - np.arange(p)[None, :]  # history window, newest first: series_{t}, series_{t-1}, ...
    hist = np.where(idx >= 0, series[np.clip(idx, 0, None)], series[0])
    coef = np.zeros(p)
    coef[np.asarray(lags) - 1] = params[1:]
    total = np.zeros(len(t))
    for _ in range(horizon):
        nxt = params[0] + hist @ coef
        total = total + nxt if diffs else nxt
        hist = np.column_stack([nxt, hist[:, :-1]])
    return total if diffs else total - v[t]


def forecasters(
    values: np.ndarray,
    targets: pd.DataFrame,
    horizon: int,
    train_min: int,
    warmup: int,
    calibration_fraction: float,
    analog: np.ndarray | None = None,
    season: int | None = None,
) -> dict:
    """name -> fit(train_end) as `walk_forward_forecaster` takes it; seasonal naive only where a season is
    found (`season`: as `season_of` finds it, computed here when not given)."""
    v = np.asarray(values, dtype=float)
    T = len(v)
    y_chg, y_dir = targets["change"].to_numpy(), targets["direction"].to_numpy()
    band = targets["band"].to_numpy()

    def split(train_end: int) -> tuple[int, int]:
        return fit_rows(train_end, warmup, calibration_fraction)

    def wrap(train_end: int, chg_fn) -> tuple[FusionModel, object]:
        n, fit_end = split(train_end)
        model = FusionModel([], 1.0, train_end, fit_end, [])
        calibrate(model, chg_fn(fit_end, n), y_chg[fit_end:n], y_dir[fit_end:n], band[fit_end:n])
        return model, chg_fn

    last = np.zeros(T)
    last[horizon:] = v[horizon:] - v[:-horizon]
    out = {"persistence": lambda te: wrap(te, lambda lo, hi: last[lo:hi])}

    m = season_of(v, train_min, horizon) if season is None else season
    if m:
        seas = seasonal_column(v, m, horizon)  # the fused model's seasonal design column
        out["seasonal_naive"] = lambda te: wrap(te, lambda lo, hi: seas[lo:hi])

    def ar(diffs: bool):
        from statsmodels.tsa.ar_model import AutoReg, ar_select_order

        def fit(train_end: int):
            n, fit_end = split(train_end)
            # fit on the model's fit rows: values up to fit_end + horizon - 1 are those whose targets it fits
            endog = np.diff(v[warmup : fit_end + horizon]) if diffs else v[warmup : fit_end + horizon]
            maxlag = max(1, min(MAX_AR_ORDER, len(endog) // 8))
            sel = ar_select_order(endog, maxlag, ic="aic", trend="c")
            lags = list(sel.ar_lags or [1])
            params = np.asarray(AutoReg(endog, lags=lags, trend="c").fit().params, dtype=float)
            return wrap(
                train_end, lambda lo, hi: _ar_forecast_levels(v, params, lags, horizon, lo, hi, diffs)
            )

        return fit

    out["ar_levels"], out["ar_diffs"] = ar(False), ar(True)

    if analog is None:
        from nq_dagster.config import PipelineConfig
        from nq_dagster.neuromorphic.stages import analog_states

        analog = analog_states(v, PipelineConfig(), "esn-baseline")[0]
    X = np.asarray(analog, dtype=float)
    sums = GramSums(X, np.arange(X.shape[1]), warmup)  # the fit rows only grow: Gram matrices in O(new rows)

    def esn(train_end: int):
        n, fit_end = split(train_end)
        # readout penalty by squared error on the held-out rows (a reservoir's states are nearly collinear on
        # short fits, where leave-one-out picks penalties that extrapolate badly)
        stage = RidgeBasis(X[warmup:fit_end], np.arange(X.shape[1]), sums.upto(fit_end)).fit(
            y_chg[warmup:fit_end], True, held=(X[fit_end:n], y_chg[fit_end:n])
        )
        return wrap(train_end, lambda lo, hi: stage.predict(X[lo:hi]))

    out["esn"] = esn
    return out


def run_baselines(
    values: np.ndarray,
    targets: pd.DataFrame,
    horizon: int,
    train_min: int,
    refit_every: int,
    warmup: int,
    calibration_fraction: float,
    analog: np.ndarray | None = None,
    season: int | None = None,
) -> tuple[dict[str, pd.DataFrame], int | None]:
    """Walk-forward prediction frames (as `walk_forward` returns them) of every baseline, and the season used
    by seasonal naive (None: no season detected, no seasonal baseline)."""
    if season is None:
        season = season_of(values, train_min, horizon)
    fits = forecasters(values, targets, horizon, train_min, warmup, calibration_fraction, analog, season)
    frames = {
        name: walk_forward_forecaster(fit, targets, horizon, train_min, refit_every)[0]
        for name, fit in fits.items()
    }
    return frames, (season or None)
