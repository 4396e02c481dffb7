"""The prediction record's promises (issue 30): one rule ties direction, probabilities, predicted_change and
magnitude; prediction intervals are calibrated and stay so under drift; an outcome is realized only by a tick
at its horizon."""

import numpy as np
import pandas as pd
import pytest

from nq_dagster.fusion import intervals
from nq_dagster.fusion.record import GAP_TOLERANCE, coherent_change, within_horizon
from nq_dagster.fusion.walkforward import direction_probabilities
from nq_dagster.serve.engine.outcomes import Outcomes, live_accuracy
from nq_dagster.store.artifacts import dumps, loads


def _contradictions(direction: np.ndarray, change: np.ndarray, band: np.ndarray) -> int:
    """Rows whose predicted change contradicts their direction: up/down with the other sign, or hold with a
    change beyond the hold band."""
    up, down, hold = direction == "up", direction == "down", direction == "hold"
    return int(
        (up & (change <= 0)).sum() + (down & (change >= 0)).sum() + (hold & (np.abs(change) > band)).sum()
    )


def test_the_rule_ties_direction_and_change_and_keeps_an_unmixed_model_change():
    rng = np.random.default_rng(3)
    n = 20_000
    model = rng.normal(0, 1, n) * rng.choice([0.01, 0.3, 1, 3], n)
    band = rng.uniform(0.01, 1.0, n) * rng.choice([0, 1], n, p=[0.05, 0.95])  # some rows without a band yet
    scale = rng.uniform(0.2, 2.0, n)
    base = rng.dirichlet([4, 1, 4], n)  # base rates of calibration rows, as `calibrate` fits them
    mix = rng.uniform(0, 1, n)
    P = direction_probabilities(model, band, scale, mix, base)
    mu = coherent_change(P, band, scale, model)
    names = np.array(["down", "hold", "up"])[P.argmax(axis=1)]
    assert np.isfinite(mu).all()
    assert _contradictions(names, mu, band) == 0
    # what the rule replaced: the model's own change against the mixed probabilities' direction
    replaced = mu != model
    assert replaced.sum() > n // 20 and _contradictions(names[replaced], model[replaced], band[replaced]) == (
        replaced.sum()
    )
    # the model's forecast stays wherever it agrees: always without mixing, saturated probabilities included
    P1 = direction_probabilities(model, band, scale)
    names1 = np.array(["down", "hold", "up"])[P1.argmax(axis=1)]
    assert np.array_equal(coherent_change(P1, band, scale, model), model)
    assert _contradictions(names1, model, band) == 0
    # the implied Normal's mean is the model's change where the probabilities are the model's and not
    # saturated (the branch taken where mixing moved the direction)
    fine = (band > 0) & (P1.min(axis=1) > 1e-5)
    flip = -np.sign(model) * np.abs(model).max() * 10  # a forecast that disagrees: the implied mean is used
    assert np.allclose(
        coherent_change(P1, band, scale, flip)[fine & (model != 0)],
        model[fine & (model != 0)],
        rtol=1e-4,
        atol=1e-9,
    )


