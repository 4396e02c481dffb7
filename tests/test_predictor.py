"""The one prediction path against the real training graph: a source materialized over its first rows, then
advanced tick by tick over the rest from the state saved before them, gives, record by record, what the
training graph computes over the whole history; batched sources equal sources one at a time; states stay
small."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from nq_dagster.cli import main
from nq_dagster.demo import market
from nq_dagster.fusion.predictor import Predictor
from nq_dagster.fusion.record import PREDICTION_SCHEMA, records_table

# SMALL_CONFIG (conftest): train_min 250, refit_every 200 -> models are refit at rows 250, 450, 650. The
# stream starts at row N0 = 500 (at least 2 x train_min: the first training keeps that schedule) and runs to N
# = 640, inside one refit block, so batch and stream use the same model; its error scale is recalibrated every
# 40 rows (at 490, 530, 570, 610) from realized outcomes, by training and by the stream alike.
N0, N = 500, 640


def _csv(path, df):
    df.to_csv(path, index=False)
    return str(path)


def _graph(tmp_path_factory, df):
    from .conftest import small_home

    home = tmp_path_factory.mktemp("pred") / "nq"
    with small_home(home) as wh:
        assert (
            main(["--home", str(home), "ingest", _csv(home.parent / "a.csv", df.iloc[:N0]), "--source", "m"])
            == 0
        )
        assert main(["--home", str(home), "run", "--source", "m"]) == 0
        before = wh.load_artifact("serving_state", "m")  # the state saved after row N0 - 1
        assert (
            main(["--home", str(home), "ingest", _csv(home.parent / "b.csv", df.iloc[N0:]), "--source", "m"])
            == 0
        )
        assert main(["--home", str(home), "run", "--source", "m"]) == 0
        batch = wh.read_table("predictions", "m").sort_values("timestamp").reset_index(drop=True)
        after = wh.load_artifact("serving_state", "m")
    return df, before, batch, after


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    frames, _ = market(N, tickers=1, seed=11)
    return _graph(
        tmp_path_factory, frames["market_A"].rename(columns={"price": "value"})[["timestamp", "value"]]
    )


@pytest.fixture(scope="module")
def seasonal_graph(tmp_path_factory):
    """Mackey-Glass: a season (46 steps) is detected, so the design has a seasonal column the stream must
    follow."""
    from nq_dagster.demo import mackey_glass

    return _graph(tmp_path_factory, mackey_glass(N)[["timestamp", "value"]])


def test_tick_by_tick_equals_training_graph(graph):
    _tick_by_tick_equals_training_graph(graph)


def test_tick_by_tick_with_a_seasonal_column(seasonal_graph):
    assert seasonal_graph[1].stream.season == 46 and len(seasonal_graph[1].stream.season_ring) == 46
    # Mackey-Glass keeps a reservoir stage (its held-out gain is beyond one standard error): the stream's
    # reservoir path reaches the forecast here, not only the record's neuromorphic results
    assert len(seasonal_graph[1].model.model.stages) == 2
    _tick_by_tick_equals_training_graph(seasonal_graph)


def _tick_by_tick_equals_training_graph(graph):
    df, before, batch, after = graph
    assert before.stream.n_rows == N0
    p = Predictor()
    p.load(before)
    recs = []
    for i in range(N0, N):  # one tick per call, as a live stream
        recs += p.advance("m", [df["value"].iloc[i]], [df["timestamp"].iloc[i]])
    got = records_table(recs).to_pandas()
    want = batch[batch["timestamp"] >= pd.to_datetime(df["timestamp"], utc=True).iloc[N0]].reset_index(
        drop=True
    )
    assert len(got) == len(want) == N - N0
    assert (got["timestamp"].to_numpy() == want["timestamp"].to_numpy()).all()
    assert (got["direction"] == want["direction"]).mean() == 1.0
    scale = np.abs(want["predicted_change"]).max()
    assert np.abs(got["predicted_change"] - want["predicted_change"]).max() <= 1e-6 * scale
    for c in ("confidence", "p_down", "p_hold", "p_up"):
        assert np.abs(got[c] - want[c]).max() < 1e-6, c
    # the prediction intervals: the stream's conformal state goes on from training's, as its pass does
    for c in ("interval_80_low", "interval_80_high", "interval_95_low", "interval_95_high"):
        assert want[c].notna().all() and np.abs(got[c] - want[c]).max() <= 1e-6 * np.abs(want[c]).max(), c
    # the nested results (pattern strengths, spike rate, reservoir summary) as the batch graph computed them
    for g, w in zip(got["neuromorphic_results"], want["neuromorphic_results"], strict=True):
        g, w = json.loads(g), json.loads(w)
        assert np.allclose(list(g["patterns"].values()), list(w["patterns"].values()), atol=2e-4)
        assert abs(g["reservoir_state"]["norm"] - w["reservoir_state"]["norm"]) < 1e-4
    # same train_end (the same walk-forward model), and the same state as the second training saved
    assert (got["train_end"] == want["train_end"]).all()
    st, ref = p.serving_state("m").stream, after.stream
    assert st.n_rows == ref.n_rows == N and st.last_ts == ref.last_ts
    assert np.array_equal(st.last_spike, ref.last_spike) and np.array_equal(st.codes, ref.codes)
    assert np.allclose(st.frames, ref.frames, atol=1e-5) and np.allclose(
        st.change_sd, ref.change_sd, rtol=1e-9
    )
    assert np.allclose(st.isi, ref.isi)
    # processing time: measured per record, from the tick's arrival to its record
    assert all(r["processing_time_ms"] > 0 for r in recs)
    assert want["processing_time_ms"].isna().all()  # walk-forward rows of training: no tick, no time


def test_latest_equals_batch_record(graph):
    df, before, batch, after = graph
    p = Predictor()
    p.load(after)
    r = p.latest("m")
    last = batch.iloc[-1]
    assert r["timestamp"] == last["timestamp"] and r["direction"] == last["direction"]
    assert abs(r["confidence"] - last["confidence"]) < 1e-9
    assert abs(r["predicted_change"] - last["predicted_change"]) <= 1e-9 * max(
        1.0, abs(last["predicted_change"])
    )


def test_chunks_and_batched_sources_equal_single_ticks(graph):
    df, before, batch, after = graph
    ref = Predictor()
    ref.load(before)
    single = [
        ref.advance("m", [v], [t])[0]
        for v, t in zip(df["value"].iloc[N0 : N0 + 30], df["timestamp"].iloc[N0 : N0 + 30], strict=True)
    ]
    chunked = Predictor()
    chunked.load(before)
    got = []
    for a, b in [(0, 1), (1, 12), (12, 30)]:
        got += chunked.advance("m", df["value"].iloc[N0 + a : N0 + b], df["timestamp"].iloc[N0 + a : N0 + b])
    # three sources in one batched call: the same source under three names (their own seeds and reservoirs)
    # must each equal that name advanced alone
    many = Predictor()
    alone = {}
    from dataclasses import replace

    for name in ("m", "m2", "m3"):
        sv = replace(before, model=replace(before.model, source=name))
        many.load(sv)
        one = Predictor()
        one.load(sv)
        alone[name] = one.advance(name, df["value"].iloc[N0 : N0 + 5], df["timestamp"].iloc[N0 : N0 + 5])
    out = many.advance_many(
        {s: (df["value"].iloc[N0 : N0 + 5], df["timestamp"].iloc[N0 : N0 + 5]) for s in alone}
    )
    for (
        s
    ) in alone:  # batched, the reservoir's input term reads only the rows of firing neurons: float32 rounding
        for a, b in zip(out[s], alone[s], strict=True):
            assert a["direction"] == b["direction"]
            assert (
                abs(a["predicted_change"] - b["predicted_change"])
                <= 1e-6 * abs(b["predicted_change"]) + 1e-12
            )
            na, nb = a["neuromorphic_results"], b["neuromorphic_results"]
            assert np.allclose(list(na["patterns"].values()), list(nb["patterns"].values()), atol=2e-4)
            assert abs(na["reservoir_state"]["norm"] - nb["reservoir_state"]["norm"]) < 1e-5
    for a, b in zip(single, got, strict=True):
        assert a["prediction_id"] == b["prediction_id"] and a["direction"] == b["direction"]
        assert abs(a["predicted_change"] - b["predicted_change"]) < 1e-12
    # other seed, other reservoir (the market model may use no reservoir stage: its state tells them apart)
    assert (
        out["m2"][0]["neuromorphic_results"]["reservoir_state"]["norm"]
        != out["m"][0]["neuromorphic_results"]["reservoir_state"]["norm"]
    )


def test_bad_values_rejected_state_untouched(graph):
    df, before, batch, after = graph
    p = Predictor()
    p.load(before)
    ts = df["timestamp"]
    with pytest.raises(ValueError, match="value 2"):
        p.advance("m", [1.0, float("nan")])
    with pytest.raises(ValueError, match="timestamp 1 .* not after the last one seen"):
        p.advance("m", [1.0], ts.iloc[N0 - 5 : N0 - 4])
    with pytest.raises(ValueError, match="timestamp 3 .* not after timestamp 2"):
        p.advance("m", [1.0, 2.0, 3.0], ts.iloc[[N0, N0 + 1, N0 + 1]])
    with pytest.raises(ValueError, match="value 1"):  # a batch with one bad source changes no source
        p.advance_many({"m": ([np.inf], None)})
    # finite but far beyond the training scale (issue 26): refused by name before it can overflow the state
    with pytest.raises(ValueError, match=r"value 2 \(1e\+160\) is outside what its model takes"):
        p.advance("m", [float(df["value"].iloc[-1]), 1e160])
    with pytest.raises(ValueError, match="outside what its model takes"):  # the one-tick fast path too
        p.advance_many({"m": ([-1e300], None)})
    assert p.serving_state("m").stream.n_rows == N0
    lo, hi = p.value_range("m")
    assert lo < df["value"].min() and hi > df["value"].max()  # the training rows themselves are inside


def test_record_schema_and_state_size(graph):
    df, before, batch, after = graph
    p = Predictor()
    p.load(before)
    t = records_table(p.advance("m", [df["value"].iloc[N0]]))
    assert t.schema == PREDICTION_SCHEMA
    assert list(batch.columns) == PREDICTION_SCHEMA.names  # the training asset writes the same schema
    # the state of one source holds bounded windows, not the history (SMALL_CONFIG: 80 units, 120 neurons)
    # (after 640 rows every window is full: 10 x feature_window = 500 changes)
    assert before.stream.nbytes() <= after.stream.nbytes() < 32 * 1024
    p.advance("m", df["value"].iloc[N0 + 1 : N], df["timestamp"].iloc[N0 + 1 : N])
    assert p.serving_state("m").stream.nbytes() == after.stream.nbytes()


def test_the_stored_gram_matrix_is_the_frames_own(graph):
    """The state keeps its frames' Gram matrix so that a tick adds one row of products; after many ticks it
    must still be the Gram matrix of the frames it holds, and a state saved without one (None) predicts the
    same."""
    from nq_dagster.fusion.stream import unpack_gram
    from nq_dagster.neuromorphic.patterns import as_detector_activity

    df, before, _, _ = graph
    p, q = Predictor(), Predictor()
    p.load(before)
    q.load(replace(before, stream=replace(before.stream, gram=None)))
    vals, ts = df["value"].iloc[N0 : N0 + 40], df["timestamp"].iloc[N0 : N0 + 40]
    a, b = p.advance("m", vals, ts), q.advance("m", vals, ts)
    for x, y in zip(a, b, strict=True):
        assert np.allclose(
            list(x["neuromorphic_results"]["patterns"].values()),
            list(y["neuromorphic_results"]["patterns"].values()),
            rtol=1e-9,
            atol=1e-12,
        )
    st = p.serving_state("m").stream
    F = as_detector_activity(st.frames)
    np.testing.assert_allclose(unpack_gram(st.gram), F @ F.T, rtol=1e-12, atol=1e-12)


class _RunsCode:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_tampered_or_truncated_artifacts_are_refused(tmp_path, capsys):
    import pickle

    from nq_dagster.store import Warehouse
    from nq_dagster.store.artifacts import ArtifactError, dumps, loads

    home = tmp_path / "nq"
    wh = Warehouse(home).ensure()
    marker = tmp_path / "pwned"
    path = wh.artifact_path("serving_state", "m")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ArtifactError, match=r"serving_state/m\.npz: a Python pickle, refused"):
        wh.load_artifact("serving_state", "m")
    assert main(["--home", str(home), "predict", "--source", "m"]) == 2
    err = capsys.readouterr().err
    assert "pickle, refused" in err and str(path) in err
    assert not marker.exists()  # nothing ran
    # a pickle hidden inside a valid npz member is refused too (allow_pickle=False)
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__meta__.npy", pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ArtifactError):
        loads(buf.getvalue(), "x.npz")
    assert not marker.exists()
    # truncation, and a round trip of plain values
    data = dumps(
        {"a": np.arange(5), "t": pd.Timestamp("2026-01-01", tz="UTC"), "df": pd.DataFrame({"x": [1.0]})}
    )
    with pytest.raises(ArtifactError, match="x.npz: damaged or truncated"):
        loads(data[: len(data) // 2], "x.npz")
    back = loads(data, "x.npz")
    assert back["a"].tolist() == [0, 1, 2, 3, 4] and back["t"] == pd.Timestamp("2026-01-01", tz="UTC")
    with pytest.raises(TypeError, match="cannot store"):
        dumps({"f": _RunsCode(marker)})  # unregistered objects are not written either


def test_continue_from_keeps_or_replays_the_live_stream(graph):
    """After a training, a stream continues from the furthest state: under the same config, the live state
    with the new model; under a changed config, training's state advanced over the rows it did not see (no
    records), which lands on the same stream state; a live state behind training's is dropped."""
    import dataclasses

    from nq_dagster.fusion.predictor import continue_from
    from nq_dagster.ingest import rows_after

    df, before, _, _ = graph
    k = 20
    p = Predictor()
    p.load(before)
    p.advance("m", df["value"].iloc[N0 : N0 + k].to_numpy(), df["timestamp"].iloc[N0 : N0 + k].to_numpy())
    live = p.serving_state("m")
    series = pd.DataFrame({"timestamp": pd.to_datetime(df["timestamp"], utc=True), "value": df["value"]})
    calls = []

    def load():
        calls.append(1)
        return series

    # the same model: the stream goes on with the calibration it recalibrated, and predicts as if never
    # stopped
    assert live.calibration is not None and live.calibration is not before.calibration
    st, how = continue_from(before, live, rows_after(load))
    assert how == "live state" and st.stream is live.stream and st.calibration is live.calibration
    again, cont = Predictor(), Predictor()
    again.load(st)
    cont.load(live)
    v, t = (
        df["value"].iloc[N0 + k : N0 + k + 60].to_numpy(),
        df["timestamp"].iloc[N0 + k : N0 + k + 60].to_numpy(),
    )
    assert [r["confidence"] for r in again.advance("m", v, t)] == [
        r["confidence"] for r in cont.advance("m", v, t)
    ]
    newer = dataclasses.replace(before, model=dataclasses.replace(before.model, model_version="new"))
    st, how = continue_from(newer, live, rows_after(load))
    assert how == "live state, new model" and st.stream is live.stream and st.model.model_version == "new"
    assert st.calibration is None  # the live calibration belonged to the old model
    assert not calls  # nothing replayed
    changed = dataclasses.replace(
        before,
        model=dataclasses.replace(
            before.model, model_version="new", config={**before.model.config, "ridge_alpha": 2.0}
        ),
    )
    st, how = continue_from(changed, live, rows_after(load))
    assert how == f"training state replayed over {k} rows" and calls
    assert st.model.model_version == "new" and st.stream.n_rows == live.stream.n_rows == N0 + k
    assert st.stream.last_ts == live.stream.last_ts
    assert np.allclose(st.stream.frames, live.stream.frames) and np.array_equal(
        st.stream.codes, live.stream.codes
    )
    st, how = continue_from(live, before, rows_after(load))  # the live state is behind training's
    assert how == "training state" and st is live


