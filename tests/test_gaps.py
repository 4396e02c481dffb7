"""Outcomes only within the horizon, in training and evaluation as in the server (issue 30): a prediction is
realized only by the tick at its horizon when that tick came within record.GAP_TOLERANCE x the horizon's time;
a row whose horizon tick came after a gap in the feed is unrealized, left out of fits, accuracy and coverage,
and counted. And the intervals' adaptive conformal step against a static split conformal under drift."""

import numpy as np
import pandas as pd
import pytest

from nq_dagster.fusion import intervals
from nq_dagster.fusion.baselines import run_baselines
from nq_dagster.fusion.walkforward import (
    UNREALIZED,
    fit_model,
    horizon_gaps,
    lag_matrix,
    make_targets,
    median_spacing_ms,
    walk_forward,
)
from nq_dagster.serve.engine.outcomes import Outcomes
from nq_dagster.validation.evaluate import evaluate
from nq_dagster.validation.promotion import decide
from nq_dagster.validation.report import markdown_summary

STEP = pd.Timedelta(minutes=5)


def _gapped(n: int, gap_after: list[int], seed: int = 0, jump: float = 0.0):
    """A 5-minute AR(1)-in-changes series whose feed stops for 2-9 hours after each row of `gap_after`; with
    `jump`, the value moves by that much over each stop (an overnight move the horizon never saw)."""
    rng = np.random.default_rng(seed)
    d = np.zeros(n)
    for t in range(1, n):
        d[t] = 0.6 * d[t - 1] + rng.standard_normal()
    stops = {i: pd.Timedelta(hours=float(rng.uniform(2, 9))) for i in gap_after}
    ts, t = [], pd.Timestamp("2026-01-05", tz="UTC")
    for i in range(n):
        ts.append(t)
        t = t + STEP + stops.get(i, pd.Timedelta(0))
    for i in gap_after:
        d[i + 1] += jump
    return pd.Series(ts), 100 + np.cumsum(d)


def _served_outcomes(ts: pd.Series, values: np.ndarray, horizon: int) -> dict[int, bool]:
    """The prediction server's outcomes (serve/engine/outcomes.py) for the same ticks, each record stating
    time_horizon_ms = horizon x the training rows' median spacing (as `ModelVersion.step_ms` x horizon):
    prediction row -> realized."""
    o = Outcomes()
    hz = median_spacing_ms(ts.to_numpy()) * horizon
    rec = {"direction": "up", "confidence": 0.5, "hold_band": 0.0, "time_horizon_ms": hz}
    at = {int(t.value): i for i, t in enumerate(ts)}
    out = {}
    for t, v in zip(ts, values, strict=True):
        for r in o.realize("s", horizon, int(t.value), float(v), rec):
            out[at[int(pd.Timestamp(r["timestamp"]).value)]] = r["realized"]
    return out


@pytest.mark.parametrize("horizon", [1, 3])
def test_the_walk_forward_and_the_server_agree_on_which_predictions_are_realized(horizon):
    gap_after = [250, 611, 612, 1400, 1777]  # two consecutive stops too
    ts, v = _gapped(2000, gap_after)
    targets = make_targets(v, horizon, 0.1, 50, ts.to_numpy())
    served = _served_outcomes(ts, v, horizon)
    rows = np.array(sorted(served))
    assert len(rows) == len(v) - horizon  # every row but the last h has its outcome tick
    realized_server = np.array([served[r] for r in rows])
    assert np.array_equal(~targets["gap"].to_numpy()[rows], realized_server)
    # a stop after row i leaves the predictions of rows i - h + 1 .. i without their horizon tick
    expected = {r for i in gap_after for r in range(i - horizon + 1, i + 1)}
    assert set(np.flatnonzero(targets["gap"].to_numpy())) == expected
    if horizon == 1:
        assert int(targets["gap"].sum()) == len(gap_after)  # one unrealized prediction per gap
    assert not targets["gap"].to_numpy()[-horizon:].any()  # beyond the data: not yet realized, not a gap
    # without the times (or on a regular feed) nothing is a gap
    assert not make_targets(v, horizon)["gap"].any()
    regular = pd.Series(pd.date_range("2026-01-05", periods=2000, freq="5min", tz="UTC"))
    assert not horizon_gaps(regular.to_numpy(), horizon).any()


def test_gap_rows_are_left_out_of_a_fit():
    """The fit at a refit point does not read a gap row's change: any value there gives the same model."""
    ts, v = _gapped(1500, [300, 700, 1100], jump=40.0)
    targets = make_targets(v, 1, 0.1, 50, ts.to_numpy())
    X = lag_matrix(v, 8, level=True)
    gaps = np.flatnonzero(targets["gap"].to_numpy())
    moved = targets.copy()
    moved.loc[gaps, "change"] = 1e6  # the direction classes stay: calibration reads both
    a = fit_model(X, targets, 1400, 0.3, [], warmup=50)
    b = fit_model(X, moved, 1400, 0.3, [], warmup=50)
    assert a.candidate == b.candidate and a.scale == b.scale and a.mix == b.mix
    for sa, sb in zip(a.stages, b.stages, strict=True):
        assert np.array_equal(sa.coef, sb.coef) and sa.intercept == sb.intercept
    # unflagged, the same rows are read: the moved values change the fit (the property is not vacuous)
    c = fit_model(X, moved.assign(gap=False), 1400, 0.3, [], warmup=50)
    assert c.scale > 100 * a.scale or not np.allclose(c.stages[0].coef, a.stages[0].coef)


