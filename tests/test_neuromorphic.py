import numpy as np
import pytest
import torch

from nq_dagster.neuromorphic import (
    PATTERN_NAMES,
    Reservoir,
    detect_patterns,
    encode,
    ridge_fit,
    ridge_predict,
)
from nq_dagster.neuromorphic.encoders import phase_of_bins
from nq_dagster.neuromorphic.patterns import (
    emergent,
    permutation_entropy,
    sparse,
    standing_wave,
    synchronous,
    travelling_wave,
)


def test_rate_encoder_matches_requested_rate():
    x = torch.full((1, 400, 1), 0.3)
    s = encode(x, "rate", neuron_count=200, window_bins=25, min_rate_hz=0, max_rate_hz=100)
    n = s.numel()
    p = 0.03
    emp = s.float().mean().item()
    assert abs(emp - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_latency_monotone_and_population_decodes():
    vals = torch.linspace(0.05, 0.95, 10)[None, :, None]
    lat = encode(vals, "temporal", neuron_count=50, window_bins=25)[0]
    first = [int(lat[t].any(dim=1).nonzero()[0]) for t in range(10)]
    assert all(a >= b for a, b in zip(first, first[1:], strict=False)) and first[0] > first[-1]
    pop = encode(vals, "population", neuron_count=200, window_bins=25, seed=1)[0].float().sum(1)
    mu = (torch.arange(200) + 0.5) / 200
    decoded = (pop * mu).sum(1) / pop.sum(1)
    assert torch.allclose(decoded, vals[0, :, 0], atol=0.03)


def test_phase_code_recovers_value():
    vals = np.array([0.1, 0.37, 0.62, 0.88])
    s = encode(torch.tensor(vals)[None, :, None].float(), "phase", neuron_count=20, window_bins=25)[0].numpy()
    ph = phase_of_bins(len(vals), 25)
    for t, v in enumerate(vals):
        bins = np.nonzero(s[t].any(axis=1))[0]
        assert len(bins) == 1
        assert abs(ph[t, bins[0]] / (2 * np.pi) - v) <= 0.5 / 25 + 1e-9


def test_chunked_encoding_equals_whole():
    x = torch.rand((2, 60, 3), generator=torch.Generator().manual_seed(0))
    for m in ("rate", "population", "phase"):
        whole = encode(x, m, neuron_count=60, seed=3)
        parts = torch.cat(
            [
                encode(x[:, :25], m, neuron_count=60, seed=3),
                encode(x[:, 25:], m, neuron_count=60, seed=3, step_offset=25),
            ],
            dim=1,
        )
        assert torch.equal(whole, parts)


def test_spectral_radius_exact_and_echo_state_property():
    r = Reservoir(3, size=200, spectral_radius=0.9, seed=0)
    assert abs(r.actual_spectral_radius() - 0.9) < 1e-6
    u = torch.rand((1, 300, 3), generator=torch.Generator().manual_seed(1))
    a, _ = r.run(u, r.initial_state(1, x0=torch.full((1, 200), 0.9)))
    b, _ = r.run(u, r.initial_state(1, x0=torch.full((1, 200), -0.9)))
    assert (a[0, 0] - b[0, 0]).abs().max() > 0.1
    assert (a[0, -1] - b[0, -1]).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["esn", "lif"])
def test_streaming_equals_one_run_and_no_blowup(mode):
    r = Reservoir(4, size=100, mode=mode, seed=2)
    u = torch.rand((3, 120, 4), generator=torch.Generator().manual_seed(2)) * 5
    whole, _ = r.run(u)
    first, st = r.run(u[:, :70])
    second, _ = r.run(u[:, 70:], st)
    assert torch.allclose(whole, torch.cat([first, second], 1), atol=1e-6)
    extreme, _ = r.run(torch.full((1, 50, 4), 1e6))
    assert torch.isfinite(extreme).all() and extreme.abs().max() <= 1.0 + 1e-6


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="spectral_radius"):
        Reservoir(2, spectral_radius=0)
    with pytest.raises(ValueError, match="rates"):
        encode(torch.rand(1, 5, 1), "rate", min_rate_hz=-1)
    with pytest.raises(ValueError, match="empty"):
        encode(torch.zeros(1, 0, 1), "rate")
    with pytest.raises(ValueError, match="no time steps"):
        Reservoir(2, size=10).run(torch.zeros(1, 0, 2))


