"""The walk-forward engine: the ridge against scikit-learn's RidgeCV, the training schedule, recalibration
that follows a drift of the error's size, and the baselines on processes whose best forecast is known."""

import numpy as np
import pandas as pd
import pytest

from nq_dagster.fusion.baselines import detect_season, run_baselines
from nq_dagster.fusion.ridge import ALPHAS, RidgeBasis
from nq_dagster.fusion.walkforward import (
    MIN_ROWS,
    make_targets,
    training_schedule,
    walk_forward,
)
from nq_dagster.validation.stats import reliability


@pytest.mark.parametrize("n,p", [(60, 120), (800, 40), (3000, 200)])
def test_ridge_basis_equals_sklearn_ridgecv(n, p):
    """Same penalty (exact leave-one-out among ALPHAS) and the same predictions to 1e-9, with and without
    intercept, also with more columns than rows and nearly collinear columns."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(n)
    base = rng.standard_normal((n, 8))
    X = base @ rng.standard_normal((8, p)) + 0.05 * rng.standard_normal((n, p)) + 3.0  # rank ~8 plus noise
    y = base[:, 0] - 0.5 * base[:, 1] + 0.3 * rng.standard_normal(n) + 1.0
    Xt = X[: n // 2]
    basis = RidgeBasis(X, np.arange(p))
    for intercept in (False, True):
        ours = basis.fit(y, intercept)
        sc = StandardScaler().fit(X)
        ref = RidgeCV(alphas=ALPHAS, fit_intercept=intercept).fit(sc.transform(X), y)
        assert ours.alpha == ref.alpha_
        assert np.abs(ours.predict(Xt) - ref.predict(sc.transform(Xt))).max() < 1e-9 * np.abs(y).max()


def test_training_schedule_scales_with_length():
    with pytest.raises(ValueError, match=f"has 149 rows; training needs at least {MIN_ROWS}"):
        training_schedule(149, 500, 250)
    s = training_schedule(150, 500, 250)
    assert (s.train_min, s.warmup) == (100, 20) and s.rows - s.train_min == 50
    s = training_schedule(309, 500, 250)  # a yearly series of 309 points
    assert s.train_min == 154 and 10 <= s.refit_every <= 40
    s = training_schedule(1000, 500, 250)  # at least 2 x train_min rows: the config holds
    assert (s.train_min, s.refit_every, s.warmup) == (500, 250, 50)


def _drift_series(n=6000, seed=0):
    """AR(1) changes whose noise grows threefold over the last 40 % (a regime the first models never saw)."""
    rng = np.random.default_rng(seed)
    sd = np.where(np.arange(n) < int(0.6 * n), 1.0, 3.0)
    d = np.zeros(n)
    for t in range(1, n):
        d[t] = 0.5 * d[t - 1] + sd[t] * rng.standard_normal()
    return np.cumsum(d)


def test_recalibration_keeps_late_calibration_under_drift():
    """Between refits the error scale is refitted on realized outcomes: the last 30 % stay calibrated (ECE
    <= 0.05 over > 1,500 predictions) where a scale fixed at each refit is measurably worse."""
    v = _drift_series()
    targets = make_targets(v, 1, 0.1, 50)
    X = np.column_stack([np.diff(v, prepend=v[0]), np.r_[0, np.diff(v, prepend=v[0])[:-1]]])
    kw = dict(train_min=500, refit_every=1000, warmup=50)

    def late_ece(pred):
        y = targets["direction"].to_numpy()[pred["row"]]
        ok = y != -9
        late = pred["row"].to_numpy()[ok] >= int(0.7 * len(v))
        corr = pred["direction"].to_numpy()[ok] == y[ok]
        assert late.sum() > 1500
        return reliability(pred["confidence"].to_numpy()[ok][late], corr[late])[0]

    with_recal, _ = walk_forward(X, targets, **kw)
    fixed, _ = walk_forward(X, targets, recalibrate_every=10**9, **kw)
    assert late_ece(with_recal) <= 0.05
    # a quarter worse or more without recalibration (0.033 against 0.024 with design 5's model; 0.034 / 0.024
    # with design 4's: the difference, not its size, is the property)
    assert late_ece(fixed) > 1.25 * late_ece(with_recal)


def test_ar_levels_baseline_matches_the_true_process():
    """On a stationary AR(2) in levels the AIC-chosen AR on levels forecasts the change almost as well as the
    true coefficients do (squared error within 3 %), and far better than persistence."""
    rng = np.random.default_rng(3)
    n = 3000
    x = np.zeros(n)
    for t in range(2, n):
        x[t] = 0.6 * x[t - 1] + 0.25 * x[t - 2] + rng.standard_normal()
    targets = make_targets(x, 1, 0.1, 50)
    frames, _ = run_baselines(x, targets, 1, 500, 250, 50, 0.3)
    rows = frames["ar_levels"]["row"].to_numpy()
    rows = rows[rows < n - 1]
    truth = 0.6 * x[rows] + 0.25 * x[rows - 1] - x[rows]
    y = targets["change"].to_numpy()[rows]
    mse = lambda f: float(np.mean((f.set_index("row").loc[rows, "pred_change"].to_numpy() - y) ** 2))  # noqa: E731
    assert mse(frames["ar_levels"]) <= 1.03 * float(np.mean((truth - y) ** 2))
    assert mse(frames["ar_levels"]) < 0.8 * mse(frames["persistence"])


def test_season_is_detected_only_where_there_is_one():
    rng = np.random.default_rng(5)
    t = np.arange(2000)
    seasonal = 10 * np.sin(2 * np.pi * t / 48) + 0.3 * rng.standard_normal(2000)
    assert detect_season(seasonal, 1000) == 48
    assert detect_season(np.cumsum(rng.standard_normal(2000)), 1000) is None


def test_baselines_are_walk_forward():
    """Changing the series from row k on leaves every baseline's predictions before k unchanged."""
    v = _drift_series(2000, seed=2)
    k = 1400
    other = v.copy()
    other[k:] += 50.0
    a, _ = run_baselines(v, make_targets(v), 1, 500, 250, 50, 0.3)
    b, _ = run_baselines(other, make_targets(other), 1, 500, 250, 50, 0.3)
    for name in a:
        before = a[name]["row"] < k - 1  # row k - 1 forecasts x_k, which changed
        pd.testing.assert_frame_equal(a[name][before], b[name][before], check_exact=True)
        assert not a[name][~before]["pred_change"].equals(b[name][~before]["pred_change"]), name