def test_a_model_of_an_older_design_is_refused_and_retrained(graph, tmp_path):
    """A serving state written by a version with another design matrix (5 lags, no analog block) is never fed
    columns it was not fit on: loading names the source and the fix, and the landing sensor trains it anew."""
    from dataclasses import replace

    from nq_dagster.sensors.landing import has_current_model
    from nq_dagster.store import Warehouse

    _, _, _, after = graph
    old = replace(after, model=replace(after.model, design=1))
    with pytest.raises(ValueError, match=r"m: model version .* older version .*nq run --source m"):
        Predictor().load(old)
    wh = Warehouse(tmp_path / "nq")
    wh.save_artifact("serving_state", "m", old)
    assert not has_current_model(wh, "m")
    wh.save_artifact("serving_state", "m", after)
    assert has_current_model(wh, "m")


def test_threaded_chunks_equal_one_batch(graph):
    """16 sources ticking together step in two chunks on two threads (each chunk its own batched reservoirs);
    every source's records equal those of the same sources stepped as one batch."""
    from dataclasses import replace

    df, before, _, _ = graph
    names = [f"s{i:02d}" for i in range(16)]
    outs = {}
    for threads in ("1", "2"):
        p = Predictor(threads=int(threads))
        for n in names:
            p.load(replace(before, model=replace(before.model, source=n)))
        assert len(p._chunks(before.model.cfg.version, names)) == int(threads)
        outs[threads] = p.advance_many(
            {n: (df["value"].iloc[N0 : N0 + 3], df["timestamp"].iloc[N0 : N0 + 3]) for n in names}
        )
    for n in names:
        for a, b in zip(outs["1"][n], outs["2"][n], strict=True):
            assert a["prediction_id"] == b["prediction_id"] and a["direction"] == b["direction"]
            assert (
                abs(a["predicted_change"] - b["predicted_change"])
                <= 1e-6 * abs(b["predicted_change"]) + 1e-12
            )
    assert (
        len({outs["2"][n][0]["neuromorphic_results"]["reservoir_state"]["norm"] for n in names}) == 16
    )  # its own


