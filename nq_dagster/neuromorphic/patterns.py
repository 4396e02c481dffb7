"""Eight pattern detectors, each a strength in [0, 1] per time step.

Inputs: `spikes`, a bool array (T, W, N) (step, bin, neuron) of the encoded
input, and `activity`, a float array (T, M) of reservoir features. Detectors
that look back use the last `window` steps only (causal: step t never sees
t + 1). Spike-time statistics are computed on spikes sorted by time per neuron
(inter-spike intervals run across step boundaries).

- synchronous: Kuramoto order parameter |mean exp(i phi)| of the spikes of a
  step, phi = 2 pi bin / W (1 when all spikes share a bin, ~1/sqrt(n) for random).
- travelling_wave: |correlation| between neuron index and spike bin within a step
  (a consistent phase lag across neuron order).
- standing_wave: share of variance in the first spatial mode of the last `window`
  activity frames, times how often that mode's time course changes sign
  (fixed nodes, oscillating antinodes), capped at 1.
- emergent: Golomb's synchrony chi = sqrt(Var_t(mean_i x_i) / mean_i Var_t(x_i)):
  collective variance not explained by independent units (~1/sqrt(M) if independent).
- rhythmic: 1 - CV of inter-spike intervals pooled over the window (0 Poisson, 1 clockwork).
- sparse: Treves-Rolls population sparseness of the step's spike counts.
- burst: share of inter-spike intervals no longer than `burst_isi` bins.
- chaotic: normalised permutation entropy (order 3) of the population mean activity.

Each detector's streaming twin (a stream's new step from what its state keeps: the step's spike list
`spike_step`, the window's Gram matrix `window_strengths`, the ordinal codes `entropy_step`, the per-step
interval aggregates `isi_step`) sits beside it and shares its formulas, so a stream computes the same
strengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PATTERN_NAMES = (
    "synchronous",
    "travelling_wave",
    "standing_wave",
    "emergent",
    "rhythmic",
    "sparse",
    "burst",
    "chaotic",
)
DETECTOR_WINDOW = 32  # steps the look-back detectors read
BURST_ISI = 2  # bins: an inter-spike interval this short is part of a burst
ORDER = 3  # permutation-entropy order
DETECTOR_DTYPE = np.float16  # the detectors read reservoir activity at half precision (3 significant digits)
NO_SPIKE = np.iinfo(np.int64).min  # "this neuron has not fired yet" in a prior-last-spike array


def _rolling_sum(a: np.ndarray, window: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([np.zeros((1, *a.shape[1:])), a], axis=0), axis=0)
    idx = np.arange(1, len(a) + 1)
    return c[idx] - c[np.maximum(idx - window, 0)]


def synchrony_of_bins(per_bin: np.ndarray) -> np.ndarray:
    """The Kuramoto order of a step's spikes from its spike count per bin (T, W)."""
    W = per_bin.shape[1]
    total = per_bin.sum(axis=1)
    r = np.abs(per_bin @ np.exp(2j * np.pi * np.arange(W) / W)) / np.maximum(total, 1)
    return np.where(total >= 2, r, 0.0)


def synchronous(spikes: np.ndarray) -> np.ndarray:
    return synchrony_of_bins(spikes.sum(axis=2).astype(float))


def travelling_from_moments(n, sb, sbb, si, sii, sbi) -> np.ndarray:
    """|corr(bin, neuron index)| from the spikes' count n and the sums of b, b^2, i, i^2 and b i per step."""
    nn = np.maximum(n, 1)
    cov = sbi / nn - sb * si / nn**2
    vb = sbb / nn - (sb / nn) ** 2
    vi = sii / nn - (si / nn) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.abs(cov) / np.sqrt(vb * vi)
    return np.where((n >= 3) & (vb > 1e-12) & (vi > 1e-12), np.clip(r, 0, 1), 0.0)


def travelling_wave(spikes: np.ndarray, chunk: int = 256) -> np.ndarray:
    """|corr(bin, neuron index)| over the step's spikes; the moments come from two matrix-vector products
    per chunk of steps (bins x neurons against the neuron indices), never a float copy of every slot."""
    T, W, N = spikes.shape
    b = np.arange(W, dtype=float)
    i = np.arange(N, dtype=float)
    out = np.zeros(T)
    for c0 in range(0, T, chunk):
        s = spikes[c0 : c0 + chunk].astype(np.float64)  # (t, W, N), a bounded chunk
        per_bin = s.sum(axis=2)  # (t, W)
        si_b = s @ i  # (t, W): sum of neuron indices that fired in each bin
        sii = (s @ (i * i)).sum(axis=1)
        n = per_bin.sum(axis=1)
        out[c0 : c0 + chunk] = travelling_from_moments(
            n, per_bin @ b, per_bin @ (b * b), si_b.sum(axis=1), sii, si_b @ b
        )
    return out


