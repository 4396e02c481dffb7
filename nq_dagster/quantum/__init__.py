"""Pure numerics of the quantum stage: n-qubit Hamiltonians, evolution, ground states, QUBO solvers (scipy, no dagster)."""

from nq_dagster.quantum.core import (
    anneal,
    evolve,
    ground_state,
    imaginary_time,
    l1_coherence,
    pauli_sum,
    qubo_hamiltonian,
    tfim_chain,
    tfim_open_chain_exact_energy,
    transverse_field,
)
from nq_dagster.quantum.qubo import QuboResult, simulated_annealing, solve_qubo

__all__ = ["QuboResult", "anneal", "evolve", "ground_state", "imaginary_time", "l1_coherence", "pauli_sum",
           "qubo_hamiltonian", "simulated_annealing", "solve_qubo", "tfim_chain", "tfim_open_chain_exact_energy",
           "transverse_field"]