@pytest.fixture(scope="module")
def gapped_fusion():
    gap_after = [640, 800, 801, 1210, 1500, 1850]  # all among the walk-forward rows (>= train_min 500)
    ts, v = _gapped(2000, gap_after, seed=3, jump=25.0)
    targets = make_targets(v, 1, 0.1, 50, ts.to_numpy())
    X = lag_matrix(v, 8, level=True)
    fused, _ = walk_forward(X, targets, 1, 500, 250, n_base=X.shape[1], warmup=50)
    frames, _ = run_baselines(v, targets, 1, 500, 250, 50, 0.3)
    iv = intervals.walk_forward_intervals(fused, targets, v, 1)
    fusion = {
        "targets": targets,
        "fused": fused,
        "baselines": frames,
        "ablations": {"same": fused.copy()},
        "intervals": iv,
    }
    return fusion, gap_after


def test_the_report_counts_gap_rows_and_scores_the_rest(gapped_fusion):
    fusion, gap_after = gapped_fusion
    ev = evaluate(fusion)
    m = ev["metrics"]
    assert m["unrealized_gap"] == len(gap_after)  # one per gap (horizon 1)
    t, f = fusion["targets"], fusion["fused"]
    rows = f["row"].to_numpy()
    y = t["direction"].to_numpy()[rows]
    scored = (y != UNREALIZED) & ~t["gap"].to_numpy()[rows]
    assert m["predictions"] == len(rows) - len(gap_after) - 1  # and the last row: beyond the data
    assert m["accuracy"] == pytest.approx(float(np.mean(f["direction"].to_numpy()[scored] == y[scored])))
    assert not set(gap_after) & set(ev["rows"].tolist())
    assert f"{len(gap_after)} predictions unrealized: gap" in markdown_summary("s", ev)
    # the intervals' coverage counts realized rows only
    cov = intervals.coverage_table(fusion)
    assert (cov["realized"] == m["predictions"]).all()


def test_the_promotion_gate_compares_realized_rows_only(gapped_fusion):
    from types import SimpleNamespace

    fusion, gap_after = gapped_fusion
    f, t = fusion["fused"], fusion["targets"]
    n = len(t)
    P = np.zeros((n, 3))
    P[f["row"].to_numpy()] = f[["p_down", "p_hold", "p_up"]].to_numpy()
    pred = np.zeros(n)
    pred[f["row"].to_numpy()] = f["pred_change"].to_numpy()
    ts = pd.date_range("2026-01-05", periods=n, freq="5min", tz="UTC").to_numpy()
    current = SimpleNamespace(model_version="v-old", train_end_ns=int(pd.Timestamp(ts[999]).value))
    d = decide({**fusion, "incumbent": {"pred_change": pred, "probs": P}}, current, "", ts, "v-new")
    later = [g for g in gap_after if g > 999]
    assert d["unrealized_gap"] == len(later)
    assert d["rows"] == (n - 1000) - len(later) - 1  # the last row is not realized yet


def _drifting_scale(n: int, seed: int):
    """A random walk whose noise grows threefold, steadily, over the series; the forecaster says 'no change'
    with a fixed stated scale (that of the start): what a model calibrated once and never again would say."""
    rng = np.random.default_rng(seed)
    sd = np.linspace(1.0, 3.0, n)
    x = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sd))])
    return x, np.zeros(n), np.ones(n)


def _static_split_conformal(y: np.ndarray, pred: np.ndarray, scale: np.ndarray, calib: int, level: float):
    """Split conformal calibrated once on the first `calib` rows' scores, then held fixed."""
    scores = np.sort(np.abs(y[:calib] - pred[:calib]) / scale[:calib])
    q = scores[min(int(np.ceil((calib + 1) * level)), calib) - 1]
    return q * scale


@pytest.mark.parametrize("seed", [0, 1])
def test_static_split_conformal_undercovers_late_under_drift_and_the_adaptive_one_does_not(seed):
    n = 4000
    x, pred, scale = _drifting_scale(n, seed)
    y = x[1:] - x[:-1]
    half, _ = intervals.interval_pass(x, np.arange(n), pred, scale, horizon=1)
    for j, level in enumerate(intervals.LEVELS):
        static = _static_split_conformal(y, pred, scale, 500, level)
        cs = intervals.coverage(pred - static, pred + static, y)
        assert cs["coverage_late"] < level - 0.1, (level, cs)  # calibrated on the quiet start
        c = intervals.coverage(pred - half[:, j], pred + half[:, j], y)
        assert abs(c["coverage"] - level) <= 0.02 and abs(c["coverage_late"] - level) <= 0.02, (level, c)