def standing_wave(activity: np.ndarray, window: int = 32, start: int = 0) -> np.ndarray:
    """Strength per step; steps before `start` are left at 0 (a stream computes only its new steps).

    Each step's window Gram matrix is gathered from the frames' lagged dot products (`lag_dots`: one pass of
    `window` products over the history instead of a k x k x M product per step)."""
    A = np.asarray(activity, dtype=float)
    T = len(A)
    out = np.zeros(T)
    first = max(3, start)
    if first >= T:
        return out
    lo = max(0, first - window + 1)
    D = lag_dots(A[lo:], window)
    full = np.arange(max(first, window - 1), T)
    for t in range(first, min(window - 1, T)):  # the first steps' windows are shorter
        out[t] = standing_wave_gram(window_grams(D, np.array([t - lo]), t + 1))[0]
    for c in range(0, len(full), 1024):
        ends = full[c : c + 1024]
        out[ends] = standing_wave_gram(window_grams(D, ends - lo, window))
    return out


def lag_dots(A: np.ndarray, k: int) -> np.ndarray:
    """D[t, l] = A[t] . A[t - l] for lags l < k (0 where t < l): (T, k). The Gram matrix of any k frames in a
    row is made of these (`window_grams`); a stream adds one row of them per tick."""
    T = len(A)
    D = np.zeros((T, k))
    for lag in range(min(k, T)):
        D[lag:, lag] = np.einsum("tm,tm->t", A[lag:], A[: T - lag])
    return D


def window_grams(D: np.ndarray, ends: np.ndarray, k: int) -> np.ndarray:
    """The raw Gram matrices (len(ends), k, k) of the k frames ending at each row of `ends` (`lag_dots` D)."""
    i, j = np.indices((k, k))
    return D[(np.asarray(ends) - k + 1)[:, None, None] + np.maximum(i, j), np.abs(i - j)]


