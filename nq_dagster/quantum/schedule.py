"""An annealing schedule chosen from the problem's spectral gap, run until it reaches a stated success
probability within a bounded cost.

The path is H(s) = (1 - s) H_D + s H_P, s in [0, 1], H_D = -sum_i X_i (the transverse-field driver) and H_P
a diagonal QUBO Hamiltonian. `gap_profile` computes the gap between the lowest `d` levels (d = the degeneracy
of H_P's ground energy, so that every optimum counts) and the next one on a grid of s, refined around its
minimum. The local adiabatic schedule (Roland and Cerf 2002, "Quantum search by local adiabatic evolution")
spends time where the gap is small: ds/dt proportional to gap(s)^2, so the total time T is spread over s as
dt/ds = T gap(s)^-2 / int gap^-2 ds. `anneal_to_target` doubles T from the gap's own time scale 1 / gap_min
until the probability of ending in an optimum reaches `target`, or the next T would pass `max_time` (the
bounded cost), and says which. Evolution: second-order split-operator (Strang) steps, exact for each factor:
the driver's exponential is a product of single-qubit rotations, the problem's a phase per basis state
(checked against scipy's expm_multiply in tests/test_quantum.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from nq_dagster.quantum.core import transverse_field

GAP_GRID = 17  # coarse grid of s; refined by REFINE points between the neighbours of its minimum
REFINE = 8
# split-operator steps per unit of T x the largest energy difference of basis states one bit flip apart (what
# the driver couples, the scale of the splitting's commutator): dt x that difference <= 2
STEPS_PER_UNIT = 0.5


@dataclass
class GapSchedule:
    min_gap: float  # the smallest gap along the path, in the Hamiltonian's energy units
    min_gap_at: float  # the s where it occurs
    degeneracy: int  # optimal basis states of the problem
    evolution_time: float  # T of the last run (the schedule's length), in inverse energy units
    success_probability: float  # probability of ending in an optimum after that run
    target: float
    reached: bool  # success_probability >= target within max_time
    max_time: float
    attempts: list[tuple[float, float]]  # (T, success probability) of each run, in order
    steps: int  # split-operator steps of all runs together (the cost)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["attempts"] = [[float(t), float(p)] for t, p in self.attempts]
        return d


def _lowest(H: sp.spmatrix, k: int, v0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if H.shape[0] <= 128:
        vals, vecs = np.linalg.eigh(H.toarray())
        return vals[: k + 1], vecs[:, 0]
    vals, vecs = eigsh(H, k=k + 1, which="SA", tol=1e-8, v0=v0, ncv=max(20, 2 * k + 4))
    order = np.argsort(vals)
    return vals[order], vecs[:, order[0]]


def gap_profile(diag: np.ndarray, degeneracy: int) -> tuple[np.ndarray, np.ndarray]:
    """(s, gap(s)) along the path, sorted by s: the coarse grid plus a refinement around its minimum."""
    n = int(np.log2(len(diag)))
    Hd = transverse_field(n).real.tocsr()
    Hp = sp.diags(np.asarray(diag, dtype=float)).tocsr()
    k = min(degeneracy, len(diag) - 1)
    v0 = None

    def gap(s: float) -> float:
        nonlocal v0
        vals, v0 = _lowest(((1 - s) * Hd + s * Hp).tocsr(), k, v0)
        return float(vals[k] - vals[0])

    s = list(np.linspace(0.0, 1.0, GAP_GRID))
    g = [gap(x) for x in s]
    i = int(np.argmin(g))
    lo, hi = s[max(i - 1, 0)], s[min(i + 1, len(s) - 1)]
    for x in np.linspace(lo, hi, REFINE + 2)[1:-1]:
        s.append(float(x))
        g.append(gap(float(x)))
    order = np.argsort(s)
    return np.asarray(s)[order], np.asarray(g)[order]


def split_operator_anneal(diag: np.ndarray, s_mid: np.ndarray, dts: np.ndarray) -> np.ndarray:
    """The state after slices of H(s) = (1 - s)(-sum X_i) + s diag(diag), slice j at s_mid[j] for dts[j], from
    the driver's ground state |+>^n; each slice one Strang step exp(-iA/2) exp(-iB) exp(-iA/2)."""
    diag = np.asarray(diag, dtype=float)
    n = int(np.log2(len(diag)))
    psi = np.full(len(diag), 2.0 ** (-n / 2), dtype=complex)
    for s, dt in zip(np.asarray(s_mid).tolist(), np.asarray(dts).tolist(), strict=True):
        psi = _driver(psi, (1 - s) * dt / 2, n)
        psi *= np.exp(-1j * s * dt * diag)
        psi = _driver(psi, (1 - s) * dt / 2, n)
    return psi


def _driver(psi: np.ndarray, a: float, n: int) -> np.ndarray:
    """exp(-i a (-sum X_i)) psi = prod_i (cos a + i sin a X_i) psi."""
    c, si = np.cos(a), 1j * np.sin(a)
    t = psi.reshape((2,) * n)
    for ax in range(n):
        t = c * t + si * np.flip(t, axis=ax)
    return t.reshape(-1)


def anneal_to_target(
    diag: np.ndarray, target: float = 0.9, max_time: float = 1000.0, start_time: float | None = None
) -> GapSchedule:
    """The gap-chosen schedule, T doubled until P(optimum) >= target or T would pass max_time."""
    diag = np.asarray(diag, dtype=float)
    e0 = diag.min()
    optimal = np.abs(diag - e0) <= 1e-9 * max(1.0, abs(e0))
    deg = int(optimal.sum())
    s, g = gap_profile(diag, deg)
    gmin = max(float(g.min()), 1e-12)
    # slices uniform in s (fine enough to follow the gap profile); time per slice proportional to gap^-2
    edges = np.linspace(0.0, 1.0, 401)
    mid = (edges[:-1] + edges[1:]) / 2
    w = np.interp(mid, s, g) ** -2.0
    w /= w.sum()
    n, idx = len(diag).bit_length() - 1, np.arange(len(diag))
    spread = max(float(np.abs(diag - diag[idx ^ (1 << b)]).max()) for b in range(n)) + 2.0
    T = max(start_time or 0.0, 1.0 / gmin)
    attempts, steps, p = [], 0, 0.0
    while True:
        # each slice split into sub-steps so that dt x spread stays bounded (the splitting error)
        sub = np.maximum(1, np.ceil(T * w * spread * STEPS_PER_UNIT)).astype(int)
        psi = split_operator_anneal(diag, np.repeat(mid, sub), np.repeat(T * w / sub, sub))
        p = float(np.sum(np.abs(psi[optimal]) ** 2))
        attempts.append((T, p))
        steps += int(sub.sum())
        if p >= target or 2 * T > max_time:
            break
        T *= 2
    return GapSchedule(
        gmin, float(s[int(np.argmin(g))]), deg, T, p, target, p >= target, max_time, attempts, steps
    )
