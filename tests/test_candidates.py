"""The baselines as candidates of the fused model (issue 30): AR orders that reach the season, every
baseline's forecast as an exact stage of the fused design, and a choice by what the record claims."""

import numpy as np
import pytest

from nq_dagster.fusion.baselines import (
    _ar_forecast_levels,
    ar_by_aic,
    detect_season,
    forecasters,
    linear_block,
)
from nq_dagster.fusion.ridge import LinearStage
from nq_dagster.fusion.stream import N_LAGS
from nq_dagster.fusion.walkforward import FusionModel, choose_candidate, fit_rows, make_targets, walk_forward


def _hourly(n: int, seed: int = 0) -> np.ndarray:
    """An hourly temperature-like series: a daily cycle (two harmonics) over AR(1) weather."""
    rng = np.random.default_rng(seed)
    w = np.zeros(n)
    for t in range(1, n):
        w[t] = 0.9 * w[t - 1] + 0.3 * rng.standard_normal()
    t = np.arange(n)
    return 10 + 5 * np.sin(2 * np.pi * t / 24) + 2 * np.sin(4 * np.pi * t / 24 + 1) + w


def test_seasons_of_hourly_and_weekly_data_are_found_and_fit_the_design():
    """A daily season in hourly data (24) and a yearly one in weekly data (52.18 weeks, with a trend) are
    detected, and the design holds one season of changes for an AR that reaches it."""
    assert detect_season(_hourly(1500), 500) == 24
    rng = np.random.default_rng(1)
    t = np.arange(600)
    co2 = 315 + 0.03 * t + 3 * np.sin(2 * np.pi * t / 52.18) + 0.3 * rng.standard_normal(600)
    assert detect_season(co2, 500) in (52, 53)
    assert N_LAGS >= 53


def test_ar_by_aic_reaches_the_season():
    """On changes driven one day back (x_t - x_{t-1} depends on the change 24 hours earlier) the AIC order is
    at least 24 when the search may reach it, and its one-step forecast beats the best order up to 16."""
    rng = np.random.default_rng(2)
    n = 3000
    d = np.zeros(n)
    for t in range(24, n):
        d[t] = 0.7 * d[t - 24] + rng.standard_normal()
    params, p = ar_by_aic(d[:2000], 25)
    assert p >= 24 and abs(params[24] - 0.7) < 0.08
    short, q = ar_by_aic(d[:2000], 16)
    assert q <= 16

    def mse(par, order):
        t = np.arange(2000, n)
        pred = par[0] + np.column_stack([d[t - k] for k in range(1, order + 1)]) @ par[1:]
        return float(np.mean((d[t] - pred) ** 2))

    assert mse(params, p) < 0.7 * mse(short, q)


@pytest.mark.parametrize("horizon", [1, 3])
def test_every_baseline_is_an_exact_stage_of_the_design(horizon):
    """Each baseline's fit carries its forecast as a stage over its block of the fused design, and that stage
    gives the baseline's own forecast (the AR iterated over the horizon, persistence, seasonal naive) to
    1e-6 on every row it predicts."""
    v = _hourly(1200, seed=3)
    targets = make_targets(v, horizon)
    season = 24
    fits = forecasters(v, targets, horizon, 500, 50, 0.3, season=season)
    L = linear_block(v, season, horizon)
    lo, hi = 500, 1200 - horizon
    for name in ("persistence", "seasonal_naive", "ar_levels", "ar_diffs", "esn"):
        model, chg = fits[name](499 - horizon)
        assert model.candidate == name and len(model.stages) == 1, name
        if name == "esn":
            continue  # its stage is its readout: nothing else to compare with
        assert np.allclose(model.stages[0].predict(L[lo:hi]), chg(lo, hi), atol=1e-9), name
    # the stage equals the direct computation of each forecast
    assert np.allclose(
        chg_of(fits, "persistence", horizon)(lo, hi), v[lo:hi] - v[lo - horizon : hi - horizon]
    )
    seas = v[lo + horizon - season : hi + horizon - season] - v[lo:hi]
    assert np.allclose(chg_of(fits, "seasonal_naive", horizon)(lo, hi), seas)
    n, fit_end = fit_rows(499 - horizon, 50, 0.3)
    for name, diffs in (("ar_levels", False), ("ar_diffs", True)):
        model, chg = fits[name](499 - horizon)
        endog = np.diff(v[50 : fit_end + horizon]) if diffs else v[50 : fit_end + horizon]
        params, p = ar_by_aic(endog, min(25, len(endog) // 8))  # as the baseline searches
        assert p >= 24, name  # the AR reaches the season
        direct = _ar_forecast_levels(v, params, p, horizon, lo, hi, diffs)
        assert np.allclose(chg(lo, hi), direct, atol=1e-6 * np.abs(direct).max()), name


def chg_of(fits, name, horizon):
    return fits[name](499 - horizon)[1]


def test_choice_follows_the_direction_not_the_squared_error():
    """A candidate with the lower squared error but less accurate in direction loses to one that is always
    right in direction, though it is the simpler one (the squared-error rule alone would keep it)."""
    rng = np.random.default_rng(4)
    n = 600
    y = rng.standard_normal(n)
    band = np.full(n, 0.05)
    y_dir = np.where(y > band, 1, np.where(y < -band, -1, 0))
    sign_right = 0.1 * np.sign(y) + 0.02 * y  # squared error about 0.8, every up / down right
    noisy = y + 0.8 * rng.standard_normal(n)  # squared error 0.64, about a fifth of the directions wrong
    assert np.mean((y - noisy) ** 2) < np.mean((y - sign_right) ** 2)
    a, b = (FusionModel([], 1.0, 0, 0, [], candidate=c) for c in ("direction", "squared_error"))
    chosen = choose_candidate([(sign_right, 20, a), (noisy, 2, b)], y, y_dir, band)
    assert chosen.candidate == "direction"
    # equal in direction: squared error decides, as before
    chosen = choose_candidate([(noisy, 20, a), (noisy.copy(), 2, b)], y, y_dir, band)
    assert chosen.candidate == "squared_error"


def test_a_fixed_candidate_wins_where_the_design_cannot_forecast():
    """walk_forward with a design of noise columns and the true AR(1) forecast as a fixed candidate: every
    refit keeps the candidate, and the predictions are its forecast."""
    rng = np.random.default_rng(5)
    n = 1500
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = 0.8 * x[t - 1] + rng.standard_normal()
    targets = make_targets(x, 1)
    X = np.column_stack([rng.standard_normal((n, 5)), x])  # the last column: the level
    true = LinearStage(0, 0, np.zeros(1), np.ones(1), np.array([-0.2]), 0.0, 0.0, np.array([5]))
    pred, _ = walk_forward(
        X, targets, 1, 500, 250, n_base=5, base_variants=[np.arange(5)], extra=lambda te: [("ar1", [true], 2)]
    )
    assert set(pred.attrs["candidates"].values()) == {"ar1"}
    assert np.allclose(pred["pred_change"].to_numpy(), -0.2 * x[pred["row"].to_numpy()])