def standing_wave_gram(R: np.ndarray) -> np.ndarray:
    """The standing-wave strength from the raw Gram matrices R (B, k, k) of windows of k frames (R = X X^T):
    the centred Gram H R H (H = I - 11^T / k) has the windows' spatial-mode variances as eigenvalues and their
    time courses as eigenvectors; only the top pair is needed (LAPACK dsyevr for one eigenpair: cheaper than a
    full eigen-decomposition)."""
    from scipy.linalg.lapack import dsyevr

    B, k, _ = R.shape
    G = (
        R - R.mean(axis=2, keepdims=True) - R.mean(axis=1, keepdims=True) + R.mean(axis=(1, 2), keepdims=True)
    )  # short windows: cheap eigen-decompositions
    total = np.trace(G, axis1=1, axis2=2)
    top, crossings = np.zeros(B), np.zeros(B)
    for b in range(B):
        w, z, _, _, info = dsyevr(G[b], compute_v=1, range="I", il=k, iu=k)
        if info != 0:  # LAPACK did not converge: the full decomposition
            vals, vecs = np.linalg.eigh(G[b])
            w, z = vals[-1:], vecs[:, -1:]
        top[b] = w[0]
        crossings[b] = np.count_nonzero(np.diff(np.sign(z[:, 0])) != 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = top / total
    out = share * np.minimum(1.0, crossings / max(1.0, k / 4.0))
    return np.clip(np.where(total > 1e-12, out, 0.0), 0, 1)


def emergent(activity: np.ndarray, window: int = 32) -> np.ndarray:
    X = np.asarray(activity, dtype=float)
    m = X.mean(axis=1)
    n = np.minimum(np.arange(1, len(X) + 1), window).astype(float)
    s1, s2 = _rolling_sum(m, window), _rolling_sum(m**2, window)
    var_pop = s2 / n - (s1 / n) ** 2
    u1, u2 = _rolling_sum(X, window), _rolling_sum(X**2, window)
    var_units = (u2 / n[:, None] - (u1 / n[:, None]) ** 2).mean(axis=1)
    out = golomb_chi(var_pop, var_units)
    out[n < 3] = 0.0
    return out


def golomb_chi(var_pop: np.ndarray, var_units: np.ndarray) -> np.ndarray:
    """Golomb's chi from the population mean's variance and the units' mean variance, in [0, 1]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(var_units > 1e-15, var_pop / var_units, 0.0)
    return np.sqrt(np.clip(chi2, 0, 1))


def window_strengths(
    R: np.ndarray, means: np.ndarray, units: int, steps_seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The streaming twin of `standing_wave` and `emergent` at a stream's new step: (standing wave, emergent)
    (S,) from the raw Gram matrices R (S, k, k) of each source's last k = DETECTOR_WINDOW frames (float64 of
    the detector precision), their population means (S, k), the frames' width `units`, and the rows each
    source has seen with this step (S,)."""
    stand = np.where(steps_seen > 3, standing_wave_gram(R), 0.0)
    k = float(DETECTOR_WINDOW)
    var_pop = (means**2).sum(axis=1) / k - (means.sum(axis=1) / k) ** 2
    # the units' mean variance over the window: (trace R / k - 1'R1 / k^2) / units
    var_units = (np.trace(R, axis1=1, axis2=2) / k - R.sum(axis=(1, 2)) / k**2) / units
    return stand, golomb_chi(var_pop, var_units)


def last_spike_bins(spikes: np.ndarray) -> np.ndarray:
    """Per neuron, the bin index (counted from the start of `spikes`) of its last spike, or NO_SPIKE."""
    T, W, N = spikes.shape
    if T == 0:
        return np.full(N, NO_SPIKE, dtype=np.int64)
    flat = spikes.reshape(T * W, N)
    fired = flat.any(axis=0)
    last = T * W - 1 - np.argmax(flat[::-1], axis=0)
    return np.where(fired, last, NO_SPIKE).astype(np.int64)


def isi_by_step(
    spikes: np.ndarray, prior_last_bin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inter-spike intervals (bins) of time-sorted spikes per neuron, and the step where each interval ends.

    `prior_last_bin` (N,) gives each neuron's last spike before this array (negative bin index, or
    NO_SPIKE), so that a stream's tail yields the intervals that the whole history would."""
    T, W, N = spikes.shape
    flat = spikes.reshape(T * W, N)
    neuron, time = np.nonzero(flat.T)  # sorted by neuron, then by time: time-sorted spikes per neuron
    if prior_last_bin is not None:
        has = prior_last_bin != NO_SPIKE
        neuron = np.concatenate([np.nonzero(has)[0], neuron])
        time = np.concatenate([prior_last_bin[has], time])
        order = np.lexsort((time, neuron))
        neuron, time = neuron[order], time[order]
    same = neuron[1:] == neuron[:-1]
    isi = (time[1:] - time[:-1])[same]
    end_step = time[1:][same] // W
    return isi.astype(float), end_step


def _isi_stats(
    spikes: np.ndarray, window: int, burst_isi: int, prior_last_bin: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    T = spikes.shape[0]
    isi, step = isi_by_step(spikes, prior_last_bin)
    agg = isi_aggregates(isi, step, T, burst_isi)
    return rhythm_and_burst(*(_rolling_sum(agg[:, j], window) for j in range(4)))


def isi_aggregates(isi: np.ndarray, at: np.ndarray, n: int, burst_isi: int = BURST_ISI) -> np.ndarray:
    """Per row 0..n-1 (a step, or a source), the intervals `isi` (bins) ending there (`at`): their count, sum,
    sum of squares and how many are bursts (at most `burst_isi` bins), (n, 4). A window's sums of these give
    `rhythm_and_burst`; a stream keeps them per step of its window."""
    return np.column_stack(
        [
            np.bincount(at, minlength=n),
            np.bincount(at, weights=isi, minlength=n),
            np.bincount(at, weights=isi**2, minlength=n),
            np.bincount(at, weights=(isi <= burst_isi).astype(float), minlength=n),
        ]
    ).astype(float)


def rhythm_and_burst(
    c: np.ndarray, r1: np.ndarray, r2: np.ndarray, rs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rhythmic and burst strengths from a window's interval count c, sum r1, sum of squares r2 and bursts
    rs: 1 - CV of the intervals, and the share of bursts (0 below three intervals)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = r1 / c
        sd = np.sqrt(np.maximum(r2 / c - mean**2, 0))
        rhythm = np.where(c >= 3, np.clip(1 - sd / mean, 0, 1), 0.0)
        burst = np.clip(np.where(c >= 3, rs / c, 0.0), 0, 1)
    return rhythm, burst


def isi_step(
    sp: SpikeStep,
    steps: np.ndarray,
    bins: int,
    last_spike: np.ndarray,
    window: np.ndarray,
    burst_isi: int = BURST_ISI,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The streaming twin of the rhythmic and burst detectors at each source's new step: the intervals of the
    step's spikes (`sp`; `steps` (S,) each source's absolute step, `bins` per step), counted across the step
    boundary from each neuron's last spike (`last_spike` (S, N) absolute bins, or NO_SPIKE), join the
    aggregates of the window's earlier steps (`window` (S, k - 1, 4), `isi_aggregates`). Returns (rhythm,
    burst, the window's aggregates with the new step (S, k, 4), each neuron's last spike after the step)."""
    S, N = last_spike.shape
    src, neuron, b = sp.src, sp.neuron, sp.bin  # sorted by source, neuron, bin
    g = src * N + neuron
    t_abs = steps[src] * bins + b
    last = last_spike.reshape(-1)
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    prev = np.where(first, last[g], np.concatenate([[0], t_abs[:-1]]))
    ok = prev != NO_SPIKE
    isi = (t_abs - prev)[ok].astype(float)
    agg = np.concatenate([window, isi_aggregates(isi, src[ok], S, burst_isi)[:, None]], axis=1)
    rhythm, burst = rhythm_and_burst(*(agg[:, :, j].sum(axis=1) for j in range(4)))
    last_new = last.copy()
    is_last = np.ones(len(g), dtype=bool)
    is_last[:-1] = g[1:] != g[:-1]
    last_new[g[is_last]] = t_abs[is_last]
    return rhythm, burst, agg, last_new.reshape(S, N)


def sparseness_of_counts(counts: np.ndarray) -> np.ndarray:
    """Treves-Rolls population sparseness of each step's spike counts per neuron (T, N)."""
    N = counts.shape[1]
    m1 = counts.mean(axis=1)
    m2 = (counts**2).mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(m2 > 0, m1**2 / m2, 1.0)
    return np.clip((1 - a) / (1 - 1 / N), 0, 1)


def sparse(spikes: np.ndarray) -> np.ndarray:
    return sparseness_of_counts(spikes.sum(axis=1).astype(float))


@dataclass
class SpikeStep:
    """What the detectors read of one step's spikes per source, from its spike list (a few per cent of the
    (bin, neuron) slots fire): one pass to find the spikes, then counts and moments by bincount, instead of a
    pass over every slot per detector. Equal to `synchronous`, `travelling_wave`, `sparse`,
    `stages.spike_statistics` and `stages.reservoir_input` on the dense array (integer sums, the same
    formulas)."""

    src: np.ndarray  # the spikes sorted by (source, neuron, bin)
    neuron: np.ndarray
    bin: np.ndarray
    counts: np.ndarray  # (S, N) spikes per neuron
    sync: np.ndarray
    trav: np.ndarray
    spars: np.ndarray
    spike_rate: np.ndarray
    active_fraction: np.ndarray


def spike_step(spikes: np.ndarray) -> SpikeStep:
    """The streaming twin of the per-step detectors on one step of S sources' spikes (S, W, N) bool."""
    S, W, N = spikes.shape
    flat = np.flatnonzero(np.ascontiguousarray(spikes.transpose(0, 2, 1)))  # sorted by source, neuron, bin
    src, rem = np.divmod(flat, N * W)
    neuron, b = np.divmod(rem, W)
    counts = np.bincount(src * N + neuron, minlength=S * N).reshape(S, N).astype(float)
    per_bin = np.bincount(src * W + b, minlength=S * W).reshape(S, W).astype(float)
    total = per_bin.sum(axis=1)
    bf, i_f = b.astype(float), neuron.astype(float)
    bins = np.arange(W, dtype=float)
    trav = travelling_from_moments(
        total,
        per_bin @ bins,
        per_bin @ (bins**2),
        np.bincount(src, weights=i_f, minlength=S),
        np.bincount(src, weights=i_f * i_f, minlength=S),
        np.bincount(src, weights=bf * i_f, minlength=S),
    )
    sync, spars = synchrony_of_bins(per_bin), sparseness_of_counts(counts)
    return SpikeStep(src, neuron, b, counts, sync, trav, spars, total / (N * W), (counts > 0).mean(axis=1))


def permutation_entropy(x: np.ndarray, window: int = 32, order: int = 3) -> np.ndarray:
    """Rolling normalised permutation entropy (Bandt and Pompe 2002) of a 1-d series; 0 before enough data."""
    x = np.asarray(x, dtype=float)
    T = len(x)
    out = np.zeros(T)
    if T < order:
        return out
    emb = np.lib.stride_tricks.sliding_window_view(x, order)  # (T - order + 1, order)
    code = ordinal_codes(emb, order)
    n_codes = order**order
    onehot = np.zeros((len(code), n_codes))
    onehot[np.arange(len(code)), code] = 1
    counts = _rolling_sum(onehot, window - order + 1)
    out[order - 1 :] = entropy_of_counts(counts, order)
    out[: min(T, window // 2)] = 0.0  # too few patterns for a meaningful entropy
    return out


def ordinal_codes(emb: np.ndarray, order: int = ORDER) -> np.ndarray:
    """Bandt-Pompe code of each row of an embedding (n, order): its rank pattern as one integer."""
    ranks = np.argsort(np.argsort(emb, axis=1, kind="stable"), axis=1)
    return (ranks * (order ** np.arange(order))).sum(axis=1)


def entropy_of_counts(counts: np.ndarray, order: int = ORDER) -> np.ndarray:
    """Normalised Shannon entropy of each row of pattern counts (n, order!)."""
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1) / math.log(math.factorial(order))
    return np.clip(h, 0, 1)


def entropy_step(
    codes: np.ndarray, means: np.ndarray, steps_seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The streaming twin of `permutation_entropy` at a stream's new step: the ordinal code of the newest
    ORDER population means (`means` (S, >= ORDER), chronological) joins the codes of the window's earlier ones
    (`codes` (S, k)); returns (chaotic strength (S,), the codes with the new one (S, k + 1))."""
    S = len(codes)
    codes = np.concatenate([codes.astype(np.int64), ordinal_codes(means[:, -ORDER:])[:, None]], axis=1)
    n_codes = ORDER**ORDER
    counts = np.bincount((np.arange(S)[:, None] * n_codes + codes).ravel(), minlength=S * n_codes)
    counts = counts.reshape(S, n_codes).astype(float)
    return np.where(steps_seen > DETECTOR_WINDOW // 2, entropy_of_counts(counts), 0.0), codes


def as_detector_activity(activity: np.ndarray) -> np.ndarray:
    """Reservoir activity as the detectors read it: rounded to half precision, computed on in float64. The
    streaming state keeps the detectors' 31-frame window at this precision (half the bytes of float32), and
    the batch graph rounds the same way, so both compute the same strengths."""
    return np.asarray(activity, dtype=DETECTOR_DTYPE).astype(float)


def detect_patterns(
    spikes: np.ndarray,
    activity: np.ndarray,
    window: int = DETECTOR_WINDOW,
    burst_isi: int = BURST_ISI,
    prior_last_bin: np.ndarray | None = None,
    last: int | None = None,
) -> dict[str, np.ndarray]:
    """All eight strengths, (T,) each, in [0, 1]. `spikes` (T, W, N) bool, `activity` (T, M) float.

    On the tail of a stream (at least `window` steps before the rows wanted, and `prior_last_bin` from
    `last_spike_bins` of everything before the tail) the strengths equal those of the whole history.
    With `last`, only the final `last` steps are computed and returned."""
    spikes = np.asarray(spikes, dtype=bool)
    activity = as_detector_activity(activity)
    if spikes.ndim != 3 or activity.ndim != 2 or len(spikes) != len(activity):
        raise ValueError(
            f"need spikes (T, W, N) and activity (T, M) with the same T; got {spikes.shape}, {activity.shape}"
        )
    if len(spikes) == 0:
        raise ValueError("no time steps")
    if window < 4:
        raise ValueError("window must be >= 4 steps")
    T = len(spikes)
    k = T if last is None else int(min(max(last, 1), T))
    rhythm, burst = _isi_stats(spikes, window, burst_isi, prior_last_bin)
    tail = spikes[T - k :]
    return {
        "synchronous": synchronous(tail),
        "travelling_wave": travelling_wave(tail),
        "standing_wave": standing_wave(activity, window, start=T - k)[T - k :],
        "emergent": emergent(activity, window)[T - k :],
        "rhythmic": rhythm[T - k :],
        "sparse": sparse(tail),
        "burst": burst[T - k :],
        "chaotic": permutation_entropy(activity.mean(axis=1), window)[T - k :],
    }
