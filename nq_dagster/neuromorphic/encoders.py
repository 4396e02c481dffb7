"""Spike encoders: values in [0, 1] into spike trains that keep neuron identity.

Shapes: input `x` is (S, T, F) (sources, time steps, features) with values in
[0, 1]. The `neuron_count` neurons are split into F contiguous blocks, one per
feature. Each time step spans `window_bins` bins of `bin_ms` milliseconds.
Output is a bool tensor (S, T, W, N): spikes[s, t, b, n] is True when neuron n
fired in bin b of step t. All encoders are vectorised over S, T and N, and
deterministic under `seed` (a torch.Generator on the target device).

- rate: Poisson (Bernoulli per bin), rate = min_rate + x (max_rate - min_rate) Hz.
- temporal (latency): neuron j of a block has threshold theta_j = j / n_block and
  fires once, iff x >= theta_j, at bin floor((1 - x) (W - 1)): larger values fire earlier.
- population: Gaussian receptive fields with preferred values tiled over [0, 1]
  (width `sigma`); per-bin spike probability max_rate * bin * exp(-(x - mu)^2 / 2 sigma^2).
- phase: spikes locked to a base oscillation (default 40 Hz): each neuron fires
  (with probability 0.9) in the bin whose oscillation phase is closest to 2 pi x
  (with the default 25 bins of 1 ms a step spans one full 40 Hz cycle).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

ENCODERS = ("rate", "temporal", "population", "phase")


def _blocks(n_features: int, neuron_count: int) -> np.ndarray:
    """Feature index of every neuron: contiguous blocks, the last block takes the remainder."""
    if neuron_count < n_features:
        raise ValueError(
            f"neuron_count={neuron_count} must be at least the number of features ({n_features})"
        )
    per = neuron_count // n_features
    idx = np.minimum(np.arange(neuron_count) // per, n_features - 1)
    return idx


def _check(x: torch.Tensor, window_bins: int, min_rate_hz: float, max_rate_hz: float, bin_ms: float) -> None:
    if x.ndim != 3:
        raise ValueError(f"input must be (sources, time, features); got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError("input is empty: need at least one source, one time step and one feature")
    if not torch.isfinite(x).all():
        raise ValueError("input contains NaN or infinite values; clean the series first")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("input values must lie in [0, 1]; squash them first (see encoder_inputs)")
    if window_bins < 1 or bin_ms <= 0:
        raise ValueError("window_bins must be >= 1 and bin_ms > 0")
    if min_rate_hz < 0 or max_rate_hz < 0 or min_rate_hz > max_rate_hz:
        raise ValueError(
            f"rates must satisfy 0 <= min_rate_hz <= max_rate_hz; got {min_rate_hz}, {max_rate_hz}"
        )
    if max_rate_hz * bin_ms / 1000.0 > 1.0:
        raise ValueError(f"max_rate_hz={max_rate_hz} with bin_ms={bin_ms} exceeds one spike per bin")


_M31 = (1 << 31) - 1


@functools.lru_cache(maxsize=16)
def _layout(F: int, N: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per neuron: its feature block, its index inside the block, and the block's size."""
    block = torch.as_tensor(_blocks(F, N), device=device)
    counts = torch.bincount(block, minlength=F)
    start = torch.cumsum(counts, 0) - counts
    return block, (torch.arange(N, device=device) - start[block]).float(), counts[block].float()


def _mix(k):
    """A 31-bit integer hash (xorshift-multiply) of int64 tensors or arrays; products stay below 2**58, so
    int64 never overflows."""
    k = ((k ^ (k >> 16)) * 0x45D9F3B) & _M31
    k = ((k ^ (k >> 16)) * 0x45D9F3B) & _M31
    return k ^ (k >> 16)


def _mix_(k: torch.Tensor) -> torch.Tensor:
    """`_mix` in place on an int32 tensor of 31-bit keys.

    int32 products wrap modulo 2**32 and `& _M31` keeps their low 31 bits, which
    equal the low 31 bits of the exact product, so this is bit-for-bit `_mix`,
    with half the memory traffic and no temporaries.
    """
    for _ in range(2):
        k.bitwise_xor_(k >> 16).mul_(0x45D9F3B).bitwise_and_(_M31)
    return k.bitwise_xor_(k >> 16)


def counter_bits(seed: int, shape: tuple[int, int, int, int], step_offset: int, device: str) -> torch.Tensor:
    """Uniform 31-bit integers (int32) keyed by (seed, source, absolute step, bin, neuron).

    Counter-based, not sequential: the number for a given spike slot does not
    depend on how the stream was chunked (so encoding T steps at once equals
    encoding T1 then T2 steps) nor on the device (CPU and CUDA give the same bits).

    With per-source `seed` and `step_offset` arrays (length S), source s is keyed by (seed[s], 0, its own
    steps), so a batch of sources equals each source encoded alone: the streaming predictor's batched path.
    """
    S, T, W, N = shape
    dev = torch.device(device)
    k = torch.as_tensor(_step_keys(seed, S, T, step_offset).astype(np.int32), device=dev)[:, :, None, None]
    # 31-bit sums wrap in int32; the mask restores mod 2**31
    full = (k + _slots(W, N, str(dev))).bitwise_and_(_M31)
    return _mix_(full)