def test_spike_step_equals_the_dense_detectors():
    """The streaming path reads a step's spikes from their list; it must equal the batch graph's detectors on
    the dense array, including a source without spikes and one with a single spike."""
    from nq_dagster.neuromorphic.patterns import sparse, spike_step, synchronous, travelling_wave
    from nq_dagster.neuromorphic.stages import reservoir_input, spike_statistics

    rng = np.random.default_rng(3)
    spikes = rng.random((6, 20, 300)) < np.array([0.0, 0.01, 0.05, 0.2, 0.01, 0.03])[:, None, None]
    spikes[0] = False
    spikes[4] = False
    spikes[4, 7, 123] = True
    sp = spike_step(spikes)
    np.testing.assert_allclose(sp.sync, synchronous(spikes), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sp.trav, travelling_wave(spikes), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sp.spars, sparse(spikes), rtol=1e-12, atol=1e-15)
    stats = spike_statistics(spikes)
    np.testing.assert_array_equal(sp.spike_rate, stats["spike_rate"])
    np.testing.assert_array_equal(sp.active_fraction, stats["active_fraction"])
    np.testing.assert_array_equal((sp.counts / 20).astype(np.float32), reservoir_input(spikes))
    assert len(sp.src) == spikes.sum() and np.all(np.diff(sp.src * 300 + sp.neuron) >= 0)


