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
- ets: additive Holt-Winters with a damped trend (exponential smoothing; additive season m where one is
  detected, Holt's damped trend otherwise), smoothing parameters and initial states by statsmodels'
  `ExponentialSmoothing` (heuristic initial states: with estimated ones a 46-step season is 50 parameters);
- theta: the Theta method (Hyndman & Billah: simple exponential smoothing plus half the linear trend's slope
  as drift, on the series with its additive seasonal indices removed where a season is detected);
- sarima: the airline model ARIMA(0,1,1)(0,1,1)_m, fitted by conditional sum of squares (the MA inversion is
  one IIR filter, `scipy.signal.lfilter`: milliseconds), only where a season m is detected;
- esn: a plain echo-state network (the source's analog reservoir, `stages.analog_states`: leaky tanh, driven
  by the standardised value and change, no spike encoding) read out directly by ridge regression, its penalty
  chosen on the held-out calibration rows;
- esn_tuned: the same ESN with its leak rate and spectral radius chosen on the first training stretch
  (`tuned_analog_states`: a seeded 4 x 3 grid, the readout's ridge penalty on held-out rows at each point),
  only where the choice differs from the configured reservoir; its forecast projected on the analog block
  (the stream holds the configured reservoir, not the tuned one), R^2 in `design_fidelity`.

Every baseline is also a candidate of the fused model (`fusion.pipeline`): each fit returns its forecast as
a `LinearStage` over a block of the fused model's design (`BLOCKS`: the linear block [N_LAGS recent changes,
the level, the seasonal change], or the analog reservoir's block), exactly (the AR's iterated forecast is an
affine function of its window; `_exact_stage` checks the projection to 1e-6), and predicts through that stage,
so the baseline the report scores and the candidate the fused model may choose are the same numbers.
A state-space baseline counts as many coefficients as its model has fitted parameters (`fit.parameters`),
not its projection's 58 weights, in the one-standard-error rule's "simplest".

The state-space forecasters (ets, theta, sarima) are fitted on the fit rows and filtered forward over every
row with those parameters (no refit per step; parameters re-estimated when the fit rows have doubled:
`STAT_REFIT_GROWTH`). Their forecasts depend on the whole past (a smoothed level, seasonal states), which no
finite block of the design holds, so what the report scores and the fused model may choose is the forecast's
least-squares projection on the linear block (the 56 recent changes, the level, the seasonal change) over the
fit rows (`_projected_stage`); `design_fidelity` (R^2 of that projection on the held-out rows, out of
sample for it) says how much of the state-space forecast the stream's form keeps. statsforecast's
AutoARIMA / AutoETS / AutoTheta were tried and not used: it requires pandas < 3 (the project runs pandas
3) and its seasonal AutoARIMA took 135 s per fit on 2,000 hourly rows (statsmodels' SARIMAX airline fit
120 s at m = 24, 406 s at m = 46).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.signal import lfilter

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
BLOCKS.update({"ets": "linear", "theta": "linear", "sarima": "linear"})
BLOCKS["esn"] = BLOCKS["esn_tuned"] = "analog"
STAT_REFIT_GROWTH = 2.0  # the state-space baselines re-estimate their parameters when the fit rows doubled
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


def holt_winters_params(y: np.ndarray, season: int) -> dict:
    """Additive Holt-Winters with a damped trend (and an additive season where `season` > 1) fitted to `y` by
    statsmodels (heuristic initial states where the series holds them, else estimated): the smoothing
    parameters alpha, beta, gamma, the damping phi and the initial level, trend and seasonal states."""
    import warnings

    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    m = season if season and len(y) >= 10 + 2 * season else 0
    init = "heuristic" if len(y) >= 10 + 2 * max(m, 1) else "estimated"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the optimiser on short fits
        fit = ExponentialSmoothing(
            y,
            trend="add",
            damped_trend=True,
            seasonal="add" if m else None,
            seasonal_periods=m or None,
            initialization_method=init,
        ).fit()
    p = fit.params
    return {
        "alpha": float(p["smoothing_level"]),
        "beta": float(p["smoothing_trend"]),
        "gamma": float(p["smoothing_seasonal"]) if m else 0.0,
        "phi": float(p["damping_trend"]),
        "level": float(p["initial_level"]),
        "trend": float(p["initial_trend"]),
        "seasons": np.asarray(p["initial_seasons"], dtype=float) if m else np.zeros(0),
    }


