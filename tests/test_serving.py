"""Serving / streaming: continuing from a saved state gives what a full recompute over the same history gives."""

import numpy as np
import pandas as pd
import pytest
import torch

from nq_dagster.config import PipelineConfig
from nq_dagster.demo import mackey_glass, market
from nq_dagster.fusion.serving import advance, build_state, feature_frame, predict_latest, reservoir_input
from nq_dagster.fusion.walkforward import lag_matrix, make_targets, walk_forward
from nq_dagster.neuromorphic import Reservoir, encode, encoder_inputs

CFG = PipelineConfig(neuron_count=150, reservoir_size=80, train_min=300, refit_every=200, feature_window=20)
NAMES = ("in_change", "in_level", "in_volatility")
SELECTED = ["in_change", "burst", "chaotic", "spike_rate"]


def batch(values, res, seed=5):
    """The batch graph's computations over a whole history."""
    inputs = encoder_inputs(values, CFG.feature_window)
    spikes = encode(inputs[None], CFG.encoding, CFG.neuron_count, CFG.window_bins, seed=seed)[0].numpy()
    states, final = res.run(torch.as_tensor(reservoir_input(spikes))[None])
    states = states[0].numpy().astype(np.float32)
    feats = feature_frame(inputs, spikes, states, NAMES)
    return spikes, states, final, feats


def design(values, states, feats):
    return np.hstack([states, feats[SELECTED].to_numpy(), lag_matrix(values, 5)])


@pytest.fixture(scope="module", params=["mackey_glass", "market"])
def history(request):
    if request.param == "mackey_glass":
        df = mackey_glass(1000)
        values, ts = df["value"].to_numpy(), df["timestamp"].to_numpy()
    else:
        frames, _ = market(1000, tickers=1, seed=4)
        values, ts = frames["market_A"]["price"].to_numpy(), frames["market_A"]["timestamp"].to_numpy()
    n0 = 800
    res = Reservoir(CFG.neuron_count, CFG.reservoir_size, seed=3)
    spikes, states, final, feats = batch(values[:n0], res)
    targets = make_targets(values[:n0], CFG.horizon, CFG.hold_band, CFG.feature_window)
    pred, model = walk_forward(design(values[:n0], states, feats), targets, train_min=CFG.train_min,
                               refit_every=CFG.refit_every)
    fusion = {"model": model, "selected": SELECTED, "model_version": "test"}
    st = build_state("s", CFG, 5, NAMES, fusion, res, final, ts[:n0], values[:n0], spikes, states, {})
    return values, ts, n0, res, model, pred, st


def test_latest_equals_batch_prediction(history):
    values, ts, n0, res, model, pred, st = history
    rec = predict_latest(st)
    last = pred.iloc[-1]
    assert last["row"] == n0 - 1
    assert rec["direction"].iloc[0] == {-1: "down", 0: "hold", 1: "up"}[int(last["direction"])]
    assert abs(rec["confidence"].iloc[0] - last["confidence"]) < 1e-9
    assert abs(rec["predicted_change"].iloc[0] - last["pred_change"]) < 1e-9 * max(1.0, abs(last["pred_change"]))


def test_streamed_chunks_equal_full_recompute(history):
    values, ts, n0, res, model, pred, st = history
    # stream the next 200 values in uneven chunks
    got = []
    for a, b in [(n0, n0 + 1), (n0 + 1, n0 + 40), (n0 + 40, n0 + 41), (n0 + 41, n0 + 200)]:
        rec, st = advance(st, values[a:b], ts[a:b])
        got.append(rec)
    got = pd.concat(got, ignore_index=True)
    assert st.n_rows == n0 + 200
    # the full recompute: the batch graph over all 1000 rows, the same (latest) model
    spikes, states, _, feats = batch(values[: n0 + 200], res)
    X = design(values[: n0 + 200], states, feats)[n0:]
    band = make_targets(values[: n0 + 200], CFG.horizon, CFG.hold_band, CFG.feature_window)["band"].to_numpy()[n0:]
    probs, chg = model.predict(X, band)
    assert np.abs(got["predicted_change"].to_numpy() - chg).max() <= 1e-6 * np.abs(chg).max()
    assert np.abs(got["confidence"].to_numpy() - probs.max(axis=1)).max() < 1e-6
    assert (got["direction"].map({"down": -1, "hold": 0, "up": 1}).to_numpy()
            == np.array([-1, 0, 1])[probs.argmax(axis=1)]).all()
    assert list(pd.to_datetime(got["timestamp"])) == list(pd.to_datetime(pd.Series(ts[n0: n0 + 200]), utc=True))


def test_bad_values_rejected_state_untouched(history):
    values, ts, n0, res, model, pred, st = history
    with pytest.raises(ValueError, match="value 2"):
        advance(st, [1.0, float("nan")])
    with pytest.raises(ValueError, match="timestamp 1 .* not after the last one seen"):
        advance(st, [1.0], ts[n0 - 5: n0 - 4])
    with pytest.raises(ValueError, match="timestamp 3 .* not after timestamp 2"):
        advance(st, [1.0, 2.0, 3.0], ts[[n0, n0 + 1, n0 + 1]])
    assert st.n_rows == n0  # the failed calls changed nothing
