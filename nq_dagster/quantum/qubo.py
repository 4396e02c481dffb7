"""QUBO solving: min_x x^T Q x + h^T x over x in {0, 1}^n.

Up to the state-vector limit the problem is a diagonal n-qubit Hamiltonian: its
exact ground state gives the answer, and an annealing run from the transverse
field driver is simulated to report what a quantum annealer would achieve
(success probability, final energy, coherence) at the configured time. Where that
run does not reach SUCCESS_TARGET, a schedule chosen from the path's minimum
spectral gap is annealed until it does, within a bounded time
(quantum/schedule.py), and `note` says in one sentence what the answer is and what
each annealer achieved. Above the limit a classical simulated-annealing solver
takes over, and every output says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nq_dagster.quantum.core import (
    MAX_STATE_VECTOR_QUBITS,
    anneal,
    check_qubo,
    ground_state,
    l1_coherence,
    qubo_hamiltonian,
    transverse_field,
)
from nq_dagster.quantum.schedule import anneal_to_target

SUCCESS_TARGET = 0.9  # the probability of ending in an optimum the gap-chosen schedule anneals until
MAX_ANNEAL_TIME = 1000.0  # its bounded cost: the longest schedule it tries (inverse energy units)


@dataclass
class QuboResult:
    x: np.ndarray  # the chosen bits
    energy: float  # x^T Q x + h^T x
    method: str  # "state-vector (exact ground state)" or "classical simulated annealing"
    exact: bool  # True when the energy is the proven optimum
    annealing_success_probability: float | None = None
    annealed_energy: float | None = None
    annealed_coherence: float | None = None
    converged: bool | None = None
    iterations: int = 0
    evolution_time: float | None = None  # the configured annealing run's time (linear schedule)
    schedule: dict | None = None  # the gap-chosen annealing run (schedule.GapSchedule.as_dict), where run

    @property
    def note(self) -> str:
        """What the answer is and what the annealers achieved, in one sentence (every output shows it)."""
        if not self.exact:
            return f"{self.method}: a heuristic answer, no proven optimum above the state-vector limit."
        out = (
            "The answer is the exact optimum (enumerated from the diagonal problem Hamiltonian); a simulated "
            f"annealer at the configured time {self.evolution_time:g} ({self.iterations} steps, linear "
            f"schedule) ends in it with probability {self.annealing_success_probability:.3f}"
        )
        g = self.schedule
        if g is None:
            return out + "."
        how = "reaches" if g["reached"] else "reaches only"
        return (
            out + f"; the schedule chosen from the minimum spectral gap {g['min_gap']:.3g} (at s = "
            f"{g['min_gap_at']:.2f}) {how} {g['success_probability']:.3f} at time {g['evolution_time']:.4g} "
            f"(target {g['target']:g}, time bounded by {g['max_time']:g})."
        )

    def diagnostics(self) -> dict:
        """What the state-vector solve measured, for asset metadata (the classical fallback measured none)."""
        if not self.exact:
            return {
                "method": self.method,
                "gap_to_exact_optimum": "unknown: no exact optimum above the state-vector limit",
            }
        return {
            "method": self.method,
            # <H_problem> after annealing - optimum
            "annealer_energy_gap": float(self.annealed_energy - self.energy),
            "annealing_success_probability": float(self.annealing_success_probability),
            "annealed_coherence": float(self.annealed_coherence),
            "annealing_converged": bool(self.converged),
            **(
                {
                    "min_spectral_gap": float(self.schedule["min_gap"]),
                    "gap_schedule_time": float(self.schedule["evolution_time"]),
                    "gap_schedule_success_probability": float(self.schedule["success_probability"]),
                    "gap_schedule_reached_target": bool(self.schedule["reached"]),
                }
                if self.schedule
                else {}
            ),
            "answer": self.note,
        }

    def as_dict(self) -> dict:
        return {
            "x": self.x.astype(int).tolist(),
            "energy": self.energy,
            "method": self.method,
            "exact": self.exact,
            "annealing_success_probability": self.annealing_success_probability,
            "annealed_energy": self.annealed_energy,
            "annealed_coherence": self.annealed_coherence,
            "converged": self.converged,
            "iterations": self.iterations,
            "evolution_time": self.evolution_time,
            "schedule": self.schedule,
            "note": self.note,
        }


def qubo_energy(Q: np.ndarray, h: np.ndarray, x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    return float(x @ Q @ x + h @ x)


def bits_of(index: int, n: int) -> np.ndarray:
    return np.array([(index >> (n - 1 - i)) & 1 for i in range(n)], dtype=int)


def solve_qubo(
    Q: np.ndarray,
    h: np.ndarray | None = None,
    evolution_time: float = 1.0,
    anneal_steps: int = 50,
    state_vector_limit: int = MAX_STATE_VECTOR_QUBITS,
    energy_tolerance: float = 1e-6,
    seed: int = 0,
    success_target: float | None = SUCCESS_TARGET,
    max_anneal_time: float = MAX_ANNEAL_TIME,
) -> QuboResult:
    """The exact optimum (up to the state-vector limit) and what annealing achieves: the configured run
    (`evolution_time`, `anneal_steps`, linear schedule), then, when it ends in an optimum with probability
    below `success_target`, the gap-chosen schedule (`schedule.anneal_to_target`, time bounded by
    `max_anneal_time`); None: no gap-chosen run."""
    Q, h = check_qubo(Q, h)
    n = len(Q)
    if n > state_vector_limit:
        x, e = simulated_annealing(Q, h, seed=seed)
        return QuboResult(x, e, "classical simulated annealing (above the state-vector limit)", exact=False)
    Hp = qubo_hamiltonian(Q, h, limit=state_vector_limit)
    e0, g = ground_state(Hp)
    x = bits_of(int(np.argmax(np.abs(g))), n)
    psi, conv = anneal(
        transverse_field(n), Hp, evolution_time, anneal_steps, energy_tolerance, ground=(e0, g)
    )
    schedule = None
    if success_target is not None and conv.fidelity < success_target and n > 1:
        diag = np.real(Hp.diagonal())
        schedule = anneal_to_target(diag, success_target, max_anneal_time, evolution_time).as_dict()
    return QuboResult(
        x,
        qubo_energy(Q, h, x),
        "state-vector (exact ground state)",
        exact=True,
        annealing_success_probability=conv.fidelity,
        annealed_energy=conv.energy,
        annealed_coherence=l1_coherence(psi),
        converged=conv.converged,
        iterations=conv.iterations,
        evolution_time=float(evolution_time),
        schedule=schedule,
    )


def simulated_annealing(
    Q: np.ndarray,
    h: np.ndarray,
    sweeps: int = 2000,
    restarts: int = 8,
    t_start: float | None = None,
    t_end: float = 1e-3,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Classical single-bit-flip simulated annealing (geometric temperature schedule), best of `restarts`."""
    Q, h = check_qubo(Q, h)
    n = len(Q)
    rng = np.random.default_rng(seed)
    scale = float(np.abs(Q).sum(axis=1).max() + np.abs(h).max()) or 1.0
    t0 = t_start or scale
    temps = t0 * (t_end / t0) ** (np.arange(sweeps) / max(1, sweeps - 1))
    X = rng.integers(0, 2, size=(restarts, n)).astype(float)
    field = X @ (Q + Q.T) + h  # d energy / d x_i (for x_i from 0 to 1, excluding the diagonal self-term)
    for T in temps:
        for i in rng.permutation(n):
            # energy change of flipping bit i: (1 - 2 x_i) (field_i - Q_ii x_i*2 + Q_ii)
            xi = X[:, i]
            delta = (1 - 2 * xi) * (field[:, i] - 2 * Q[i, i] * xi + Q[i, i])
            accept = (delta <= 0) | (rng.random(restarts) < np.exp(-np.maximum(delta, 0) / T))
            if accept.any():
                step = np.where(accept, 1 - 2 * xi, 0.0)
                X[:, i] += step
                field += step[:, None] * (Q[i] + Q[:, i])[None, :]
    energies = np.einsum("ri,ij,rj->r", X, Q, X) + X @ h
    best = int(np.argmin(energies))
    return X[best].astype(int), float(energies[best])


def selection_qubo(
    relevance: np.ndarray, redundancy: np.ndarray, k: int, lam: float = 0.5, penalty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Feature selection: min -sum r_i x_i + lam sum_{i<j} R_ij x_i x_j + P (sum x_i - k)^2, as (Q, h) without
    the constant."""
    n = len(relevance)
    R = redundancy.copy()
    np.fill_diagonal(R, 0.0)
    Q = penalty * np.ones((n, n)) + 0.5 * lam * R
    h = -relevance - 2 * penalty * k
    return Q, h


def portfolio_qubo(
    edge: np.ndarray, cov: np.ndarray, k: int, risk_aversion: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Portfolio choice: min risk_aversion x^T C x - edge^T x + P (sum x_i - k)^2 on a common scale, with the
    cardinality penalty P large enough to dominate any gain from breaking it. Returns (Q, h)."""
    edge, cov = np.asarray(edge, dtype=float), np.asarray(cov, dtype=float)
    scale = max(np.abs(edge).max(), np.abs(cov).max(), 1e-12)
    Q = risk_aversion * cov / scale
    pen = 2.0 * np.abs(Q).max() + np.abs(edge / scale).max()
    return Q + pen * np.ones_like(Q), -edge / scale - 2 * pen * k