def _series(n: int, seed: int):
    """A random walk whose noise level doubles halfway (a change of regime), and a forecaster whose stated
    error scale is wrong by a factor of 3 and ignores the change: conformal must fix what the scale gets
    wrong."""
    rng = np.random.default_rng(seed)
    sd = np.where(np.arange(n) < n // 2, 1.0, 2.0)
    steps = rng.normal(0, sd)
    x = np.concatenate([[0.0], np.cumsum(steps)])
    pred = np.zeros(n)  # a martingale forecast of the next change
    scale = np.full(n, 3.0)
    return x, pred, scale


@pytest.mark.parametrize("seed", [0, 1])
def test_intervals_cover_at_their_levels_overall_and_late_under_drift(seed):
    n = 4000
    x, pred, scale = _series(n, seed)
    rows = np.arange(n)
    half, st = intervals.interval_pass(x, rows, pred, scale, horizon=1)
    y = x[1:] - x[:-1]
    for j, level in enumerate(intervals.LEVELS):
        c = intervals.coverage(pred - half[:, j], pred + half[:, j], y)
        # ACI's guarantee (Gibbs and Candes 2021, Prop. 4.1): over any stretch of m rows the miss rate is
        # within (1 + 2 gamma) / (gamma m) of 1 - level, whatever the data; and the target, 2 points
        for cov, m in ((c["coverage"], c["n"]), (c["coverage_late"], c["n_late"])):
            gamma = intervals.step_sizes(intervals.LEVELS)[j]
            bound = (1 + 2 * gamma) / (gamma * m)
            assert abs(cov - level) <= min(bound, 0.02), (level, cov, m, bound)
        # the model's own Normal quantile with its wrong scale misses the target by far (over-covers)
        naive = np.abs(y[: n // 2]) <= scale[0] * intervals.quantile_factor(
            np.zeros(0), np.array([1 - level])
        )
        assert naive.mean() - level > 0.04
    assert st.realized == n - 1 and len(st.scores) == intervals.WINDOW


def test_the_interval_state_survives_the_artifact_codec_and_goes_on_identically():
    import nq_dagster.codecs  # noqa: F401 - registers IntervalState

    x, pred, scale = _series(600, 5)
    half, st = intervals.interval_pass(x[:400], np.arange(400), pred[:400], scale[:400], horizon=2)
    back = loads(dumps(st))
    a, b = st, back
    for t in range(400, 600):
        a, ha = intervals.step(a, float(x[t]), float(pred[t]), float(scale[t]))
        b, hb = intervals.step(b, float(x[t]), float(pred[t]), float(scale[t]))
        assert np.array_equal(ha, hb)
    full, _ = intervals.interval_pass(x[:600], np.arange(600), pred[:600], scale[:600], horizon=2)
    assert np.array_equal(full[-1], ha)  # tick by tick from the saved state = one pass over all rows


def test_a_tick_long_after_the_horizon_realizes_nothing():
    five_min = 5 * 60_000.0
    o = Outcomes()
    t0 = pd.Timestamp("2026-01-05T00:00:00Z").value
    rec = {"direction": "up", "confidence": 0.6, "hold_band": 0.01, "time_horizon_ms": five_min}
    assert o.realize("s", 1, t0, 100.0, rec) == []
    on_time = o.realize("s", 1, t0 + int(five_min * 1e6), 101.0, rec)  # 5 min later: realized, correct
    assert on_time[0]["realized"] and on_time[0]["correct"] is True
    late = o.realize("s", 1, t0 + int((five_min + 6.5 * 3600e3) * 1e6), 90.0, rec)  # 6.5 h later
    assert late[0]["realized"] is False and late[0]["correct"] is None and late[0]["actual"] is None
    assert late[0]["gap_ms"] == pytest.approx(6.5 * 3600e3)
    acc = live_accuracy(o.of("s"))
    assert acc == {"realized": 1, "unrealized_gap": 1, "accuracy": 1.0, "mean_confidence": 0.6}
    # the tolerance: jitter within GAP_TOLERANCE x the horizon passes
    assert within_horizon(GAP_TOLERANCE * five_min, five_min) and not within_horizon(
        GAP_TOLERANCE * five_min + 1, five_min
    )


def test_the_report_leaves_a_late_outcome_out_of_live_accuracy():
    from nq_dagster.fusion.walkforward import make_targets
    from nq_dagster.validation.evaluate import evaluate_live

    ts = pd.date_range("2026-01-05", periods=40, freq="5min", tz="UTC").to_list()
    ts = pd.Series(ts[:30] + [t + pd.Timedelta(hours=6.5) for t in ts[30:]])  # the feed stops for 6.5 h
    values = np.cumsum(np.random.default_rng(0).normal(size=40)) + 100
    targets = make_targets(values, 1, 0.1, 10)
    live = pd.DataFrame(
        {
            "timestamp": ts.iloc[20:39].to_numpy(),
            "direction": ["up"] * 19,
            "confidence": [0.5] * 19,
            "time_horizon_ms": [5 * 60_000.0] * 19,
            "processing_time_ms": [1.0] * 19,
        }
    )
    ev = evaluate_live(live, ts, targets, horizon=1)
    assert ev["unrealized_gap"] == 1 and ev["realized"] == 18  # row 29's outcome came 6.5 h later


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small market source trained through `nq ingest` and `nq run` (SMALL_CONFIG)."""
    from nq_dagster.cli import main
    from nq_dagster.demo import market

    from .conftest import small_home

    home = tmp_path_factory.mktemp("records") / "nq"
    frames, _ = market(900, tickers=1, seed=7)
    with small_home(home) as wh:
        csv = home.parent / "m.csv"
        frames["market_A"].rename(columns={"price": "value"})[["timestamp", "value"]].to_csv(csv, index=False)
        assert main(["--home", str(home), "ingest", str(csv), "--source", "m"]) == 0
        assert main(["--home", str(home), "run", "--source", "m"]) == 0
        yield wh


def test_stored_records_never_contradict_themselves_and_carry_nested_intervals(trained):
    p = trained.read_table("predictions", "m").sort_values("timestamp").reset_index(drop=True)
    fm = trained.load_artifact("fusion_model", "m")
    band = fm["targets"]["band"].to_numpy()[fm["fused"]["row"].to_numpy()]
    assert len(p) == len(band) > 500
    chg = p["predicted_change"].to_numpy()
    assert _contradictions(p["direction"].to_numpy(), chg, band) == 0
    assert np.array_equal(p["magnitude"].to_numpy(), np.abs(chg))
    probs = p[["p_down", "p_hold", "p_up"]].to_numpy()
    assert (np.array(["down", "hold", "up"])[probs.argmax(axis=1)] == p["direction"].to_numpy()).all()
    lo80, hi80 = p["interval_80_low"].to_numpy(), p["interval_80_high"].to_numpy()
    lo95, hi95 = p["interval_95_low"].to_numpy(), p["interval_95_high"].to_numpy()
    assert np.isfinite([lo80, hi80, lo95, hi95]).all()
    assert (lo95 <= lo80).all() and (lo80 <= chg).all() and (chg <= hi80).all() and (hi80 <= hi95).all()
    # the report states the coverage the stored intervals achieved
    m = trained.read_table("validation_metrics", "m").iloc[-1]
    y = fm["targets"]["change"].to_numpy()[fm["fused"]["row"].to_numpy()]
    ok = np.isfinite(y)
    assert m["coverage_80"] == pytest.approx(float(((y >= lo80) & (y <= hi80))[ok].mean()))
    assert m["coverage_95"] == pytest.approx(float(((y >= lo95) & (y <= hi95))[ok].mean()))