def test_ridge_readout_recovers_linear_map():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    w = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    W = ridge_fit(X, X @ w + 0.7, alpha=1e-9)
    assert np.allclose(W[:-1, 0], w, atol=1e-6) and abs(W[-1, 0] - 0.7) < 1e-6
    assert np.allclose(ridge_predict(X, W)[:, 0], X @ w + 0.7, atol=1e-6)


RNG = np.random.default_rng(5)


def poisson(T=40, W=25, N=100, p=0.03):
    return RNG.random((T, W, N)) < p


def test_synchronous_and_travelling_wave():
    sync = np.zeros((10, 25, 100), bool)
    sync[:, 7, :] = True
    assert synchronous(sync).min() > 0.99 and synchronous(poisson()).mean() < 0.4
    wave = np.zeros((10, 25, 100), bool)
    wave[:, np.arange(100) * 25 // 100, np.arange(100)] = True
    assert travelling_wave(wave).min() > 0.95 and travelling_wave(poisson()).mean() < 0.2


def test_standing_and_emergent():
    t = np.arange(100)[:, None]
    profile = np.sin(np.linspace(0, np.pi, 50))[None, :]
    stand = np.sin(2 * np.pi * t / 8) * profile
    noise = RNG.normal(size=(100, 50))
    assert standing_wave(stand)[40:].min() > 0.8 and standing_wave(noise)[40:].mean() < 0.3
    common = RNG.normal(size=(100, 1)) + 0.1 * RNG.normal(size=(100, 50))
    assert emergent(common)[40:].min() > 0.9 and emergent(noise)[40:].mean() < 0.3


def test_rhythmic_burst_sparse_chaotic():
    reg = np.zeros((40, 25, 50), bool)
    reg[:, 3, :] = True  # one spike per neuron every 25 bins
    d = detect_patterns(reg, np.zeros((40, 5)))
    d_p = detect_patterns(poisson(N=50), np.zeros((40, 5)))
    assert d["rhythmic"][10:].min() > 0.95 and d_p["rhythmic"][10:].mean() < 0.3
    bursts = np.zeros((40, 25, 50), bool)
    bursts[:, [2, 3, 4], :] = True
    d_b = detect_patterns(bursts, np.zeros((40, 5)))
    assert d_b["burst"][10:].min() > 0.6 and d["burst"][10:].max() < 0.1
    few = np.zeros((10, 25, 100), bool)
    few[:, :, :2] = True
    assert sparse(few).min() > 0.95 and sparse(np.ones((10, 25, 100), bool)).max() < 0.05
    x = np.empty(300)
    x[0] = 0.3
    for i in range(1, 300):
        x[i] = 4 * x[i - 1] * (1 - x[i - 1])
    assert permutation_entropy(x)[100:].mean() > 0.7
    assert permutation_entropy(np.arange(300.0))[100:].max() < 0.05


def test_tail_strengths_equal_whole_history():
    """The streaming invariant of the detectors: the last k steps computed from a tail (window + k steps and
    each neuron's last spike before it) equal those of the whole history; all strengths lie in [0, 1]."""
    from nq_dagster.neuromorphic.patterns import NO_SPIKE, last_spike_bins

    spikes, act = poisson(), RNG.normal(size=(40, 20))
    d = detect_patterns(spikes, act)
    assert set(d) == set(PATTERN_NAMES)
    k, tail = 5, 32 + 5
    before = last_spike_bins(spikes[:-tail])
    W = spikes.shape[1]
    prior = np.where(before == NO_SPIKE, NO_SPIKE, before - (len(spikes) - tail) * W)
    t = detect_patterns(spikes[-tail:], act[-tail:], prior_last_bin=prior, last=k)
    for name, v in d.items():
        assert v.shape == (40,) and (v >= 0).all() and (v <= 1).all()
        assert np.allclose(t[name], v[-k:], atol=1e-12), name
    assert max(float(np.ptp(v)) for v in d.values()) > 0.1  # not a constant output


def test_esn_sparse_and_dense_paths_equal_the_equation():
    """Batched CPU runs use CSR weights, single small ones dense: both must follow x_t = (1-a) x + a tanh(W_in
    u + W x + b)."""
    r = Reservoir(2, size=120, leak=0.4, seed=5, dtype=torch.float64)
    u = torch.rand((3, 40, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    batched, _ = r.run(u)  # sparse path
    assert r._use_sparse(3) and not r._use_sparse(1)
    single = torch.cat([r.run(u[i : i + 1])[0] for i in range(3)])  # dense path
    W, W_in, b = (t.numpy() for t in (r.W, r.W_in, r.b))
    x = np.zeros((3, 120))
    for t in range(40):
        x = 0.6 * x + 0.4 * np.tanh(u[:, t].numpy() @ W_in + x @ W + b)
        assert np.abs(batched[:, t].numpy() - x).max() < 1e-12
    assert torch.allclose(batched, single, atol=1e-12)


def test_counter_hash_is_the_int64_reference_bit_for_bit():
    from nq_dagster.neuromorphic.encoders import _M31, _mix, counter_bits

    S, T, W, N, seed, off = 2, 5, 4, 9, 11, 1000
    s = torch.arange(S)[:, None, None, None]
    t = torch.arange(off, off + T)[None, :, None, None]
    k = _mix(torch.full((1,), seed) + s * 7919)
    k = _mix((k + t) & _M31)
    k = _mix(
        (k + torch.arange(W)[None, None, :, None] * 65_537 + torch.arange(N)[None, None, None, :]) & _M31
    )
    bits = counter_bits(seed, (S, T, W, N), off, "cpu")
    assert torch.equal(k.to(torch.int32), bits)
    assert 0.45 < float(bits.double().mean()) / 2**31 < 0.55


@pytest.mark.parametrize("method", ["rate", "population"])
def test_fused_cpu_draws_equal_the_counter_bits_bit_for_bit(method):
    """On CPU the Bernoulli draws are hashed and compared block by block in uint32 (`_below_cpu`); they must
    be the draws of `counter_bits` + `_below` (the CUDA path) for one seed, per-source seeds, step offsets
    past 2**32 and shapes that do not fill a block."""
    from nq_dagster.neuromorphic.encoders import _below, _layout, counter_bits, encode

    rng = np.random.default_rng(4)
    for S, T, N, W, seed, off in [
        (3, 7, 120, 20, 5, 0),
        (1, 300, 1000, 20, 2**31 + 17, 12345),
        (2, 5, 37, 3, np.array([1, 2]), np.array([7, 2**33])),
    ]:
        x = torch.as_tensor(rng.random((S, T, 3)), dtype=torch.float32)
        got = encode(x, method, N, W, 1.0, 1.0, 100.0, seed=seed, step_offset=off)
        block, j, per = _layout(3, N, "cpu")
        xn = x[:, :, block]
        p = (
            (1.0 + xn * 99.0) * 1e-3
            if method == "rate"
            else 0.1 * torch.exp(-((xn - (j + 0.5) / per) ** 2) / 0.005)
        )
        want = _below(
            counter_bits(seed, (S, T, W, N), off if np.ndim(off) == 0 else np.asarray(off), "cpu"),
            p[:, :, None, :],
        )
        assert torch.equal(got, want) and int(got.sum()) > 0


def test_batched_reservoirs_step_as_each_reservoir_does():
    """Many reservoirs stepped at once (block-diagonal sparse recurrent weights, one sparse input product)
    equal each reservoir's own step up to float32 rounding, for all of them and for a subset (by position)."""
    import torch

    from nq_dagster.neuromorphic.reservoir import BatchedReservoirs, Reservoir, ReservoirState

    rng = np.random.default_rng(1)
    res = [Reservoir(200, 120, seed=s) for s in range(5)]
    batch = BatchedReservoirs(res)
    u = torch.as_tensor((rng.random((5, 200)) < 0.15) * rng.integers(1, 4, (5, 200)), dtype=torch.float32)
    x = torch.as_tensor(rng.normal(size=(5, 120)) * 0.3, dtype=torch.float32)
    ref = torch.cat([r.step(u[k : k + 1], ReservoirState(x[k : k + 1]))[0] for k, r in enumerate(res)])
    assert torch.allclose(batch.step(np.arange(5), u, x), ref, atol=1e-5)
    pos = np.array([3, 0])
    assert torch.allclose(batch.step(pos, u[pos], x[pos]), ref[pos], atol=1e-5)
    assert not torch.allclose(ref[0], ref[1])  # each has its own weights
    dense = [Reservoir(2, 60, seed=s) for s in range(3)]
    ud = torch.as_tensor(rng.normal(size=(3, 2)), dtype=torch.float32)
    xd = torch.as_tensor(rng.normal(size=(3, 60)) * 0.3, dtype=torch.float32)
    refd = torch.cat([r.step(ud[k : k + 1], ReservoirState(xd[k : k + 1]))[0] for k, r in enumerate(dense)])
    assert torch.allclose(
        BatchedReservoirs(dense).step(np.arange(3), ud, xd, sparse_input=False), refd, atol=1e-6
    )


def test_standing_wave_equals_a_full_eigen_decomposition_per_window():
    """The detector gathers each window's Gram matrix from lagged dot products and takes one eigenpair
    (LAPACK dsyevr); it must equal the definition: centre the window, full eigen-decomposition, top mode's
    share of variance times its sign changes (short windows at the start included)."""
    X = np.tanh(RNG.normal(size=(90, 40)).cumsum(axis=0) * 0.1 + 0.3 * RNG.normal(size=(90, 40)))
    want = np.zeros(len(X))
    for t in range(3, len(X)):
        w = X[max(0, t - 31) : t + 1]
        w = w - w.mean(axis=0)
        vals, vecs = np.linalg.eigh(w @ w.T)
        crossings = np.count_nonzero(np.diff(np.sign(vecs[:, -1])) != 0)
        want[t] = np.clip(vals[-1] / vals.sum() * min(1.0, crossings / max(1.0, len(w) / 4.0)), 0, 1)
    np.testing.assert_allclose(standing_wave(X), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(standing_wave(X, start=50)[50:], want[50:], rtol=1e-9, atol=1e-12)
    assert standing_wave(np.zeros((40, 5))).max() == 0.0  # no variance: no wave, no division by zero


@pytest.mark.parametrize("connectivity", [0.1, 0.5])
def test_numpy_step_of_one_source_equals_the_torch_step(connectivity):
    """`Reservoir.step_numpy` (a lone source's step: the fired inputs' weight rows only, CSR recurrent weights
    when sparse) must equal `Reservoir.step` within float32 rounding, for sparse spike inputs and for dense
    ones."""
    from nq_dagster.neuromorphic.reservoir import Reservoir, ReservoirState

    rng = np.random.default_rng(7)
    r = Reservoir(300, 120, seed=3, connectivity=connectivity)
    x = (rng.normal(size=(1, 120)) * 0.3).astype(np.float32)
    for u in [
        ((rng.random((1, 300)) < 0.1) * rng.integers(1, 4, (1, 300)) / 20).astype(np.float32),
        rng.random((1, 300)).astype(np.float32),
    ]:
        want = r.step(torch.as_tensor(u), ReservoirState(torch.as_tensor(x)))[0].numpy()
        got = r.step_numpy(u, x)
        assert got.shape == (1, 120) and np.abs(got - want).max() < 1e-5
        assert np.abs(got - x).max() > 1e-3  # it moved
