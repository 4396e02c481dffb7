"""Quantum engine benchmarks (issue 4), each against a named peer or an exact answer in the same run.

1. Real-time evolution at n = 10, 12, 14 against QuTiP 5 `sesolve` on the same Hamiltonian (a
   non-integrable transverse- and longitudinal-field Ising chain) and the same random initial state:
   fidelity between the two final states, each one's wall time; at n = 10 both also against dense `expm`.
2. Ground state (Lanczos on the TFIM chain; exact enumeration for diagonal QUBOs) and the full QUBO solve
   (ground state + annealing diagnostics) time against n, up to the state-vector limit.
3. Annealing success probability against evolution_time on seeded random QUBOs (n = 8).
4. The classical simulated-annealing fallback against the exact optimum: optimality gap on seeded instances.
5. The gap-chosen schedule (quantum/schedule.py) on seeded feature-selection QUBOs as the assets build them
   (n = 8, 10): minimum spectral gap, schedule length reached, success probability, wall time.

Run: .venv/bin/python -m bench.quantum_bench [--quick]
"""

import sys
import time

import numpy as np
import scipy.linalg as sla

from nq_dagster.quantum.core import anneal, ground_state, pauli_sum, qubo_hamiltonian, transverse_field
from nq_dagster.quantum.core import evolve as nq_evolve
from nq_dagster.quantum.qubo import simulated_annealing, solve_qubo

QUICK = "--quick" in sys.argv


def ising_chain(n: int, J: float = 1.0, g: float = 1.05, hz: float = 0.5):
    """H = -J sum Z_i Z_i+1 - g sum X_i - hz sum Z_i (open chain): chaotic for these fields."""
    terms = []
    for i in range(n - 1):
        terms.append((-J, "I" * i + "ZZ" + "I" * (n - i - 2)))
    for i in range(n):
        terms.append((-g, "I" * i + "X" + "I" * (n - i - 1)))
        terms.append((-hz, "I" * i + "Z" + "I" * (n - i - 1)))
    return pauli_sum(terms, n)


def random_qubo(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    return (A + A.T) / 2, rng.normal(size=n)


def fidelity(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.vdot(a, b)) ** 2 / (np.vdot(a, a).real * np.vdot(b, b).real))


