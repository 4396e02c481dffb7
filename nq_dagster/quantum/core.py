"""n-qubit Hamiltonians as sparse matrices, and what one does with them.

Conventions: qubit 0 is the most significant bit of the basis index; Z|0> = |0>,
Z|1> = -|1>; a QUBO bit x_i = 1 is the qubit state |1>, so x_i = (1 - Z_i) / 2.
States are complex128 vectors of 2^n amplitudes. Energies are in the units of
the Hamiltonian's coefficients, times in their inverse (hbar = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh, expm_multiply

MAX_STATE_VECTOR_QUBITS = 20  # 2^20 complex amplitudes = 16 MiB per state; configurable per call

_PAULI = {
    "I": sp.identity(2, format="csr", dtype=complex),
    "X": sp.csr_matrix(np.array([[0, 1], [1, 0]], dtype=complex)),
    "Y": sp.csr_matrix(np.array([[0, -1j], [1j, 0]], dtype=complex)),
    "Z": sp.csr_matrix(np.array([[1, 0], [0, -1]], dtype=complex)),
}


def _check_n(n: int, limit: int = MAX_STATE_VECTOR_QUBITS) -> None:
    if n < 1:
        raise ValueError("need at least one qubit")
    if n > limit:
        raise ValueError(
            f"{n} qubits need 2^{n} amplitudes ({16 * 2**n / 2**30:.1f} GiB per state), above "
            f"the state-vector limit of {limit} qubits; use the classical simulated-annealing "
            "solver"
        )


def pauli_string(label: str) -> sp.csr_matrix:
    """Tensor product of single-qubit Paulis, e.g. 'XZI' = X (x) Z (x) I."""
    op = sp.identity(1, format="csr", dtype=complex)
    for ch in label:
        if ch not in _PAULI:
            raise ValueError(f"unknown Pauli {ch!r} in {label!r}; use I, X, Y, Z")
        op = sp.kron(op, _PAULI[ch], format="csr")
    return op


def pauli_sum(terms: list[tuple[complex, str]], n: int | None = None) -> sp.csr_matrix:
    """H = sum_k c_k P_k for Pauli strings P_k of equal length."""
    if not terms:
        raise ValueError("empty Pauli sum")
    n = n or len(terms[0][1])
    _check_n(n)
    H = sp.csr_matrix((2**n, 2**n), dtype=complex)
    for c, label in terms:
        if len(label) != n:
            raise ValueError(f"Pauli string {label!r} has length {len(label)}, expected {n}")
        H = H + c * pauli_string(label)
    return H.tocsr()


def _z_diagonals(n: int) -> np.ndarray:
    """z[i, k] = eigenvalue (+1/-1) of Z_i on basis state k: (n, 2^n)."""
    k = np.arange(2**n)
    bits = (k[None, :] >> (n - 1 - np.arange(n))[:, None]) & 1
    return 1 - 2 * bits


def transverse_field(n: int, g: float = 1.0) -> sp.csr_matrix:
    """Driver H_D = -g sum_i X_i; its ground state is the uniform superposition |+>^n."""
    return pauli_sum([(-g, "I" * i + "X" + "I" * (n - i - 1)) for i in range(n)], n)


def tfim_chain(n: int, J: float = 1.0, g: float = 1.0) -> sp.csr_matrix:
    """Open transverse-field Ising chain H = -J sum_{i<n-1} Z_i Z_{i+1} - g sum_i X_i."""
    _check_n(n)
    z = _z_diagonals(n).astype(float)
    diag = -J * sum(z[i] * z[i + 1] for i in range(n - 1)) if n > 1 else np.zeros(2**n)
    return (sp.diags(diag.astype(complex)) + transverse_field(n, g)).tocsr()


def tfim_open_chain_exact_energy(n: int, J: float = 1.0, g: float = 1.0) -> float:
    """Free-fermion ground energy of the open chain (Lieb, Schultz and Mattis 1961; Pfeuty 1970):
    E0 = -1/2 sum_k Lambda_k, Lambda_k the singular values of the bidiagonal matrix with 2g on the
    diagonal and 2J above it."""
    T = np.diag(np.full(n, 2.0 * g)) + np.diag(np.full(n - 1, 2.0 * J), 1)
    return -0.5 * float(np.sum(np.linalg.svd(T, compute_uv=False)))


def qubo_hamiltonian(
    Q: np.ndarray, h: np.ndarray | None = None, limit: int = MAX_STATE_VECTOR_QUBITS
) -> sp.csr_matrix:
    """Diagonal problem Hamiltonian whose energy on basis state x is x^T Q x + h^T x.

    Built as an Ising operator from Pauli Z's with x_i = (1 - Z_i) / 2:
    sum_ij Q_ij x_i x_j + sum_i h_i x_i = const + sum_i a_i Z_i + sum_{i<j} J_ij Z_i Z_j.
    """
    Q, h = check_qubo(Q, h)
    n = len(Q)
    _check_n(n, limit)
    z = _z_diagonals(n).astype(float)
    Jm = Q + Q.T  # coupling of each unordered pair i<j: (Q_ij + Q_ji) x_i x_j
    const = 0.25 * np.triu(Jm, 1).sum() + 0.5 * np.diag(Q).sum() + 0.5 * h.sum()
    a = -0.25 * (np.triu(Jm, 1).sum(axis=1) + np.triu(Jm, 1).sum(axis=0)) - 0.5 * np.diag(Q) - 0.5 * h
    diag = np.full(2**n, const) + a @ z
    iu, ju = np.triu_indices(n, 1)
    for i, j in zip(iu, ju, strict=True):
        if Jm[i, j] != 0:
            diag += 0.25 * Jm[i, j] * z[i] * z[j]
    return sp.diags(diag.astype(complex)).tocsr()


def check_qubo(Q: np.ndarray, h: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    Q = np.asarray(Q, dtype=float)
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1] or Q.shape[0] == 0:
        raise ValueError(f"Q must be a non-empty square matrix; got shape {Q.shape}")
    if not np.isfinite(Q).all():
        raise ValueError("Q contains NaN or infinite entries")
    if not np.allclose(Q, Q.T, atol=1e-12):
        raise ValueError("Q must be symmetric; use (Q + Q.T) / 2 for the same energies")
    h = np.zeros(len(Q)) if h is None else np.asarray(h, dtype=float)
    if h.shape != (len(Q),) or not np.isfinite(h).all():
        raise ValueError(f"h must be a finite vector of length {len(Q)}")
    return Q, h


def expectation(H: sp.spmatrix, psi: np.ndarray) -> float:
    return float(np.real(np.vdot(psi, H @ psi)))


def l1_coherence(psi: np.ndarray) -> float:
    """Normalised l1-norm of coherence (Baumgratz, Cramer and Plenio 2014) of a pure state:
    C = sum_{i != j} |rho_ij| / (d - 1) = ((sum_i |psi_i|)^2 - 1) / (d - 1): 0 for a basis state, 1 for the
    uniform superposition."""
    psi = np.asarray(psi)
    d = len(psi)
    norm = np.linalg.norm(psi)
    if d < 2 or norm == 0:
        raise ValueError("need a non-zero state of dimension >= 2")
    s = np.sum(np.abs(psi / norm))
    return float(np.clip((s * s - 1.0) / (d - 1), 0.0, 1.0))


def ground_state(H: sp.spmatrix) -> tuple[float, np.ndarray]:
    """Lowest eigenpair by Lanczos (eigsh); for a diagonal H, the exact minimum of the diagonal."""
    if (H - sp.diags(H.diagonal())).nnz == 0:
        d = np.real(H.diagonal())
        k = int(np.argmin(d))
        psi = np.zeros(H.shape[0], dtype=complex)
        psi[k] = 1.0
        return float(d[k]), psi
    if H.shape[0] <= 64:
        vals, vecs = np.linalg.eigh(H.toarray())
        return float(vals[0]), vecs[:, 0]
    vals, vecs = eigsh(H, k=1, which="SA", tol=1e-12)
    return float(vals[0]), vecs[:, 0]


def evolve(H: sp.spmatrix, psi0: np.ndarray, t: float, steps: int = 1) -> list[np.ndarray]:
    """Real-time Schrodinger evolution psi(t) = exp(-i H t) psi0 (scipy expm_multiply), at `steps` equally
    spaced times."""
    psi0 = np.asarray(psi0, dtype=complex)
    if not np.isfinite(psi0).all():
        raise ValueError("initial state contains NaN or infinite amplitudes")
    if steps == 1:
        return [expm_multiply(-1j * t * H, psi0)]
    return list(expm_multiply(-1j * H, psi0, start=t / steps, stop=t, num=steps, endpoint=True))


@dataclass
class Convergence:
    energy: float
    exact_energy: float
    energy_error: float
    converged: bool
    iterations: int
    energy_drift: float  # change of energy over the last iteration
    fidelity: float  # |<ground|psi>|^2
    energies: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("energies")
        return d


def imaginary_time(
    H: sp.spmatrix,
    psi0: np.ndarray,
    dtau: float = 0.5,
    max_iter: int = 2000,
    energy_tolerance: float = 1e-6,
    exact: tuple[float, np.ndarray] | None = None,
) -> tuple[np.ndarray, Convergence]:
    """Normalised imaginary-time evolution psi <- exp(-H dtau) psi / ||.||, until the energy changes by less
    than energy_tolerance / 100 per step; then compared with the exact ground state."""
    psi = np.asarray(psi0, dtype=complex)
    psi = psi / np.linalg.norm(psi)
    energies = [expectation(H, psi)]
    for _ in range(max_iter):
        psi = expm_multiply(-dtau * H, psi)
        psi /= np.linalg.norm(psi)
        energies.append(expectation(H, psi))
        if abs(energies[-1] - energies[-2]) < energy_tolerance / 100:
            break
    e0, g = exact if exact is not None else ground_state(H)
    return psi, Convergence(
        energies[-1],
        e0,
        energies[-1] - e0,
        abs(energies[-1] - e0) <= energy_tolerance,
        len(energies) - 1,
        energies[-1] - energies[-2],
        float(abs(np.vdot(g, psi)) ** 2),
        energies,
    )


def anneal(
    H_driver: sp.spmatrix,
    H_problem: sp.spmatrix,
    evolution_time: float = 1.0,
    steps: int = 100,
    energy_tolerance: float = 1e-6,
    ground: tuple[float, np.ndarray] | None = None,
) -> tuple[np.ndarray, Convergence]:
    """Quantum annealing H(s) = (1 - s) H_driver + s H_problem with the linear schedule
    s = t / evolution_time, integrated as `steps` piecewise-constant slices (midpoint s) from the driver's
    ground state."""
    if evolution_time <= 0 or steps < 1:
        raise ValueError("evolution_time must be > 0 and steps >= 1")
    _, psi = ground_state(H_driver)
    dt = evolution_time / steps
    energies = []
    for k in range(steps):
        s = (k + 0.5) / steps
        psi = expm_multiply(-1j * dt * ((1 - s) * H_driver + s * H_problem), psi)
        energies.append(expectation(H_problem, psi))
    e0, g = ground if ground is not None else ground_state(H_problem)
    diag = np.real(H_problem.diagonal())
    if (H_problem - sp.diags(H_problem.diagonal())).nnz == 0:
        # all degenerate optima count as success
        fid = float(np.sum(np.abs(psi[np.abs(diag - e0) <= 1e-9]) ** 2))
    else:
        fid = float(abs(np.vdot(g, psi)) ** 2)
    drift = energies[-1] - energies[-2] if len(energies) > 1 else 0.0
    return psi, Convergence(
        energies[-1],
        e0,
        energies[-1] - e0,
        abs(energies[-1] - e0) <= energy_tolerance,
        steps,
        drift,
        fid,
        energies,
    )