@pytest.mark.parametrize("horizon", [1, 3])
def test_seasonal_column_streams_as_the_batch_computes_it(horizon):
    """The seasonal design column x_{t+h-m} - x_t, advanced tick by tick from a state cut after row k (short
    of a season, and past several), equals the column over the whole series; the last row's too."""
    from dataclasses import replace

    from nq_dagster.fusion.stream import StreamState, _seasonal_step, latest_design, seasonal_column

    rng = np.random.default_rng(horizon)
    v = np.sin(np.arange(400) * 2 * np.pi / 24) + 0.1 * rng.standard_normal(400)
    m = 24
    want = seasonal_column(v, m, horizon)
    assert want[m - horizon] == v[0] - v[m - horizon] and not want[: m - horizon].any()
    for k in (10, 200):  # the history seen at training: rows < k
        ring = v[:k][-(m - horizon + 1) :].copy()
        st = StreamState(
            k,
            0,
            v[:k][-49:],
            np.zeros(499),
            np.zeros(499),
            None,
            np.zeros((31, 2), np.float32),
            np.zeros(1),
            np.zeros((31, 4)),
            np.zeros(30, np.int16),
            np.zeros(13),
            season=m,
            season_ring=ring,
        )
        assert latest_design(replace(st, changes=np.zeros(10)), 2, horizon)[1][-1] == pytest.approx(
            want[k - 1]
        )
        got = []
        for t in range(k, 400):
            col, ring = _seasonal_step(st, v[t], horizon)
            got.append(col)
            st = replace(st, season_ring=ring)
        assert np.allclose(got, want[k:], atol=0, rtol=0)


