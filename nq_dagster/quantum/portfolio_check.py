"""The portfolio's out-of-sample check: the QUBO's choice made with what was known before a split, held with
equal weights over the rows after it, against equal weights on every source (1/N) and against the best
classical solution of the same QUBO (simulated annealing), each by realized mean return and volatility per
step. Returns are simple returns per step, aligned by position (the most recent common steps)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nq_dagster.quantum.qubo import portfolio_qubo, simulated_annealing, solve_qubo


def _realized(returns: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    r = returns @ weights
    return float(r.mean()), float(r.std(ddof=1)) if len(r) > 1 else float("nan")


def out_of_sample(
    returns: np.ndarray, edge_before: np.ndarray, k: int, split: float = 0.7, **solve
) -> pd.DataFrame:
    """returns (T, n): per-step returns of n sources; edge_before (n,): each source's predicted edge from its
    predictions before the split row. The covariance is of the rows before the split; the three portfolios
    are scored on the rows after it."""
    R = np.asarray(returns, dtype=float)
    T, n = R.shape
    cut = int(T * split)
    if cut < 2 or T - cut < 2:
        raise ValueError(f"{T} common return steps: too few to hold out the last {1 - split:.0%}")
    before, after = R[:cut], R[cut:]
    Q, h = portfolio_qubo(np.asarray(edge_before, dtype=float), np.cov(before.T), k)
    quantum = solve_qubo(Q, h, **solve)
    sa_x, _ = simulated_annealing(Q, h, seed=0)
    rows = []
    for name, x in (
        ("QUBO choice (exact optimum)", quantum.x),
        ("classical simulated annealing", sa_x),
        ("equal weights 1/N", np.ones(n)),
    ):
        x = np.asarray(x, dtype=float)
        w = x / x.sum() if x.sum() else np.full(n, 1.0 / n)
        mean, vol = _realized(after, w)
        rows.append(
            {
                "portfolio": name,
                "sources": int(x.sum()),
                "mean_return": mean,
                "volatility": vol,
                "return_per_volatility": mean / vol if vol and np.isfinite(vol) else float("nan"),
                "held_out_steps": len(after),
            }
        )
    return pd.DataFrame(rows)