def _step_keys(seed, S: int, T: int, step_offset) -> np.ndarray:
    """The (S, T) keys of each source's steps (int64 below 2**31): few, so integer numpy."""
    t = np.arange(T, dtype=np.int64)[None, :]
    if np.ndim(seed) == 0:
        k = _mix((int(seed) & _M31) + np.arange(S, dtype=np.int64)[:, None] * 7919)
    else:
        k = _mix(np.asarray(seed, dtype=np.int64)[:, None] & _M31)
    off = np.asarray(step_offset, dtype=np.int64).reshape(-1, 1)
    return _mix((k + off + t) & _M31)


def _below_cpu(seed, shape: tuple[int, int, int, int], step_offset, p: torch.Tensor) -> torch.Tensor:
    """`_below(counter_bits(seed, shape, step_offset), p)` on CPU, fused: the bits of a few steps at a time (a
    block that stays in the CPU's cache) are hashed in place as uint32 and compared with the integer
    thresholds at once, instead of ten passes over the whole (S, T, W, N) array. Bit for bit the same draws
    (uint32 sums and products keep the same low 31 bits as the int32 ones; tested), in less time."""
    S, T, W, N = shape
    keys = _step_keys(seed, S, T, step_offset).astype(np.uint32).reshape(-1)  # (S T,)
    thr = torch.ceil(p.double() * float(1 << 31)).clamp(0, float(1 << 31)).to(torch.int64).numpy()
    thr = np.broadcast_to(thr.reshape(S, T, N) if thr.size == S * T * N else thr, (S, T, N))
    thr = thr.astype(np.uint32).reshape(S * T, 1, N)  # 0 .. 2**31: uint32 holds it
    slots = _slots(W, N, "cpu").numpy().view(np.uint32)
    out = np.empty((S * T, W, N), dtype=bool)
    rows = max(1, 32_768 // (W * N))  # steps per block: 128 KiB of uint32
    buf, tmp = np.empty((rows, W, N), np.uint32), np.empty((rows, W, N), np.uint32)
    m31, mul = np.uint32(_M31), np.uint32(0x45D9F3B)
    for r0 in range(0, S * T, rows):
        r1 = min(S * T, r0 + rows)
        f, g = buf[: r1 - r0], tmp[: r1 - r0]
        np.add(slots, keys[r0:r1, None, None], out=f)
        f &= m31
        for _ in range(2):
            np.right_shift(f, 16, out=g)
            f ^= g
            f *= mul
            f &= m31
        np.right_shift(f, 16, out=g)
        f ^= g
        np.less(f, thr[r0:r1], out=out[r0:r1])
    return torch.from_numpy(out.reshape(S, T, W, N))


@functools.lru_cache(maxsize=16)
def _slots(W: int, N: int, device: str) -> torch.Tensor:
    """The (bin, neuron) part of every key: (W, N) int32, below 2**31."""
    return (
        torch.arange(W, device=device, dtype=torch.int32)[:, None] * 65_537
        + torch.arange(N, device=device, dtype=torch.int32)[None, :]
    )


def _below(bits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """bits / 2**31 < p, decided exactly in integers: a Bernoulli(p) draw per slot."""
    thr = torch.ceil(p.double() * float(1 << 31)).clamp(0, float(1 << 31)).to(torch.int64)
    return bits < thr


def encode(
    x: torch.Tensor | np.ndarray,
    method: str = "rate",
    neuron_count: int = 1000,
    window_bins: int = 25,
    bin_ms: float = 1.0,
    min_rate_hz: float = 1.0,
    max_rate_hz: float = 100.0,
    sigma: float = 0.05,
    base_hz: float = 40.0,
    seed: int = 0,
    device: str = "cpu",
    step_offset: int = 0,
    chunk_steps: int = 256,
) -> torch.Tensor:
    """Encode (S, T, F) values in [0, 1] into (S, T, W, N) bool spikes. See the module docstring.

    `step_offset` is the index of the first step in the whole stream, so that a
    stream encoded in chunks equals the stream encoded at once (the random
    numbers are keyed by absolute step, and the phase encoder's oscillation
    continues). Work is done `chunk_steps` steps at a time to bound memory. `seed` and `step_offset` may
    also be per-source arrays (see `counter_bits`): a batch of sources then equals each encoded alone.
    """
    if method not in ENCODERS:
        raise ValueError(f"unknown encoder {method!r}; choose one of {ENCODERS}")
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    _check(x, window_bins, min_rate_hz, max_rate_hz, bin_ms)
    if method == "population" and sigma <= 0:
        raise ValueError("sigma must be > 0")
    S, T, F = x.shape
    W, N = window_bins, neuron_count
    if np.ndim(seed) or np.ndim(step_offset):
        seed = np.broadcast_to(np.asarray(seed, dtype=np.int64), (S,)) if np.ndim(seed) else seed
        step_offset = np.broadcast_to(np.asarray(step_offset, dtype=np.int64), (S,))
    block, j, per_block = _layout(F, N, str(torch.device(device)))
    p_bin = bin_ms / 1000.0
    out = torch.empty((S, T, W, N), dtype=torch.bool, device=device)
    for c0 in range(0, T, chunk_steps):
        c1 = min(T, c0 + chunk_steps)
        xn = x[:, c0:c1, block]  # (S, t, N): the value each neuron sees
        shape = (S, c1 - c0, W, N)
        if method in ("rate", "population"):
            if method == "rate":
                p = (min_rate_hz + xn * (max_rate_hz - min_rate_hz)) * p_bin
            else:
                mu = (j + 0.5) / per_block
                p = max_rate_hz * p_bin * torch.exp(-((xn - mu) ** 2) / (2 * sigma**2))
            if x.device.type == "cpu":
                out[:, c0:c1] = _below_cpu(seed, shape, step_offset + c0, p)
            else:
                out[:, c0:c1] = _below(counter_bits(seed, shape, step_offset + c0, device), p[:, :, None, :])
        elif method == "temporal":
            fires = xn >= j / per_block
            latency = torch.floor((1.0 - xn) * (W - 1)).long().clamp(0, W - 1)
            bins = torch.arange(W, device=device)[None, None, :, None]
            out[:, c0:c1] = (bins == latency[:, :, None, :]) & fires[:, :, None, :]
        else:
            # the bin whose oscillation phase is nearest 2 pi x; none when that bin lies outside the window
            period = 1000.0 / (base_hz * bin_ms)
            off = torch.as_tensor(np.asarray(step_offset, dtype=np.float64), device=device).reshape(-1, 1)
            t_abs = off + torch.arange(c0, c1, device=device, dtype=torch.float64)[None, :]  # (S or 1, t)
            theta0 = (2 * math.pi * t_abs * W / period) % (2 * math.pi)  # phase at bin 0 of each step
            ahead = torch.remainder(2 * math.pi * xn.double() - theta0[:, :, None], 2 * math.pi)
            best = torch.round(ahead * period / (2 * math.pi)).long()
            best = torch.where(best >= round(period), best - round(period), best)
            bins = torch.arange(W, device=device)[None, None, :, None]
            locked = bins == best[:, :, None, :]
            fires = counter_bits(seed, shape, step_offset + c0, device) < int(0.9 * (1 << 31))
            out[:, c0:c1] = locked & fires
    return out


def phase_of_bins(
    T: int, window_bins: int, bin_ms: float = 1.0, base_hz: float = 40.0, step_offset: int = 0
) -> np.ndarray:
    """Oscillation phase (radians, [0, 2 pi)) of every bin, (T, W): for decoding the phase code."""
    period_bins = 1000.0 / (base_hz * bin_ms)
    abs_bin = (np.arange(T)[:, None] + step_offset) * window_bins + np.arange(window_bins)[None, :]
    return (2 * np.pi * abs_bin / period_bins) % (2 * np.pi)


def change_windows(values: np.ndarray, window: int):
    """One-step changes (the first is 0), their rolling std over `window` clipped below at the floor, and the
    floor (1e-3 x their std over 10 windows): pandas Series, all causal (no back-fill from later rows). The
    streaming state (fusion/stream.py) starts its windows from these."""
    import pandas as pd

    dx = pd.Series(np.asarray(values, dtype=float)).diff().fillna(0.0)
    floor = (dx.rolling(10 * window, min_periods=2).std().fillna(0.0) * 1e-3).clip(lower=1e-12)
    return dx, dx.rolling(window, min_periods=2).std().fillna(0.0).clip(lower=floor), floor


def encoder_inputs(values: np.ndarray, window: int = 50) -> np.ndarray:
    """Causal input features in [0, 1] for one series, shape (T, 3).

    0: scaled change  sigmoid(dx_t / sd_t), sd_t the std of the past `window` changes
    1: level z-score  sigmoid((x_t - mean_t) / std_t) over the past `window` levels
    2: volatility     sigmoid(log(sd_t / median of sd over the past 10 windows))
    Only values at or before t enter feature t.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) < 3:
        raise ValueError("need a 1-d series of at least 3 values")
    if not np.isfinite(x).all():
        raise ValueError("series contains NaN or infinite values")
    import pandas as pd

    s = pd.Series(x)
    dx, sd, floor = change_windows(x, window)
    mean = s.rolling(window, min_periods=1).mean()
    std = s.rolling(window, min_periods=2).std().fillna(0.0).clip(lower=floor)
    med = sd.rolling(10 * window, min_periods=1).median()
    feats = np.column_stack(
        [
            dx / sd,
            (s - mean) / std,
            np.log(sd / med),
        ]
    )
    return 1.0 / (1.0 + np.exp(-np.clip(feats, -30, 30)))