def test_long_series_have_a_refit_budget():
    """Up to about 40 x refit_every rows the config's interval holds; beyond, at most MAX_REFITS refits."""
    from nq_dagster.fusion.walkforward import MAX_REFITS

    assert training_schedule(10_000, 500, 250).refit_every == 250
    s = training_schedule(30_000, 500, 250)
    refits = len(range(s.train_min, s.rows, s.refit_every))
    assert refits <= MAX_REFITS and s.refit_every == 738


def test_calibration_says_the_base_rates_without_skill_and_keeps_skill():
    """`calibrate` mixes the error model's probabilities with the calibration rows' class frequencies, the mix
    fitted by log loss: a forecast unrelated to the outcome (no skill) gets mix near 0, and its probabilities
    are near the base rates, so a heavy-tailed series does not make it confident; a forecast that explains
    most of the change keeps mix near 1."""
    from nq_dagster.fusion.walkforward import CLASSES, FusionModel, calibrate, direction_probabilities

    rng = np.random.default_rng(3)
    n = 2000
    band = np.full(n, 0.1)
    chg = rng.standard_t(3, n)  # heavy tails: the Gaussian error model alone is mis-shaped here
    y_dir = np.where(chg > 0.1, 1, np.where(chg < -0.1, -1, 0))
    counts = np.bincount(np.searchsorted(CLASSES, y_dir), minlength=3)

    noise = FusionModel([], 1.0, 0, 0, [])
    calibrate(noise, 0.8 * rng.standard_normal(n), chg, y_dir, band)
    assert noise.mix < 0.1
    np.testing.assert_allclose(noise.base_rate, (counts + 1) / (n + 3))
    P = direction_probabilities(
        0.8 * rng.standard_normal(n), band, noise.error_scale(band), noise.mix, noise.base_rate
    )
    assert np.abs(P - noise.base_rate).max() < 0.1  # a forecast with no skill says (nearly) the base rates
    np.testing.assert_allclose(P.sum(axis=1), 1.0)

    skilled = FusionModel([], 1.0, 0, 0, [])
    calibrate(skilled, chg + 0.1 * rng.standard_normal(n), chg, y_dir, band)
    assert skilled.mix > 0.9


def test_one_standard_error_rule_keeps_a_stage_only_beyond_the_noise():
    """`simplest_within_one_se`: a bigger model whose held-out error is lower by less than one standard error
    of the paired difference loses to the simpler one; one lower by many standard errors wins; equal errors go
    to the simpler model."""
    from nq_dagster.fusion.walkforward import simplest_within_one_se

    rng = np.random.default_rng(0)
    simple = 1.0 + np.abs(rng.normal(size=30))
    d = rng.normal(scale=0.2, size=30)
    d = (
        d - d.mean() - 0.01
    )  # 0.01 lower on average; the paired difference's SE is about 0.2 / sqrt(30) = 0.037
    slightly = simple + d
    assert np.mean(slightly) < np.mean(simple) and 0.01 < d.std(ddof=1) / np.sqrt(30)
    assert simplest_within_one_se([(simple, 5, "simple"), (slightly, 300, "big")]) == "simple"
    much = simple * 0.5  # half the error on every row
    assert simplest_within_one_se([(simple, 5, "simple"), (much, 300, "big")]) == "big"
    assert simplest_within_one_se([(simple, 9, "nine"), (simple.copy(), 4, "four")]) == "four"
    # three candidates: the best is big; a middle one within its SE is preferred to it
    mid = much + d + 0.02  # 0.01 above the best on average, the paired SE about 0.037
    assert simplest_within_one_se([(simple, 5, "simple"), (much, 300, "big"), (mid, 50, "mid")]) == "mid"