def holt_winters_filter(y: np.ndarray, par: dict, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Run the fitted Holt-Winters recursion over all of `y` from the parameters' initial states: the one-step
    fitted values (the forecast of y_t made at t - 1, as statsmodels' `fittedvalues`) and the forecasts of
    y_{t+horizon} made at t (the seasonal state of the same phase, at most one season old)."""
    a, b, g, phi = par["alpha"], par["beta"], par["gamma"], par["phi"]
    m = len(par["seasons"])
    n = len(y)
    seas = np.zeros(n + m)  # seas[t]: the seasonal state for time t (updated at t - m); seas[:m] initial
    seas[:m] = par["seasons"]
    level, trend = par["level"], par["trend"]
    fitted, ahead = np.empty(n), np.empty(n)
    damp = float(np.sum(phi ** np.arange(1, horizon + 1)))
    ahead_phase = horizon - m * ((horizon - 1) // m) if m else 0
    for t in range(n):
        base = level + phi * trend
        fitted[t] = base + seas[t]
        new_level = a * (y[t] - seas[t]) + (1 - a) * base
        trend = b * (new_level - level) + (1 - b) * phi * trend
        if m:
            seas[t + m] = g * (y[t] - base) + (1 - g) * seas[t]
        level = new_level
        ahead[t] = level + damp * trend + (seas[t + ahead_phase] if m else 0.0)
    return fitted, ahead


def seasonal_indices(y: np.ndarray, season: int, start: int) -> np.ndarray:
    """Additive seasonal indices (season,) of `y` whose first value is row `start`, by phase of the absolute
    row (row mod season): the mean deviation from a centred moving average of one season, centred to sum 0."""
    m = season
    kernel = np.ones(m + 1) / m if m % 2 == 0 else np.ones(m) / m
    if m % 2 == 0:
        kernel[0] = kernel[-1] = 0.5 / m  # the 2 x m moving average of an even season
    trend = np.convolve(y, kernel, "valid")
    off = (len(kernel) - 1) // 2
    dev = y[off : off + len(trend)] - trend
    phase = (np.arange(len(dev)) + start + off) % m
    idx = np.array([dev[phase == k].mean() if np.any(phase == k) else 0.0 for k in range(m)])
    return idx - idx.mean()


def theta_params(y: np.ndarray, season: int, start: int) -> dict:
    """The Theta method's parameters on `y` (first value at row `start`): additive seasonal indices (where a
    season is given), the drift b0 / 2 (half the slope of the least-squares line through the adjusted series)
    and the smoothing alpha minimising the one-step squared error of SES with that drift."""
    idx = seasonal_indices(y, season, start) if season and len(y) >= 3 * season else np.zeros(0)
    z = y - (idx[(np.arange(len(y)) + start) % season] if len(idx) else 0.0)
    drift = 0.5 * float(np.polyfit(np.arange(len(z)), z, 1)[0])

    def sse(alpha: float) -> float:
        lvl = _ses_levels(z, alpha, drift)
        return float(np.sum((z[1:] - lvl[:-1] - drift) ** 2))

    alpha = float(minimize_scalar(sse, bounds=(0.01, 1.0), method="bounded").x)
    return {"alpha": alpha, "drift": drift, "indices": idx, "season": season if len(idx) else 0}


def _ses_levels(z: np.ndarray, alpha: float, drift: float) -> np.ndarray:
    """SES levels with drift: l_t = alpha z_t + (1 - alpha)(l_{t-1} + drift), l_0 = z_0 (one IIR filter)."""
    u = alpha * z + (1 - alpha) * drift
    u[0] = z[0]
    return lfilter([1.0], [1.0, -(1 - alpha)], u)


def theta_forecast(v: np.ndarray, par: dict, horizon: int) -> np.ndarray:
    """Forecasts of v_{t+horizon} made at t, for every row (SES with drift from row 0, parameters fixed):
    l_t + drift x (horizon - 1 + 1 / alpha) plus the seasonal index of row t + horizon."""
    m, idx = par["season"], par["indices"]
    rows = np.arange(len(v))
    z = v - (idx[rows % m] if m else 0.0)
    level = _ses_levels(z, par["alpha"], par["drift"])
    out = level + par["drift"] * (horizon - 1 + 1 / par["alpha"])
    return out + (idx[(rows + horizon) % m] if m else 0.0)


def airline_params(y: np.ndarray, season: int) -> tuple[float, float]:
    """ARIMA(0,1,1)(0,1,1)_m (the airline model) by conditional sum of squares: (theta, Theta) minimising the
    squared innovations e of w_t = e_t + theta e_{t-1} + Theta e_{t-m} + theta Theta e_{t-m-1}, w the
    seasonal difference of the changes."""
    w = _airline_w(y, season)

    def css(p: np.ndarray) -> float:
        return float(np.sum(lfilter([1.0], _airline_ma(p[0], p[1], season), w) ** 2))

    res = minimize(css, np.array([-0.3, -0.5]), bounds=[(-0.98, 0.98)] * 2, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def _airline_w(y: np.ndarray, m: int) -> np.ndarray:
    d = np.diff(y)
    return d[m:] - d[:-m]


def _airline_ma(theta: float, big: float, m: int) -> np.ndarray:
    ma = np.zeros(m + 2)
    ma[0], ma[1], ma[m], ma[m + 1] = 1.0, theta, big, theta * big
    return ma


def airline_forecast(v: np.ndarray, params: tuple[float, float], season: int, horizon: int) -> np.ndarray:
    """Change forecasts v_{t+horizon} - v_t of the airline model with fixed parameters, for every row (the
    innovations filtered from row 0, the first m + 1 rows' forecasts 0); horizon < season."""
    theta, big = params
    m, n = season, len(v)
    e = np.zeros(n)
    e[m + 1 :] = lfilter([1.0], _airline_ma(theta, big, m), _airline_w(v, m))
    d = np.diff(v, prepend=v[0])  # d[t] = v_t - v_{t-1}
    t = np.arange(m + 1, n)
    total = np.zeros(len(t))
    for j in range(1, horizon + 1):
        # the change at t + j: the change one season earlier plus the forecast of w (future innovations 0)
        w_hat = big * e[t + j - m] + theta * big * e[t + j - m - 1] + (theta * e[t] if j == 1 else 0.0)
        total = total + d[t + j - m] + w_hat
    out = np.zeros(n)
    out[m + 1 :] = total
    return out


def _r2(target: np.ndarray, got: np.ndarray) -> float:
    """The share of `target`'s variance that `got` reproduces (1 - residual / total sum of squares)."""
    resid = target - got
    return 1.0 - float(resid @ resid) / max(float(np.sum((target - target.mean()) ** 2)), 1e-300)


def _projected_stage(L: np.ndarray, pred: np.ndarray, lo: int, hi: int) -> tuple[LinearStage, float]:
    """The least-squares affine function of the linear block L (rows lo .. hi - 1) closest to `pred` (the
    forecasts of those rows) and its R^2 (the share of the forecast's variance it reproduces)."""
    A = np.column_stack([L[lo:hi], np.ones(hi - lo)])
    scale = np.maximum(np.abs(A).max(axis=0), 1e-12)  # the level column is orders above the changes
    w = np.linalg.lstsq(A / scale, pred, rcond=None)[0] / scale
    resid = pred - A @ w
    r2 = 1.0 - float(resid @ resid) / max(float(np.sum((pred - pred.mean()) ** 2)), 1e-300)
    k = L.shape[1]
    cols = np.arange(k)
    return LinearStage(0, 0, np.zeros(k), np.ones(k), w[:-1].copy(), float(w[-1]), 0.0, cols), r2


TUNE_LEAKS = (0.1, 0.3, 0.6, 1.0)  # the tuned ESN's grid: leak rate x spectral radius (ridge: on held rows)
TUNE_RADII = (0.5, 0.95, 1.25)


def tuned_analog_states(
    values: np.ndarray, cfg, source: str, train_end: int, warmup: int, calibration_fraction: float, y_chg
) -> tuple[np.ndarray | None, dict]:
    """The tuned ESN's reservoir: the analog reservoir (same weights, inputs and seed; its recurrent weights
    rescaled to each spectral radius) with the leak rate and spectral radius of TUNE_LEAKS x TUNE_RADII whose
    ridge readout (penalty chosen on the same held-out rows) has the lowest held-out squared error on the
    first training stretch (rows up to `train_end`, the first refit's: no row a prediction is scored on).
    The 12 reservoirs run together in float64 numpy (one (12, size) x (size, size) product a step; torch's
    step loop, once per grid point, took minutes on the loaded machine). Returns (its design block over every
    row, or None where the choice is the configured reservoir itself: the plain ESN; the choice and the
    grid's held-out errors)."""
    from nq_dagster.neuromorphic.stages import (
        analog_drive,
        analog_inputs,
        analog_scaling,
        build_analog_reservoir,
    )

    v = np.asarray(values, dtype=float)
    n, fit_end = fit_rows(train_end, warmup, calibration_fraction)
    u = analog_inputs(v, np.diff(v, prepend=v[0]), analog_scaling(v))
    res = build_analog_reservoir(cfg, source)
    W = res.W.double().cpu().numpy()  # row convention: x @ W
    drive = analog_drive(u) @ res.W_in.double().cpu().numpy() + res.b.double().cpu().numpy()
    grid = [(leak, radius) for leak in TUNE_LEAKS for radius in TUNE_RADII]

    def run(points: list[tuple[float, float]], rows: int) -> np.ndarray:
        leak = np.array([p[0] for p in points])[:, None]
        gain = np.array([p[1] / cfg.spectral_radius for p in points])[:, None]
        x = np.zeros((len(points), W.shape[0]))
        out = np.empty((rows, len(points), W.shape[0]))
        for t in range(rows):
            x = x + leak * (np.tanh(drive[t] + gain * (x @ W)) - x)
            out[t] = x
        return out

    states = run(grid, n)
    errors = {}
    for g, (leak, radius) in enumerate(grid):
        X = np.column_stack([states[:, g], u[:n]])
        stage = RidgeBasis(X[warmup:fit_end], np.arange(X.shape[1])).fit(
            y_chg[warmup:fit_end], True, held=(X[fit_end:n], y_chg[fit_end:n])
        )
        errors[(leak, radius)] = float(np.mean((y_chg[fit_end:n] - stage.predict(X[fit_end:n])) ** 2))
    leak, radius = min(errors, key=errors.get)
    info = {
        "leak": leak,
        "spectral_radius": radius,
        "held_mse": {f"{k[0]}/{k[1]}": e for k, e in errors.items()},
    }
    if np.isclose(leak, cfg.leak) and np.isclose(radius, cfg.spectral_radius):
        return None, info
    return np.column_stack([run([(leak, radius)], len(v))[:, 0], u]), info


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
    tuned: np.ndarray | None = None,
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

    def state_space(name: str, estimate, forecast, first: int, parameters: int):
        """A state-space baseline: parameters estimated on the fit rows (again once those have doubled),
        forecasts filtered over every row with them, projected on the linear block (module docstring)."""
        fitted: list = []  # (fit_end at estimation, change forecasts of every row)

        def fit(train_end: int):
            n, fit_end = split(train_end)
            if not fitted or fit_end >= STAT_REFIT_GROWTH * fitted[-1][0]:
                # as the AR: values up to fit_end + horizon - 1 are those whose targets the fit rows realize
                fitted.append((fit_end, forecast(estimate(v[warmup : fit_end + horizon]))))
            chg = fitted[-1][1]
            lo = max(first, warmup)
            if fit_end - lo < 4 * (L.shape[1] + 1):
                return wrap(train_end, name, None, lambda a, b: chg[a:b])
            # projected on the fit rows only: the held-out rows that choose among candidates (and score the
            # projection's R^2) are out of sample for the projection too
            stage, _ = _projected_stage(L, chg[lo:fit_end], lo, fit_end)
            fit.fidelity[train_end] = _r2(chg[fit_end:n], stage.predict(L[fit_end:n]))
            return wrap(train_end, name, stage, lambda a, b: stage.predict(L[a:b]))

        fit.fidelity = {}
        fit.parameters = parameters
        return fit

    out["ets"] = state_space(
        "ets",
        lambda y: holt_winters_params(y, m),
        lambda par: np.concatenate([np.zeros(warmup), holt_winters_filter(v[warmup:], par, horizon)[1]]) - v,
        warmup + 2 * max(m, 1),
        4 + (m + 1 if m else 2),  # alpha, beta, gamma, phi and the initial level, trend and seasons
    )
    out["theta"] = state_space(
        "theta",
        lambda y: theta_params(y, m, warmup),
        lambda par: theta_forecast(v, par, horizon) - v,
        warmup + max(m, 1),
        2 + max(m - 1, 0),  # alpha, the drift and the seasonal indices
    )
    if m:
        out["sarima"] = state_space(
            "sarima",
            lambda y: airline_params(y, m),
            lambda par: airline_forecast(v, par, m, horizon),
            warmup + 2 * m + 2,
            2,  # theta and Theta
        )

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
    if tuned is not None:
        XT = np.asarray(tuned, dtype=float)
        sums_t = GramSums(XT, np.arange(XT.shape[1]), warmup)
        sums_p = sums  # the plain ESN's sums: the same columns and fit rows

        def esn_tuned(train_end: int):
            n, fit_end = split(train_end)
            readout = RidgeBasis(XT[warmup:fit_end], np.arange(XT.shape[1]), sums_t.upto(fit_end)).fit(
                y_chg[warmup:fit_end], True, held=(XT[fit_end:n], y_chg[fit_end:n])
            )
            # the tuned reservoir is not the stream's: its forecast projected on the analog block (which the
            # stream holds), over the rows this refit may read; the least penalty that fits them best
            # projected on the fit rows, its penalty chosen by how well it reproduces the tuned forecast on
            # the held-out rows (a near-zero penalty fits the fit rows and extrapolates wildly: on the Ikeda
            # map a projection over fit and held-out rows chose that and lost to the plain ESN)
            target = readout.predict(XT[warmup:n])
            cut = fit_end - warmup
            stage = RidgeBasis(X[warmup:fit_end], np.arange(X.shape[1]), sums_p.upto(fit_end)).fit(
                target[:cut], True, held=(X[fit_end:n], target[cut:])
            )
            esn_tuned.fidelity[train_end] = _r2(target[cut:], stage.predict(X[fit_end:n]))
            return wrap(train_end, "esn_tuned", stage, lambda lo, hi: stage.predict(X[lo:hi]))

        esn_tuned.fidelity = {}
        out["esn_tuned"] = esn_tuned
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
