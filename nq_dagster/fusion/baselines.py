"""Baselines a forecaster would respect, walk-forward on the same rows, scored by the same rule as the model.

Each baseline forecasts the change over the horizon; `walk_forward_forecaster` refits it at the model's refit
points on the model's fit rows, calibrates its error scale on the same held-out rows by the same log loss,
recalibrates it between refits the same way, and calls a direction the most likely class of its own
probabilities. So model and baselines differ in their forecast of the change and in nothing else.

- persistence: the last change repeats (x_{t+h} - x_t forecast as x_t - x_{t-h});
- seasonal naive: x_{t+h} forecast as the value one season earlier, x_{t+h-m}; m is the lag of the largest
  mean autocorrelation of the one-step changes at m, 2m, 3m, ..., beyond their first zero crossing after lag 1
  (up to min(n/3, 1000) lags of the first training stretch), used only when the autocorrelation at m exceeds
  0.3 and the 1 % significance bound; where the changes show none, the same on their 4-step moving average
  (seasons of 16 steps or more);
- ar_levels / ar_diffs: AR(p) with a constant on the levels / on the one-step changes by least squares, p
  chosen by AIC (on one common sample, `ar_by_aic`) up to MAX_AR_ORDER or, where a season m is detected, up to
  m + 1 so that the AR reaches one season back (within the lags the design holds, `stream.N_LAGS`), iterated
  over the horizon;
- esn: a plain echo-state network (the source's analog reservoir, `stages.analog_states`: leaky tanh, driven
  by the standardised value and change, no spike encoding) read out directly by ridge regression, its penalty
  chosen on the held-out calibration rows.

Every baseline is also a candidate of the fused model (`fusion.pipeline`): each fit returns its forecast as
a `LinearStage` over a block of the fused model's design (`BLOCKS`: the linear block [N_LAGS recent changes,
the level, the seasonal change], or the analog reservoir's block), exactly (the AR's iterated forecast is an
affine function of its window; `_exact_stage` checks the projection to 1e-6), and predicts through that stage,
so the baseline the report scores and the candidate the fused model may choose are the same numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.fusion.ridge import LinearStage
from nq_dagster.fusion.stream import N_LAGS, seasonal_column
from nq_dagster.fusion.walkforward import (
    FusionModel,
    GramSums,
    RidgeBasis,
    calibrate,
    fit_rows,
    lag_matrix,
    walk_forward_forecaster,
)

MAX_AR_ORDER = 16
# the design block each baseline's stage reads: "linear" = [N_LAGS recent changes, level, seasonal change]
BLOCKS = {"persistence": "linear", "seasonal_naive": "linear", "ar_levels": "linear", "ar_diffs": "linear"}
BLOCKS["esn"] = "analog"
SEASON_MIN_ACF = 0.3
SMOOTH_WIDTH = 4  # the second look for a season: changes averaged over this many steps


def detect_season(values: np.ndarray, upto: int) -> int | None:
    """The season m of the first `upto` values (see the module), or None. Looked for in the one-step changes,
    then (where none is found) in their moving average over SMOOTH_WIDTH steps, seasons of at least
    4 x SMOOTH_WIDTH steps only: a slow season (a year of weekly CO2: changes of +-0.4 ppm a week under as
    much weekly noise, autocorrelation 0.27 at 52) stands out once the week-to-week noise is averaged."""
    d = np.diff(np.asarray(values[:upto], dtype=float))
    if len(d) < 12 or np.std(d) == 0:
        return None
    m = _season_of_changes(d, 1)
    if m is None and len(d) > 3 * 4 * SMOOTH_WIDTH:
        m = _season_of_changes(np.convolve(d, np.ones(SMOOTH_WIDTH) / SMOOTH_WIDTH, "valid"), SMOOTH_WIDTH)
    return m


def _season_of_changes(d: np.ndarray, width: int) -> int | None:
    from statsmodels.tsa.stattools import acf

    n = len(d)
    max_lag = min(n // 3, 1000)
    if max_lag < 4 or np.std(d) == 0:
        return None
    r = acf(d, nlags=max_lag, fft=True)
    neg = np.nonzero(r[2:] < 0)[0]  # lag 1 left out: differencing makes it negative for any noisy series
    if not len(neg):
        return None  # no decay below zero: a trend or a smooth drift, not a season
    # past the first zero crossing (short-lag correlation is not a season), and beyond the smoothing's reach
    start = max(int(neg[0]) + 3, 4 * width if width > 1 else 0)
    if start > max_lag:
        return None
    # a season correlates at all its multiples: score a lag by the mean autocorrelation at m, 2m, 3m, ...
    # (which sharpens the flat top of a single peak, where one-lag noise would pick m +- 1); among near-equal
    # scores the shortest lag wins (2m scores like m)
    score = np.array([r[m::m].mean() for m in range(start, max_lag + 1)])
    m = int(start + np.nonzero(score >= score.max() - 0.02)[0][0])
    # a moving average of w values widens the sampling spread of white noise's autocorrelation by ~sqrt(w)
    return m if r[m] > max(SEASON_MIN_ACF, 2.58 * np.sqrt(width) / np.sqrt(n)) else None


def season_of(values: np.ndarray, train_min: int, horizon: int) -> int:
    """The season of a source's first training stretch for forecasts `horizon` ahead, or 0 (none, or one no
    longer than the horizon)."""
    m = detect_season(values, train_min - horizon + 1)
    return m if m is not None and m > horizon else 0


def ar_by_aic(endog: np.ndarray, maxlag: int) -> tuple[np.ndarray, int]:
    """AR(p) with a constant by least squares, p in 1..maxlag chosen by AIC on one common sample (the rows
    after the first maxlag, as statsmodels' `ar_select_order`), then refitted on every row it can use. Returns
    (params [constant, a_1 .. a_p], p). One QR of the longest lag matrix gives every nested order's residual
    sum of squares, so a season-long maxlag (53 on weekly data) costs one fit, not 53."""
    y = np.asarray(endog, dtype=float)
    maxlag = max(1, min(maxlag, len(y) // 2 - 1))
    n = len(y) - maxlag
    Z = np.column_stack([np.ones(n)] + [y[maxlag - k : len(y) - k] for k in range(1, maxlag + 1)])
    target = y[maxlag:]
    qy = np.linalg.qr(Z, mode="reduced")[0].T @ target
    rss = np.maximum(float(target @ target) - np.cumsum(qy**2), 1e-300)  # rss[j]: constant and lags 1..j
    aic = n * np.log(rss / n) + 2.0 * (np.arange(maxlag + 1) + 1)
    p = int(np.argmin(aic[1:])) + 1
    A = np.column_stack([np.ones(len(y) - p)] + [y[p - k : len(y) - k] for k in range(1, p + 1)])
    return np.linalg.lstsq(A, y[p:], rcond=None)[0], p


def _ar_forecast_levels(
    v: np.ndarray, params: np.ndarray, p: int, horizon: int, lo: int, hi: int, diffs: bool
) -> np.ndarray:
    """Change forecasts x_{t+h} - x_t for t in [lo, hi) from AR(p) coefficients (const first), h steps."""
    series = np.diff(v, prepend=v[0]) if diffs else v  # AR on the changes (first change 0) or on the levels
    t = np.arange(lo, hi)
    idx = t[:, None] - np.arange(p)[None, :]  # history window, newest first: series_{t}, series_{t-1}, ...
    hist = np.where(idx >= 0, series[np.clip(idx, 0, None)], series[0])
    coef = np.asarray(params[1 : p + 1], dtype=float)
    total = np.zeros(len(t))
    for _ in range(horizon):
        nxt = params[0] + hist @ coef
        total = total + nxt if diffs else nxt
        hist = np.column_stack([nxt, hist[:, :-1]])
    return total if diffs else total - v[t]


def linear_block(values: np.ndarray, season: int, horizon: int) -> np.ndarray:
    """The fused design's linear block (T, N_LAGS + 2): N_LAGS recent changes, the level, the seasonal
    change."""
    return np.column_stack([lag_matrix(values, N_LAGS, level=True), seasonal_column(values, season, horizon)])


def _exact_stage(L: np.ndarray, pred: np.ndarray, lo: int, hi: int, cols: np.ndarray) -> LinearStage | None:
    """The affine function of L[:, cols] that equals `pred` (the forecasts of rows lo .. hi - 1) on every one
    of those rows (to 1e-6 of their largest size), or None where the forecast is not such a function."""
    if hi - lo < len(cols) + 2:
        return None
    rows = np.arange(max(lo, hi - 4 * (len(cols) + 1)), hi)  # an affine map is fixed by a few generic rows
    A = np.column_stack([L[rows][:, cols], np.ones(len(rows))])
    w = np.linalg.lstsq(A, pred[rows - lo], rcond=None)[0]
    got = L[lo:hi][:, cols] @ w[:-1] + w[-1]
    if not np.all(np.abs(got - pred) <= 1e-6 * max(float(np.abs(pred).max()), 1e-12)):
        return None
    k = len(cols)
    return LinearStage(0, 0, np.zeros(k), np.ones(k), w[:-1].copy(), float(w[-1]), 0.0, cols.copy())


def shifted(stage: LinearStage, offset: int) -> LinearStage:
    """The same stage reading its columns `offset` further right (a block's stage inside the whole design)."""
    cols = None if stage.columns is None else np.asarray(stage.columns) + offset
    return LinearStage(
        stage.start + offset,
        stage.stop + offset,
        stage.mean,
        stage.scale,
        stage.coef,
        stage.intercept,
        stage.alpha,
        cols,
    )


def forecasters(
    values: np.ndarray,
    targets: pd.DataFrame,
    horizon: int,
    train_min: int,
    warmup: int,
    calibration_fraction: float,
    analog: np.ndarray | None = None,
    season: int | None = None,
    max_lag: int = N_LAGS,
) -> dict:
    """name -> fit(train_end) as `walk_forward_forecaster` takes it; seasonal naive only where a season is
    found (`season`: as `season_of` finds it, computed here when not given). `max_lag`: the recent changes a
    stream holds (`stream.N_LAGS`, fewer for a tiny feature window), so AR orders stay within the design.
    Each fit's model holds its forecast as one stage over its block (`BLOCKS`) and `candidate` = its name, or
    no stage where the forecast is not a function of the block (a horizon beyond the lags)."""
    v = np.asarray(values, dtype=float)
    T = len(v)
    y_chg, y_dir = targets["change"].to_numpy(), targets["direction"].to_numpy()
    band = targets["band"].to_numpy()
    m = season_of(v, train_min, horizon) if season is None else season
    L = linear_block(v, m, horizon)
    lin_cols = np.arange(L.shape[1])

    def split(train_end: int) -> tuple[int, int]:
        return fit_rows(train_end, warmup, calibration_fraction)

    def wrap(train_end: int, name: str, stage: LinearStage | None, chg_fn) -> tuple[FusionModel, object]:
        n, fit_end = split(train_end)
        model = FusionModel([stage] if stage is not None else [], 1.0, train_end, fit_end, [], candidate=name)
        calibrate(model, chg_fn(fit_end, n), y_chg[fit_end:n], y_dir[fit_end:n], band[fit_end:n])
        return model, chg_fn

    def linear(train_end: int, name: str, chg_fn, first: int) -> tuple[FusionModel, object]:
        """A forecast of the linear block: through its exact stage where there is one."""
        n = split(train_end)[0]
        lo = max(first, warmup)
        stage = _exact_stage(L, chg_fn(lo, n), lo, n, lin_cols) if lo < n else None
        if stage is not None:
            return wrap(train_end, name, stage, lambda a, b: stage.predict(L[a:b]))
        return wrap(train_end, name, None, chg_fn)

    last = np.zeros(T)
    last[horizon:] = v[horizon:] - v[:-horizon]
    out = {"persistence": lambda te: linear(te, "persistence", lambda lo, hi: last[lo:hi], horizon)}
    if m:
        seas = L[:, -1]  # the fused model's seasonal design column
        out["seasonal_naive"] = lambda te: linear(te, "seasonal_naive", lambda lo, hi: seas[lo:hi], m)

    def ar(diffs: bool):
        name = "ar_diffs" if diffs else "ar_levels"

        def fit(train_end: int):
            _, fit_end = split(train_end)
            # fit on the model's fit rows: values up to fit_end + horizon - 1 are those whose targets it fits
            endog = np.diff(v[warmup : fit_end + horizon]) if diffs else v[warmup : fit_end + horizon]
            # long enough to reach one season back; the design holds max_lag changes (and the level)
            reach = min(max(MAX_AR_ORDER, m + 1), max_lag if diffs else max_lag + 1)
            params, p = ar_by_aic(endog, max(1, min(reach, len(endog) // 8)))
            chg = lambda lo, hi: _ar_forecast_levels(v, params, p, horizon, lo, hi, diffs)  # noqa: E731
            return linear(train_end, name, chg, p + 1)

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
        return wrap(train_end, "esn", stage, lambda lo, hi: stage.predict(X[lo:hi]))

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
    fits: dict | None = None,
) -> tuple[dict[str, pd.DataFrame], int | None]:
    """Walk-forward prediction frames (as `walk_forward` returns them) of every baseline, and the season used
    by seasonal naive (None: no season detected, no seasonal baseline). `fits`: the `forecasters` to run (the
    fused model's candidates, already fitted at the same refit points), built here when not given."""
    if season is None:
        season = season_of(values, train_min, horizon)
    if fits is None:
        fits = forecasters(values, targets, horizon, train_min, warmup, calibration_fraction, analog, season)
    frames = {
        name: walk_forward_forecaster(fit, targets, horizon, train_min, refit_every)[0]
        for name, fit in fits.items()
    }
    return frames, (season or None)
