"""Deterministic demo sources: the original platform's demo scenarios.

- market: correlated tickers as geometric Brownian motion with Markov regime
  switches (calm, trending, volatile); price and volume; the regime path is kept
  as ground truth.
- IoT sensor: daily seasonality, noise, slow drift, injected anomalies whose
  positions are kept as ground truth.
- Mackey-Glass (tau = 17): dx/dt = 0.2 x(t-tau) / (1 + x(t-tau)^10) - 0.1 x(t),
  integrated with RK4 at dt = 0.1 and sampled every time unit.
- random walk: a Gaussian random walk (no predictable structure) for honesty tests.

All generators are pure functions of (points, seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nq_dagster.store import Warehouse, atomic_write_bytes, atomic_write_parquet

START = pd.Timestamp("2026-01-05T00:00:00Z")
REGIMES = {0: ("calm", 0.0, 0.006), 1: ("trending", 0.0015, 0.008), 2: ("volatile", 0.0, 0.02)}


def market(
    points: int, tickers: int = 3, seed: int = 0, rho: float = 0.5
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Minute bars for `tickers` correlated GBM prices with regime switching."""
    rng = np.random.default_rng(seed)
    trans = np.array([[0.995, 0.003, 0.002], [0.004, 0.993, 0.003], [0.006, 0.004, 0.990]])
    regime = np.zeros(points, dtype=int)
    for t in range(1, points):
        regime[t] = rng.choice(3, p=trans[regime[t - 1]])
    corr = np.full((tickers, tickers), rho) + (1 - rho) * np.eye(tickers)
    chol = np.linalg.cholesky(corr)
    z = rng.standard_normal((points, tickers)) @ chol.T
    drift_sign = np.sign(np.sin(np.cumsum(regime == 1) / 400.0 + rng.uniform(0, 6.28))) + 0.0
    mu = np.array([REGIMES[r][1] for r in regime]) * np.where(drift_sign == 0, 1, drift_sign)
    sigma = np.array([REGIMES[r][2] for r in regime])
    # a little momentum in trending regimes gives the series structure a model can learn
    rets = np.zeros((points, tickers))
    for t in range(points):
        prev = rets[t - 1] if t else 0.0
        phi = 0.15 if regime[t] == 1 else 0.0
        rets[t] = mu[t] - 0.5 * sigma[t] ** 2 + phi * prev + sigma[t] * z[t]
    prices = 100.0 * np.exp(np.cumsum(rets, axis=0))
    ts = START + pd.to_timedelta(np.arange(points), unit="min")
    frames = {}
    for k in range(tickers):
        volume = np.round(rng.lognormal(10, 0.3, points) * (1 + 40 * np.abs(rets[:, k])))
        frames[f"market_{chr(65 + k)}"] = pd.DataFrame(
            {"timestamp": ts, "price": prices[:, k], "volume": volume}
        )
    truth = pd.DataFrame({"timestamp": ts, "regime": [REGIMES[r][0] for r in regime]})
    return frames, truth


def iot_sensor(points: int, seed: int = 0, anomaly_rate: float = 0.005) -> tuple[pd.DataFrame, pd.DataFrame]:
    """5-minute readings: daily cycle + noise + drift, with spikes at recorded positions."""
    rng = np.random.default_rng(seed + 1000)
    t = np.arange(points)
    period = 288
    signal = 20 + 5 * np.sin(2 * np.pi * t / period) + 1.5 * np.sin(2 * np.pi * t / (period / 4))
    drift = 0.002 * t * rng.uniform(0.5, 1.5)
    noise = rng.normal(0, 0.3, points)
    values = signal + drift + noise
    n_anom = max(1, int(points * anomaly_rate))
    pos = np.sort(rng.choice(np.arange(10, points), size=n_anom, replace=False))
    values[pos] += rng.choice([-1, 1], size=n_anom) * rng.uniform(4, 8, size=n_anom)
    ts = START + pd.to_timedelta(5 * t, unit="min")
    frame = pd.DataFrame({"timestamp": ts, "value": values})
    truth = pd.DataFrame({"timestamp": ts, "anomaly": np.isin(t, pos)})
    return frame, truth


def mackey_glass_series(
    points: int,
    tau: float = 17.0,
    seed: int = 0,
    dt: float = 0.1,
    sample_every: float = 1.0,
    washout: int = 1000,
) -> np.ndarray:
    """Mackey-Glass x(t) sampled every `sample_every` time units after a washout."""
    rng = np.random.default_rng(seed + 2000)
    lag = int(round(tau / dt))
    sub = int(round(sample_every / dt))
    n_steps = (points + washout) * sub
    x = np.empty(n_steps + lag + 1)
    x[: lag + 1] = 1.2 + 0.1 * rng.uniform(-1, 1, lag + 1)

    def f(xt: float, xlag: float) -> float:
        return 0.2 * xlag / (1.0 + xlag**10) - 0.1 * xt

    for i in range(lag, lag + n_steps):
        # the delayed term is held at the step's start and midpoint values of the history (linear
        # interpolation)
        xl0, xl1 = x[i - lag], x[i - lag + 1]
        xlm = 0.5 * (xl0 + xl1)
        k1 = f(x[i], xl0)
        k2 = f(x[i] + 0.5 * dt * k1, xlm)
        k3 = f(x[i] + 0.5 * dt * k2, xlm)
        k4 = f(x[i] + dt * k3, xl1)
        x[i + 1] = x[i] + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    sampled = x[lag::sub][washout : washout + points]
    return sampled


def mackey_glass(points: int, seed: int = 0) -> pd.DataFrame:
    values = mackey_glass_series(points, seed=seed)
    ts = START + pd.to_timedelta(np.arange(points), unit="s")
    return pd.DataFrame({"timestamp": ts, "value": values})


def random_walk(points: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 3000)
    ts = START + pd.to_timedelta(np.arange(points), unit="min")
    return pd.DataFrame({"timestamp": ts, "value": 100 + np.cumsum(rng.standard_normal(points))})


def demo_frames(
    sources: int = 5, points: int = 3000, seed: int = 0
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """`sources` demo series: Mackey-Glass, one IoT sensor, and the rest market tickers (at least one)."""
    if sources < 3:
        raise ValueError(
            "--sources must be at least 3 (Mackey-Glass, one IoT sensor, one or more market tickers)"
        )
    if points < 200:
        raise ValueError("--points must be at least 200")
    frames, truth = market(points, tickers=sources - 2, seed=seed)
    truths = {name: truth for name in frames}
    frames["iot_sensor"], truths["iot_sensor"] = iot_sensor(points, seed=seed)
    frames["mackey_glass"] = mackey_glass(points, seed=seed)
    return frames, truths


def write_demo(wh: Warehouse, sources: int = 5, points: int = 3000, seed: int = 0) -> list[Path]:
    """Write the demo sources as CSV files into the landing zone (one sub-directory per source)."""
    wh.ensure()
    frames, truths = demo_frames(sources, points, seed)
    paths = []
    for name, frame in frames.items():
        out = frame.copy()
        out["timestamp"] = out["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        path = wh.landing / name / f"demo_seed{seed}_n{points}.csv"
        atomic_write_bytes(path, out.to_csv(index=False, float_format="%.10g").encode())
        paths.append(path)
    for name, truth in truths.items():
        atomic_write_parquet(wh.home / "ground_truth" / f"{name}.parquet", truth)
    return paths
