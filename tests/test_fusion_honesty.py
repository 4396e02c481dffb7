"""Honesty checks: no skill on random walks, skill on Mackey-Glass, shuffled targets kill skill, calibration,
and no model fit on data at or after its prediction time."""

import numpy as np
import pandas as pd
import pytest

from nq_dagster.config import PipelineConfig
from nq_dagster.demo import mackey_glass, market, random_walk
from nq_dagster.fusion.pipeline import run_fusion
from nq_dagster.fusion.walkforward import lag_matrix, make_targets, walk_forward
from nq_dagster.neuromorphic import Reservoir, encode, encoder_inputs
from nq_dagster.validation.evaluate import evaluate

CFG = PipelineConfig(neuron_count=300, reservoir_size=150, train_min=400, refit_every=300)


def states_for(values, cfg=CFG, seed=0):
    inp = encoder_inputs(values, cfg.feature_window)
    sp = encode(inp[None], cfg.encoding, cfg.neuron_count, cfg.window_bins, seed=seed)[0].numpy()
    res = Reservoir(cfg.neuron_count, cfg.reservoir_size, seed=seed)
    return res.run(sp.sum(1)[None] / sp.shape[1])[0][0].numpy()


def fuse(values, cfg=CFG):
    return run_fusion(pd.DataFrame({"value": values}), states_for(values, cfg), [], cfg)


def test_random_walk_shows_no_significant_skill():
    seeds = [0, 1, 2, 3]
    for s in seeds:
        ev = evaluate(fuse(random_walk(1200, seed=s)["value"].to_numpy()))
        assert ev["metrics"]["p_binom"] > 0.05 / len(seeds)  # Bonferroni over seeds


@pytest.fixture(scope="module")
def mg():
    values = mackey_glass(2600)["value"].to_numpy()
    return values, fuse(values)


def test_mackey_glass_beats_persistence(mg):
    ev = evaluate(mg[1])
    assert ev["metrics"]["p_binom"] < 1e-6
    assert ev["metrics"]["p_dm_persistence"] < 0.01


def test_mackey_glass_beats_ar(mg):
    """Diebold-Mariano (squared error of the change) against AR(p) by AIC on levels and on changes, fitted
    walk-forward on the same rows. The record claims a direction, and there the plain ESN baseline is as
    accurate as the fused model (0.998 both): the verdict says "skill in squared error only", score 0, not
    "skill" (issue 30)."""
    m = evaluate(mg[1])["metrics"]
    assert m["p_dm_ar_levels"] < 0.01 and m["p_dm_ar_diffs"] < 0.01
    assert not m["skill"] and m["score"] == 0
    assert m["verdict"].startswith("skill in squared error only") and "esn" in m["verdict"]


def test_calibration_on_2000_held_out(mg):
    ev = evaluate(mg[1])
    assert ev["metrics"]["predictions"] >= 2000 and ev["metrics"]["ece"] <= 0.05
    frames, _ = market(3000, tickers=3, seed=0)  # the demo's market sources (`nq demo` defaults)
    for name, df in frames.items():
        ev_m = evaluate(fuse(df["price"].to_numpy()))
        assert ev_m["metrics"]["predictions"] >= 2000 and ev_m["metrics"]["ece"] <= 0.05, name


def test_shuffled_target_destroys_skill(mg):
    values, _ = mg
    targets = make_targets(values, 1, CFG.hold_band, CFG.feature_window)
    perm = np.random.default_rng(0).permutation(len(targets) - 1)
    shuffled = targets.copy()
    shuffled.iloc[: len(perm)] = targets.iloc[perm].to_numpy()
    X = np.hstack([states_for(values), lag_matrix(values)])
    pred, _ = walk_forward(X, shuffled, train_min=CFG.train_min, refit_every=CFG.refit_every)
    y = shuffled["direction"].to_numpy()[pred["row"]]
    ok = y != -9
    acc = np.mean(pred["direction"].to_numpy()[ok] == y[ok])
    best_const = max(np.mean(y[ok] == c) for c in (-1, 0, 1))
    assert acc < best_const + 0.04


def test_no_model_sees_its_future(mg):
    """Look-ahead test: changing every value from row k on leaves every prediction made before row k
    unchanged (features, reservoir, refits and calibration read only the past), and changes later ones."""
    values, out = mg
    k = CFG.train_min + CFG.refit_every + 37  # inside the second refit block
    other = values.copy()
    other[k:] = other[k:] * 1.5 + 0.1
    alt = fuse(other)["fused"]
    before = out["fused"]["row"] < k
    for c in ("p_down", "p_hold", "p_up", "pred_change"):
        assert np.array_equal(out["fused"][c][before].to_numpy(), alt[c][before].to_numpy()), c
    assert not np.allclose(
        out["fused"]["pred_change"][~before].to_numpy(), alt["pred_change"][~before].to_numpy()
    )
    targets = make_targets(mg[0])
    leaky = targets.copy()
    with pytest.raises(AssertionError, match="unrealized target"):
        from nq_dagster.fusion.walkforward import fit_model

        fit_model(np.zeros((len(leaky), 2)), leaky, len(leaky) - 1, 0.3, [])


def test_reservoir_is_deterministic_per_seed():
    v = mackey_glass(300)["value"].to_numpy()
    a = states_for(v)
    assert np.array_equal(a, states_for(v))  # same seed: bit for bit
    assert np.abs(a - states_for(v, seed=1)).mean() > 1e-3  # another seed: another reservoir and spike train


def test_iot_anomalies_found_against_recorded_truth():
    """The > 4 sigma surprise flag finds the recorded anomalies far above the base rate (held-out rows
    only)."""
    from nq_dagster.demo import iot_sensor

    df, truth = iot_sensor(3000, seed=0)
    ev = evaluate(fuse(df["value"].to_numpy()), truth["anomaly"].to_numpy())
    a = ev["anomalies"]
    base_rate = a["true_anomalies"] / ev["metrics"]["predictions"]
    assert a["true_anomalies"] >= 10
    assert a["recall"] >= 0.8 and a["precision"] >= 20 * base_rate
    # flags only where a walk-forward prediction existed (held-out rows), never on the training window
    assert ev["anomaly_points"]["flagged"].min() >= CFG.train_min