def test_the_folded_linear_form_is_the_model(graph):
    """A tick evaluates each source's model as one linear form per design block (`FusionModel.linear_form`);
    on any design rows it must give what the model's stages give (standardise, multiply, add, stage by
    stage)."""
    _, before, _, _ = graph
    model = before.model.model
    n = max(int(st.columns.max()) + 1 if st.columns is not None else st.stop for st in model.stages)
    X = np.random.default_rng(5).normal(size=(50, n)) * 3 + 1
    w, c = model.linear_form(n)
    want = model.predict_change(X)
    np.testing.assert_allclose(X @ w + c, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    assert len(model.stages) >= 1 and np.count_nonzero(w) > 0


def test_a_state_keeps_the_analog_inputs_not_a_copy_of_the_analog_state(graph):
    """The last row's analog design block is the analog reservoir's state (kept once) plus two inputs; a state
    saved before (the whole block in `last_analog`) predicts the same."""
    _, before, _, _ = graph
    st = before.stream
    assert len(st.last_analog) == 2
    block = st.analog_block()
    np.testing.assert_array_equal(block[:-2], st.analog.x.numpy().astype(float).ravel())
    p, q = Predictor(), Predictor()
    p.load(before)
    q.load(replace(before, stream=replace(st, last_analog=block.copy())))
    a, b = p.latest("m"), q.latest("m")
    assert a["prediction_id"] == b["prediction_id"] and a["predicted_change"] == b["predicted_change"]


def test_sharded_predictor_equals_one_predictor_and_commits_all_or_nothing(graph):
    """Sources shared out between this process and a worker process give the records one `Predictor` gives; a
    call that fails anywhere (bad input for a worker's source, an error in this process's shard) moves no
    source on; a worker that dies is reported by shard, not waited for."""
    from nq_dagster.fusion.shards import ShardedPredictor

    df, before, batch, after = graph
    names = ["m", "m2", "m3", "m4"]
    ref = Predictor()
    with ShardedPredictor(2) as sh:
        for n in names:
            sv = replace(before, model=replace(before.model, source=n))
            ref.load(sv)
            sh.load(sv)
        assert sorted(sh.shard_of(n) for n in names) == [0, 0, 1, 1]
        remote = next(n for n in names if sh.shard_of(n) == 1)
        local = next(n for n in names if sh.shard_of(n) == 0)
        vals = df["value"].to_numpy()
        ts = (
            pd.to_datetime(df["timestamp"], utc=True)
            .dt.tz_localize(None)
            .to_numpy("datetime64[ns]")
            .view(np.int64)
        )

        def same(a, b):
            for s in names:
                for x, y in zip(a[s], b[s], strict=True):
                    assert x["prediction_id"] == y["prediction_id"] and x["direction"] == y["direction"]
                    assert (
                        abs(x["predicted_change"] - y["predicted_change"])
                        <= 1e-6 * abs(y["predicted_change"]) + 1e-12
                    )
                    assert x["processing_time_ms"] > 0

        for a, b in [(N0, N0 + 1), (N0 + 1, N0 + 2), (N0 + 2, N0 + 6)]:  # one tick each, then four per source
            call = {n: (vals[a:b], ts[a:b]) for n in names}
            same(sh.advance_many(call), ref.advance_many(call))
        rows = {n: sh.serving_state(n).stream.n_rows for n in names}
        assert rows == {n: N0 + 6 for n in names} and sh.last_ts(remote) == ts[N0 + 5]

        late = {n: (vals[N0 + 6 : N0 + 7], ts[N0 + 6 : N0 + 7]) for n in names}
        late[remote] = (vals[N0 + 6 : N0 + 7], ts[N0 : N0 + 1])  # a timestamp already seen
        with pytest.raises(ValueError, match="is not after the last one seen"):
            sh.advance_many(late)
        original = sh.local.compute

        def broken(*a, **k):
            raise RuntimeError("this process's shard failed")

        sh.local.compute = broken  # the worker computed its sources; it must drop them
        good = {n: (vals[N0 + 6 : N0 + 7], ts[N0 + 6 : N0 + 7]) for n in names}
        with pytest.raises(RuntimeError, match="shard failed"):
            sh.advance_many(good)
        sh.local.compute = original
        assert {n: sh.serving_state(n).stream.n_rows for n in names} == rows  # nobody moved on
        same(sh.advance_many(good), ref.advance_many(good))
        assert sh.serving_state(remote).stream.n_rows == N0 + 7
        # the other calls reach a worker's source too: latest, warm-up (leaves the state), a new model version
        assert sh.latest(remote)["prediction_id"] == ref.latest(remote)["prediction_id"]
        sh.warm_up(remote)
        assert sh.rows_seen(remote) == sh.serving_state(remote).stream.n_rows == N0 + 7
        newer = replace(
            sh.serving_state(remote), model=replace(before.model, source=remote, model_version="v-next")
        )
        sh.load(newer)
        assert sh.shard_of(remote) == 1 and sh.model(remote).model_version == "v-next"
        nxt = sh.advance(remote, vals[N0 + 7 : N0 + 8], ts[N0 + 7 : N0 + 8])[0]
        assert nxt["model_version"] == "v-next" and sh.rows_seen(remote) == N0 + 8
        assert sh.serving_state(remote).model.model_version == "v-next"

        sh._shards[0].process.kill()
        sh._shards[0].process.join()
        with pytest.raises(RuntimeError, match="prediction shard 1 .* exited"):
            sh.advance_many({remote: (vals[N0 + 8 : N0 + 9], ts[N0 + 8 : N0 + 9])})
        assert (
            len(sh.advance(local, vals[N0 + 7 : N0 + 8], ts[N0 + 7 : N0 + 8])) == 1
        )  # this process's shard goes on
        lost = sh.restart(1)  # a new, empty worker; its sources are for the caller to load again
        assert remote in lost and not set(lost) & set(sh.sources()) and sh._shards[0].process.is_alive()
        for n in lost:
            sh.load(replace(before, model=replace(before.model, source=n)))
        assert {sh.shard_of(n) for n in lost} == {1}
        got = sh.advance(remote, vals[N0 : N0 + 1], ts[N0 : N0 + 1])[0]
        assert (
            got["prediction_id"]
            == _first_record(before, remote, vals[N0 : N0 + 1], ts[N0 : N0 + 1])["prediction_id"]
        )


def _first_record(sv, name, v, t):
    p = Predictor()
    p.load(replace(sv, model=replace(sv.model, source=name)))
    return p.advance(name, v, t)[0]


def test_frame_cache_is_used_only_for_the_state_it_belongs_to(graph):
    """The float64 frame cache a predictor keeps between ticks gives what a cache built from the state gives;
    after a rolled-back tick, or a state loaded again, the cache is rebuilt, not reused for the wrong
    frames."""
    df, before, batch, after = graph
    vals = df["value"].to_numpy()
    ts = (
        pd.to_datetime(df["timestamp"], utc=True)
        .dt.tz_localize(None)
        .to_numpy("datetime64[ns]")
        .view(np.int64)
    )
    p = Predictor()
    p.load(before)
    recs = [
        p.advance("m", vals[i : i + 1], ts[i : i + 1])[0] for i in range(N0, N0 + 5)
    ]  # the cache carried along
    q = Predictor()
    q.load(before)
    q.advance("m", vals[N0 : N0 + 2], ts[N0 : N0 + 2])
    mid = q.serving_state("m")
    r = Predictor()
    r.load(mid)  # a fresh predictor: its cache is built from the state
    again = [r.advance("m", vals[i : i + 1], ts[i : i + 1])[0] for i in range(N0 + 2, N0 + 5)]
    for a, b in zip(recs[2:], again, strict=True):
        assert a["prediction_id"] == b["prediction_id"]
        assert np.allclose(
            list(a["neuromorphic_results"]["patterns"].values()),
            list(b["neuromorphic_results"]["patterns"].values()),
            rtol=1e-12,
            atol=1e-15,
        )
        assert (
            abs(a["predicted_change"] - b["predicted_change"]) <= 1e-12 * abs(b["predicted_change"]) + 1e-15
        )
    # a tick computed and committed, then rolled back: the cache has moved on to the undone state; the same
    # tick again must not read it
    out, pending = p.compute({"m": (vals[N0 + 5 : N0 + 6], ts[N0 + 5 : N0 + 6])}, 0.0)
    p.rollback(p.commit(pending))
    redo = p.advance("m", vals[N0 + 5 : N0 + 6], ts[N0 + 5 : N0 + 6])[0]
    want = r.advance("m", vals[N0 + 5 : N0 + 6], ts[N0 + 5 : N0 + 6])[0]
    assert redo["prediction_id"] == out["m"][0]["prediction_id"] == want["prediction_id"]
    assert np.allclose(
        list(redo["neuromorphic_results"]["patterns"].values()),
        list(want["neuromorphic_results"]["patterns"].values()),
        rtol=1e-12,
        atol=1e-15,
    )
    st, ref = p.serving_state("m").stream, r.serving_state("m").stream
    assert np.array_equal(st.frames, ref.frames) and np.allclose(st.gram, ref.gram, rtol=1e-12, atol=1e-12)