def test_the_conformal_state_scores_no_outcome_after_a_gap_in_batch_and_stream_alike():
    """Training's pass and a stream continuing its state tick by tick (with the ticks' times, as the
    predictor steps it) leave the same outcomes unscored (those after a gap) and state the same intervals."""
    import nq_dagster.codecs  # noqa: F401 - registers IntervalState
    from nq_dagster.store.artifacts import dumps, loads

    gap_after = [120, 300, 301, 450]
    ts, v = _gapped(600, gap_after, seed=5, jump=30.0)
    horizon = 2
    rng = np.random.default_rng(1)
    pred, scale = 0.1 * rng.standard_normal(600), np.ones(600)
    hz = median_spacing_ms(ts.to_numpy()) * horizon
    full, st_full = intervals.interval_pass(v, np.arange(600), pred, scale, horizon, ts.to_numpy(), hz)
    gaps = make_targets(v, horizon, 0.1, 50, ts.to_numpy())["gap"].to_numpy()
    assert st_full.unrealized_gap == int(gaps.sum()) > 0
    assert st_full.realized == 600 - horizon - int(gaps.sum())
    # the 30-unit moves over the stops never enter the conformal window
    assert st_full.scores.max() < 10
    _, st = intervals.interval_pass(v[:400], np.arange(400), pred[:400], scale[:400], horizon, ts[:400], hz)
    st = loads(dumps(st))  # through the artifact codec, as serving_state stores it
    for t in range(400, 600):
        st, h = intervals.step(st, float(v[t]), float(pred[t]), float(scale[t]), ts[t].value / 1e6)
        assert np.array_equal(h, full[t])
    assert st.unrealized_gap == st_full.unrealized_gap and np.array_equal(st.scores, st_full.scores)
    # without the times every outcome is scored (a state saved before the rule)
    _, plain = intervals.interval_pass(v, np.arange(600), pred, scale, horizon)
    assert plain.unrealized_gap == 0 and plain.realized == 600 - horizon


def test_intervals_stay_nested_when_the_lower_level_saturates():
    """A run of misses drives the 80 % level's alpha_t (the larger step) below zero, where its quantile is the
    window's largest score; the 95 % interval still holds the 80 % one on every row."""
    x, pred, scale = _drifting_scale(3000, 2)
    burst = np.zeros(3001)
    burst[1500:1530] = 25.0  # thirty outcomes far outside every interval
    x = x + np.cumsum(burst)
    half, st = intervals.interval_pass(x, np.arange(3000), pred, scale, horizon=1)
    assert (half[:, 1] >= half[:, 0]).all()
    assert st.realized == 2999


def test_nq_run_on_a_feed_with_stops_reports_its_gaps(tmp_path):
    """Through `nq ingest` and `nq run` (SMALL_CONFIG): the pipeline hands the rows' times to training, the
    stored metrics and the report count the predictions left unrealized by the stops, and the served state's
    conformal state knows the horizon's time (so the stream applies the same rule)."""
    from nq_dagster.cli import main

    from .conftest import small_home

    home = tmp_path / "nq"
    gap_after = [520, 700, 701, 850]  # among the walk-forward rows
    ts, v = _gapped(900, gap_after, seed=11, jump=20.0)
    csv = tmp_path / "g.csv"
    pd.DataFrame({"timestamp": ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": v}).to_csv(csv, index=False)
    with small_home(home) as wh:
        assert main(["--home", str(home), "ingest", str(csv), "--source", "g"]) == 0
        assert main(["--home", str(home), "run", "--source", "g"]) == 0
        fm = wh.load_artifact("fusion_model", "g")
        assert set(np.flatnonzero(fm["targets"]["gap"].to_numpy())) == set(gap_after)
        m = wh.read_table("validation_metrics", "g").iloc[-1]
        assert m["unrealized_gap"] == len(gap_after)
        assert f"{len(gap_after)} predictions unrealized: gap" in (wh.reports / "g.html").read_text()
        iv = wh.load_artifact("serving_state", "g").intervals
        assert iv.horizon_ms == pytest.approx(5 * 60_000.0) and iv.unrealized_gap == len(gap_after)


def test_the_running_gram_sums_skip_gaps_that_come_after_the_first_refit():
    """The walk-forward's running Gram sums (a reservoir block, `rest_groups`) are built at the first refit;
    a gap only in later refits' rows is left out there too (found by the nq run test: the sums covered one
    row more than the fit)."""
    ts, v = _gapped(1200, [600], seed=2, jump=15.0)  # in the last refit's fit rows only
    targets = make_targets(v, 1, 0.1, 50, ts.to_numpy())
    X = np.column_stack([np.random.default_rng(0).standard_normal((1200, 6)), lag_matrix(v, 4, level=True)])
    fused, _ = walk_forward(X, targets, 1, 500, 250, n_base=5, rest_groups=[np.arange(6)], warmup=50)
    assert len(fused) == 700