def evolution(t_final: float = 2.0) -> None:
    import qutip

    print(
        f"## Real-time evolution to t = {t_final}, Ising chain with g = 1.05, hz = 0.5 (open), random "
        "initial state"
    )
    print(
        "| n | dim | ours (expm_multiply) s | QuTiP sesolve s | QuTiP / ours | 1 - fidelity(ours, QuTiP) "
        "| 1 - fidelity(ours, dense expm) | 1 - fidelity(QuTiP, dense expm) | norm drift ours "
        "| QuTiP default tolerances: s, 1 - fidelity(ours, it) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (10, 12) if QUICK else (10, 12, 14):
        H = ising_chain(n)
        rng = np.random.default_rng(n)
        psi0 = rng.normal(size=2**n) + 1j * rng.normal(size=2**n)
        psi0 /= np.linalg.norm(psi0)
        t = time.perf_counter()
        ours = nq_evolve(H, psi0, t_final)[0]
        t_ours = time.perf_counter() - t
        Hq = qutip.Qobj(H, dims=[[2] * n, [2] * n])
        kq = qutip.Qobj(psi0, dims=[[2] * n, [1] * n])
        t = time.perf_counter()
        res = qutip.sesolve(Hq, kq, [0.0, t_final], options={"atol": 1e-12, "rtol": 1e-10, "nsteps": 100_000})
        t_q = time.perf_counter() - t
        theirs = res.states[-1].full().ravel()
        t = time.perf_counter()
        loose = qutip.sesolve(Hq, kq, [0.0, t_final]).states[-1].full().ravel()
        t_loose = time.perf_counter() - t
        exact_ours = exact_q = "-"
        if n <= 12:
            ref = sla.expm(-1j * t_final * H.toarray()) @ psi0
            exact_ours = f"{1 - fidelity(ours, ref):.1e}"
            exact_q = f"{1 - fidelity(theirs, ref):.1e}"
        print(
            f"| {n} | {2**n} | {t_ours:.3f} | {t_q:.3f} | {t_q / t_ours:.1f}x | "
            f"{1 - fidelity(ours, theirs):.1e} "
            f"| {exact_ours} | {exact_q} | {abs(np.linalg.norm(ours) - 1):.1e} "
            f"| {t_loose:.3f}, {1 - fidelity(ours, loose):.1e} |"
        )
    print(
        "QuTiP run twice: with atol 1e-12, rtol 1e-10 (compared above), and with its default tolerances "
        "(last column)."
    )


def ground_and_qubo() -> None:
    print("\n## Ground state and full QUBO solve time against n")
    print(
        "| n | TFIM ground state (eigsh) s | error vs free fermions | QUBO exact optimum (enumeration) s "
        "| full QUBO solve with 50-step annealing s |"
    )
    print("|---|---|---|---|---|")
    from nq_dagster.quantum.core import tfim_chain, tfim_open_chain_exact_energy

    ns = (4, 8, 12, 16) if QUICK else (4, 8, 10, 12, 14, 16, 18, 20)
    for n in ns:
        t = time.perf_counter()
        e, _ = ground_state(tfim_chain(n))
        t_gs = time.perf_counter() - t
        err = abs(e - tfim_open_chain_exact_energy(n))
        Q, h = random_qubo(n, 0)
        t = time.perf_counter()
        ground_state(qubo_hamiltonian(Q, h))
        t_enum = time.perf_counter() - t
        full = "-"
        if n <= 16:
            t = time.perf_counter()
            solve_qubo(Q, h, anneal_steps=50, success_target=None)  # the configured run only (gap_schedule())
            full = f"{time.perf_counter() - t:.3f}"
        print(f"| {n} | {t_gs:.3f} | {err:.1e} | {t_enum:.4f} | {full} |")
    print("The full solve is not run above n = 16: 50 Krylov propagations of a 2^n state dominate it.")


def annealing_success() -> None:
    n, inst = 8, (5 if QUICK else 10)
    print(
        f"\n## Annealing success probability against evolution_time (n = {n}, {inst} seeded random QUBOs, "
        "linear schedule, transverse-field driver, steps = max(50, 10 T))"
    )
    print("| evolution_time | mean success | min | max | mean energy above optimum |")
    print("|---|---|---|---|---|")
    Hd = transverse_field(n)
    problems = []
    for s in range(inst):
        Q, h = random_qubo(n, 100 + s)
        Hp = qubo_hamiltonian(Q, h)
        problems.append((Hp, ground_state(Hp)))
    for T in (0.5, 1, 2, 5, 10, 20, 50):
        succ, gap = [], []
        for Hp, g in problems:
            _, conv = anneal(Hd, Hp, evolution_time=T, steps=max(50, int(10 * T)), ground=g)
            succ.append(conv.fidelity)
            gap.append(conv.energy_error)
        print(f"| {T} | {np.mean(succ):.3f} | {np.min(succ):.3f} | {np.max(succ):.3f} | {np.mean(gap):.3f} |")


def sa_gap() -> None:
    inst = 10 if QUICK else 30
    print(
        f"\n## Simulated-annealing fallback against the exact optimum ({inst} seeded random QUBOs per n; "
        "2000 sweeps x 8 restarts)"
    )
    print(
        "| n | share exactly optimal | mean relative gap | worst relative gap | SA s per instance | "
        "enumeration s |"
    )
    print("|---|---|---|---|---|---|")
    for n in (10, 16, 20):
        hits, gaps, t_sa, t_ex = 0, [], 0.0, 0.0
        for s in range(inst):
            Q, h = random_qubo(n, 1000 + s)
            t = time.perf_counter()
            e_opt, _ = ground_state(qubo_hamiltonian(Q, h))
            t_ex += time.perf_counter() - t
            t = time.perf_counter()
            _, e_sa = simulated_annealing(Q, h, seed=s)
            t_sa += time.perf_counter() - t
            gap = (e_sa - e_opt) / abs(e_opt)
            hits += gap <= 1e-9
            gaps.append(gap)
        print(
            f"| {n} | {hits / inst:.2f} | {np.mean(gaps):.1e} | {np.max(gaps):.1e} | {t_sa / inst:.2f} "
            f"| {t_ex / inst:.3f} |"
        )


def gap_schedule() -> None:
    from nq_dagster.quantum.qubo import selection_qubo

    inst = 3 if QUICK else 6
    print(
        f"\n## Gap-chosen schedule on feature-selection QUBOs ({inst} seeded instances per n; target 0.9, "
        "time bounded by 1000; configured run: time 1, 50 steps, linear)"
    )
    print(
        "| n | seed | min gap | at s | configured success | schedule time | success | reached | "
        "split-operator steps | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (8, 10):
        for seed in range(inst):
            rng = np.random.default_rng(seed)
            rel = rng.uniform(0, 0.3, n)
            red = np.abs(np.corrcoef(rng.normal(size=(n, 60))))
            Q, h = selection_qubo(rel, red, n // 2 - 1)
            t = time.perf_counter()
            r = solve_qubo(Q, h)
            wall = time.perf_counter() - t
            g = r.schedule
            if g is None:
                print(
                    f"| {n} | {seed} | - | - | {r.annealing_success_probability:.3f} | - | - | - | - "
                    f"| {wall:.1f} |"
                )
                continue
            print(
                f"| {n} | {seed} | {g['min_gap']:.4f} | {g['min_gap_at']:.3f} | "
                f"{r.annealing_success_probability:.3f} | {g['evolution_time']:.0f} | "
                f"{g['success_probability']:.3f} | {g['reached']} | {g['steps']} | {wall:.1f} |"
            )


if __name__ == "__main__":
    evolution()
    ground_and_qubo()
    annealing_success()
    sa_gap()
    gap_schedule()
