"""Pure numerics of the quantum stage: n-qubit Hamiltonians, evolution, ground states, QUBO solvers (scipy).

Names are imported on first use (PEP 562): importing the package loads no scipy."""

import importlib

_CORE = (
    "anneal",
    "evolve",
    "ground_state",
    "imaginary_time",
    "l1_coherence",
    "pauli_sum",
    "qubo_hamiltonian",
    "tfim_chain",
    "tfim_open_chain_exact_energy",
    "transverse_field",
)
_WHERE = {
    **{n: "core" for n in _CORE},
    "QuboResult": "qubo",
    "simulated_annealing": "qubo",
    "solve_qubo": "qubo",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
